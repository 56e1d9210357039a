"""Click links: where a link leads (the digest's frozen copy), and the counts written in batches.

What each TRACK_CLICKS mode keeps is decided here, in `record_clicks`:
- `aggregate`: counters per digest and per article (`click_count`) and, to count a reader once,
  a keyed one-way tag per (copy, link) (`click_seen`). No subscriber id, time, IP or user agent.
- `per_reader`: the same, plus a `clicked` event in the reader's history (GDPR access report).
"""

from __future__ import annotations

import csv
import io
from collections import Counter, OrderedDict, defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy.dialects import postgresql, sqlite
from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession

from app.config import ClickTracking
from app.models import (
    ClickCount,
    ClickSeen,
    Delivery,
    DigestArticle,
    SubscriberEvent,
    SubscriberEventType,
    as_utc,
)
from app.security import OPEN_POSITION, Tokens
from app.spreadsheet import spreadsheet_safe

WHOLE_DIGEST = -1  # the click_count row of the digest as a whole (unique readers)
# OPEN_POSITION (-2, app.security): the row of its opens, when TRACK_OPENS is on.


class LinkCache:
    """The article URLs of each digest, from its frozen copy, kept in memory: a digest's links
    never change once it is sent, and the redirect must not wait on the database twice."""

    def __init__(self, max_digests: int = 1024) -> None:
        self._urls: OrderedDict[int, dict[int, str]] = OrderedDict()
        self._max = max_digests

    def known(self, digest_id: int) -> dict[int, str] | None:
        urls = self._urls.get(digest_id)
        if urls is not None:
            self._urls.move_to_end(digest_id)
        return urls

    async def load(self, session: AsyncSession, digest_id: int) -> dict[int, str]:
        rows = await session.exec(
            select(DigestArticle.position, DigestArticle.url).where(
                DigestArticle.digest_id == digest_id
            )
        )
        urls = dict(rows.all())
        self._urls[digest_id] = urls
        while len(self._urls) > self._max:
            self._urls.popitem(last=False)
        return urls


@dataclass(frozen=True, slots=True)
class Click:
    """One followed link, as the redirect saw it."""

    delivery_id: int
    digest_id: int
    position: int
    at: datetime
    machine: str | None  # the reason it is a machine's, when already known (HEAD, agent)


@dataclass
class _Tally:
    clicks: Counter[tuple[int, int]] = field(default_factory=Counter)
    machine: Counter[tuple[int, int]] = field(default_factory=Counter)
    unique: Counter[tuple[int, int]] = field(default_factory=Counter)


def _insert(session: AsyncSession, table: Any) -> Any:
    """INSERT with ON CONFLICT, in the session's dialect (both spell it the same way)."""
    if session.get_bind().dialect.name == "postgresql":
        return postgresql.insert(table)
    return sqlite.insert(table)


async def _new_tags(session: AsyncSession, tags: Sequence[tuple[int, str]]) -> set[tuple[int, str]]:
    """Insert the (digest, tag) pairs; those that were not there yet. One statement, executed
    for many rows (compiled once and cached: a flush must not hold the event loop)."""
    if not tags:
        return set()
    statement = (
        _insert(session, ClickSeen.__table__)  # type: ignore[attr-defined]  # Core: no ORM bulk path
        .on_conflict_do_nothing()
        .returning(col(ClickSeen.digest_id), col(ClickSeen.tag))
    )
    rows = [{"digest_id": d, "tag": t} for d, t in tags]
    return {(d, t) for d, t in (await session.execute(statement, rows)).all()}


async def delivery_facts(
    session: AsyncSession, *, ids: Iterable[int]
) -> dict[int, tuple[int | None, datetime | None]]:
    """(subscriber id, sent at) of each copy."""
    wanted = list(set(ids))
    if not wanted:
        return {}
    rows = await session.exec(
        select(Delivery.id, Delivery.subscriber_id, Delivery.sent_at).where(
            col(Delivery.id).in_(wanted)
        )
    )
    return {i: (s, as_utc(at) if at else None) for i, s, at in rows.all() if i is not None}


async def record_clicks(
    session: AsyncSession,
    *,
    tokens: Tokens,
    mode: ClickTracking,
    readers: Sequence[Click],
    machines: Sequence[Click],
    urls: dict[int, dict[int, str]],
    subscribers: dict[int, int | None],
) -> None:
    """Add classified clicks to the counters (one statement per counter row)."""
    tally = _Tally()
    for click in machines:
        tally.machine[(click.digest_id, click.position)] += 1
        tally.machine[(click.digest_id, WHOLE_DIGEST)] += 1
    tags: dict[tuple[int, str], tuple[int, int]] = {}
    for click in readers:
        tally.clicks[(click.digest_id, click.position)] += 1
        if click.position == OPEN_POSITION:  # an open: its own row, not a click
            positions: tuple[int, ...] = (OPEN_POSITION,)
        else:
            tally.clicks[(click.digest_id, WHOLE_DIGEST)] += 1
            positions = (click.position, WHOLE_DIGEST)
        for position in positions:
            tag = tokens.click_seen_tag(click.delivery_id, position)
            tags[(click.digest_id, tag)] = (click.digest_id, position)
    for key in await _new_tags(session, list(tags)):
        tally.unique[tags[key]] += 1
    rows = set(tally.clicks) | set(tally.machine)
    for row in sorted(rows):
        digest_id, position = row
        added = {
            "clicks": tally.clicks[row],
            "unique_clicks": tally.unique[row],
            "machine_clicks": tally.machine[row],
        }
        statement = _insert(session, ClickCount).values(
            digest_id=digest_id, position=position, **added
        )
        table = ClickCount.__table__  # type: ignore[attr-defined]
        statement = statement.on_conflict_do_update(
            index_elements=["digest_id", "position"],
            set_={name: table.c[name] + value for name, value in added.items()},
        )
        await session.execute(statement)
    if mode == ClickTracking.per_reader:
        for click in readers:
            subscriber_id = subscribers.get(click.delivery_id)
            if subscriber_id is None or click.position == OPEN_POSITION:
                continue
            url = urls.get(click.digest_id, {}).get(click.position, "")
            session.add(
                SubscriberEvent(
                    subscriber_id=subscriber_id,
                    created_at=click.at,
                    event=SubscriberEventType.clicked,
                    detail=f"digest {click.digest_id}, link {click.position + 1}: {url}"[:1000],
                )
            )
    await session.flush()


@dataclass(frozen=True, slots=True)
class ArticleClicks:
    position: int
    title: str
    url: str
    clicks: int
    unique: int
    machine: int


@dataclass(frozen=True, slots=True)
class DigestClicks:
    clicks: int
    unique: int
    machine: int
    articles: list[ArticleClicks]
    opens: int  # TRACK_OPENS: pixels fetched (image proxies and Apple MPP included)
    unique_opens: int


async def digest_clicks(
    session: AsyncSession, *, digest_id: int, articles: Sequence[DigestArticle] | None = None
) -> DigestClicks:
    """The click counters of a digest, in all and per article (`articles`: the digest's, in
    order, when the caller has read them)."""
    counts = {
        c.position: c
        for c in (
            await session.exec(select(ClickCount).where(ClickCount.digest_id == digest_id))
        ).all()
    }
    if articles is None:
        articles = (
            await session.exec(
                select(DigestArticle)
                .where(DigestArticle.digest_id == digest_id)
                .order_by(col(DigestArticle.position))
            )
        ).all()
    per_article = []
    for article in articles:
        count = counts.get(article.position)
        per_article.append(
            ArticleClicks(
                position=article.position,
                title=article.title,
                url=article.url,
                clicks=count.clicks if count else 0,
                unique=count.unique_clicks if count else 0,
                machine=count.machine_clicks if count else 0,
            )
        )
    whole = counts.get(WHOLE_DIGEST)
    opens = counts.get(OPEN_POSITION)
    return DigestClicks(
        clicks=whole.clicks if whole else 0,
        unique=whole.unique_clicks if whole else 0,
        machine=whole.machine_clicks if whole else 0,
        articles=per_article,
        opens=opens.clicks if opens else 0,
        unique_opens=opens.unique_clicks if opens else 0,
    )


async def clicks_of_digests(session: AsyncSession, *, digest_ids: Sequence[int]) -> dict[int, int]:
    """Reader clicks of each digest (its whole-digest counter; 0 when nobody clicked): one
    primary-key read for a page of digests."""
    if not digest_ids:
        return {}
    rows = await session.exec(
        select(ClickCount.digest_id, ClickCount.clicks).where(
            col(ClickCount.digest_id).in_(digest_ids), ClickCount.position == WHOLE_DIGEST
        )
    )
    found = dict(rows.all())
    return {digest_id: found.get(digest_id, 0) for digest_id in digest_ids}


CSV_COLUMNS = ("position", "title", "url", "clicks", "unique_readers", "machine_clicks")


def clicks_csv(clicks: DigestClicks) -> str:
    """Per-article figures (titles and URLs made spreadsheet-safe, as the subscriber export)."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\r\n")
    writer.writerow(CSV_COLUMNS)
    for a in clicks.articles:
        writer.writerow(
            [
                a.position + 1,
                spreadsheet_safe(a.title),
                spreadsheet_safe(a.url),
                a.clicks,
                a.unique,
                a.machine,
            ]
        )
    return out.getvalue()


def group_by_delivery(clicks: Iterable[Click]) -> dict[int, list[Click]]:
    groups: dict[int, list[Click]] = defaultdict(list)
    for click in clicks:
        groups[click.delivery_id].append(click)
    return groups
