"""Delivery kinds: what each kind of email needs from its domain, behind one small interface.

The sender knows emails only through this interface. Each domain registers its kinds in
`app/kinds.py` (the confirmation email from subscriptions; digest copies and test copies from
digests): a kind says who may receive a message and composes it, what a hard bounce does to its
reader, and, for kinds that belong to a send (a digest), how that send is paused, whether it is
halted, and when it is finished. Adding a kind of email touches its own domain and the list in
`app/kinds.py`, never the sender.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Protocol

import sqlalchemy as sa
from sqlmodel import col
from sqlmodel.ext.asyncio.session import AsyncSession

from app.models import Delivery
from app.outbox.queue import Claimed

log = logging.getLogger("app.worker")


@dataclass(slots=True)
class Outgoing:
    """A composed message, ready for the wire."""

    delivery: Claimed
    recipient: str  # the envelope recipient (RCPT TO)
    message: bytes
    message_id: str
    wire_ready: bool = False  # CRLF only, no line opening with "." (see mail.message)
    sender: str = ""  # the envelope sender (MAIL FROM), set by the sender (VERP)


@dataclass(slots=True)
class Composition:
    """What a kind made of its share of a claimed batch."""

    outgoing: list[Outgoing] = field(default_factory=list)
    # Not to be sent (the reader left, the send was cancelled): (delivery id, why).
    skipped: list[tuple[int, str]] = field(default_factory=list)
    # Could not be composed (a bug, missing data): retried with backoff, then failed.
    broken: list[tuple[Claimed, str]] = field(default_factory=list)

    def extend(self, other: Composition) -> None:
        self.outgoing += other.outgoing
        self.skipped += other.skipped
        self.broken += other.broken

    @contextmanager
    def composing(self, delivery: Claimed) -> Iterator[None]:
        """Compose one delivery inside: an error is logged and the delivery is `broken`, never
        the batch's (what follows it in the block is skipped)."""
        try:
            yield
        except Exception as exc:
            log.exception("delivery %s could not be composed", delivery.id)
            self.broken.append((delivery, f"compose: {exc.__class__.__name__}: {exc}"))


class Kind(Protocol):
    name: str
    # Whether rows of this kind stop when their send (`delivery.digest_id`) is paused/cancelled.
    stops_with_send: bool

    def claim_filter(self) -> sa.ColumnElement[bool] | None:
        """A condition on `delivery` rows of this kind that may go out now, or None (all)."""
        ...

    async def compose(self, session: AsyncSession, deliveries: Sequence[Claimed]) -> Composition:
        """The messages for these claimed rows of this kind; who may receive is decided here."""
        ...

    async def bounced(self, session: AsyncSession, *, delivery: Claimed, reply: str) -> None:
        """The relay refused the recipient for good (5xx at RCPT): a hard bounce."""
        ...

    async def soft_bounced(self, session: AsyncSession, *, delivery: Claimed, reply: str) -> None:
        """The relay refused the recipient for a while (4xx) until the last attempt."""
        ...

    async def pause_send(self, session: AsyncSession, *, send_id: int, reason: str) -> bool:
        """Pause the send `send_id` (a digest) because the sending setup is broken; False when
        the kind has no sends or that send was not running."""
        ...

    async def halted_sends(self, session: AsyncSession, *, send_ids: Iterable[int]) -> set[int]:
        """Of these sends, those that must not go on (paused, cancelled)."""
        ...

    async def released(self, session: AsyncSession, *, ids: Sequence[int]) -> None:
        """Rows a worker gave back unsent: the kind settles those that will never go out."""
        ...

    async def finish_sends(self, session: AsyncSession, *, send_ids: Iterable[int]) -> None:
        """After a batch: mark finished the sends with nothing left to send."""
        ...


class BaseKind:
    """Defaults for a kind that belongs to no send (a confirmation email): every hook but
    `compose` does nothing."""

    name = ""
    stops_with_send = False

    def claim_filter(self) -> sa.ColumnElement[bool] | None:
        return None

    async def compose(self, session: AsyncSession, deliveries: Sequence[Claimed]) -> Composition:
        raise NotImplementedError

    async def bounced(self, session: AsyncSession, *, delivery: Claimed, reply: str) -> None:
        return None

    async def soft_bounced(self, session: AsyncSession, *, delivery: Claimed, reply: str) -> None:
        return None

    async def pause_send(self, session: AsyncSession, *, send_id: int, reason: str) -> bool:
        return False

    async def halted_sends(self, session: AsyncSession, *, send_ids: Iterable[int]) -> set[int]:
        return set()

    async def released(self, session: AsyncSession, *, ids: Sequence[int]) -> None:
        return None

    async def finish_sends(self, session: AsyncSession, *, send_ids: Iterable[int]) -> None:
        return None


class Kinds:
    """The registered kinds, by name (the `delivery.kind` column)."""

    def __init__(self, kinds: Iterable[Kind]) -> None:
        self._by_name: dict[str, Kind] = {}
        for kind in kinds:
            if kind.name in self._by_name:
                raise ValueError(f"delivery kind {kind.name!r} registered twice")
            self._by_name[kind.name] = kind

    def all(self) -> list[Kind]:
        return list(self._by_name.values())

    def get(self, name: str) -> Kind | None:
        return self._by_name.get(name)

    @property
    def names(self) -> list[str]:
        return list(self._by_name)

    @property
    def halting(self) -> list[str]:
        """Kinds whose rows stop with their send."""
        return [k.name for k in self._by_name.values() if k.stops_with_send]

    def claim_filter(self) -> sa.ColumnElement[bool]:
        """Rows of a registered kind that may go out now (each kind's own condition)."""
        clauses = []
        for kind in self._by_name.values():
            condition = kind.claim_filter()
            clause = col(Delivery.kind) == kind.name
            clauses.append(clause if condition is None else sa.and_(clause, condition))
        return sa.or_(*clauses)
