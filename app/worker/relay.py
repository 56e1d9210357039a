"""What a worker concludes from the relay's answers: whether it is reachable, whether our setup
is broken, and whether a refused recipient is a reader's dead mailbox or a relay that refuses
everyone.

A relay whose recipient table is incomplete answers every RCPT with `550 5.1.1 User unknown`.
Taken one by one, each of those is a hard bounce; taken together they are a broken relay, and
suppressing every reader for it would empty the list. So a hard bounce is *held* (its row stays
leased, nothing is recorded) until the relay has shown that it delivers:

- a later message accepted, and the send's first SAMPLE attempts seen (or nothing left to send):
  the held bounces of that send are applied (failed, reader `bounced`);
- `run_limit` refusals in a row with no delivery between, or more than `max_share` of a send's
  first `sample` attempts refused: the relay refuses everyone. The held rows go back to the
  queue untouched, their sends are paused with the reason, and nobody is marked bounced.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass, field

from app.outbox.kinds import Outgoing


class RelayHealth:
    """Reachability and setup errors (authentication, MAIL FROM refused, relaying denied)."""

    def __init__(self) -> None:
        self.down_until = 0.0
        self._failures = 0
        self.setup_errors = 0  # consecutive permanent errors that blame our setup

    def wait_seconds(self) -> float:
        return self.down_until - time.monotonic()

    def is_down(self) -> bool:
        return time.monotonic() < self.down_until

    def delivered(self) -> None:
        self._failures = 0
        self.setup_errors = 0

    def unreachable(self, delay_for: float) -> None:
        """The relay refused or dropped the connection: no one is tried for `delay_for` s."""
        self.down_until = time.monotonic() + delay_for

    def failure_count(self) -> int:
        self._failures += 1
        return self._failures

    def setup_error(self) -> int:
        self.setup_errors += 1
        return self.setup_errors


@dataclass(slots=True)
class HeldBounce:
    item: Outgoing
    reply: str


@dataclass(slots=True)
class _SendTally:
    attempts: int = 0
    refused: int = 0
    sampled: bool = False  # the first SAMPLE attempts are behind us and looked sane


@dataclass(slots=True)
class Verdict:
    """What to do with held bounces: apply some, give others back and pause their sends."""

    apply: list[HeldBounce] = field(default_factory=list)
    give_back: list[HeldBounce] = field(default_factory=list)
    reason: str | None = None  # why the relay is judged to refuse everyone


NO_SEND = -1  # rows that belong to no send (confirmation emails)


class BounceGuard:
    def __init__(self, *, run_limit: int, sample: int, max_share: float) -> None:
        self.run_limit = run_limit
        self.sample = sample
        self.max_share = max_share
        self._held: list[HeldBounce] = []
        self._run = 0  # refusals in a row, no delivery between
        self._refusing: str | None = None  # the reason, once the relay is judged broken
        self._tallies: dict[int, _SendTally] = {}

    def held(self) -> list[HeldBounce]:
        return list(self._held)

    def _tally(self, item: Outgoing) -> _SendTally:
        return self._tallies.setdefault(item.delivery.digest_id or NO_SEND, _SendTally())

    def delivered(self, item: Outgoing) -> Verdict:
        """A message was accepted: the relay delivers. Apply what can be applied."""
        self._run = 0
        self._refusing = None
        tally = self._tally(item)
        tally.attempts += 1
        return self._settle()

    def refused(self, item: Outgoing, reply: str) -> Verdict:
        """The relay refused this recipient for good (5xx at RCPT, not a policy refusal)."""
        tally = self._tally(item)
        tally.attempts += 1
        tally.refused += 1
        self._run += 1
        self._held.append(HeldBounce(item, reply))
        if self._refusing is None:
            if self._run >= self.run_limit:
                self._refusing = (
                    f"the relay refused {self._run} recipients in a row and delivered none "
                    f"(last reply: {reply}); nobody was marked bounced"
                )
            elif not tally.sampled and tally.attempts >= self.sample:
                if tally.refused > self.max_share * tally.attempts:
                    self._refusing = (
                        f"the relay refused {tally.refused} of the first {tally.attempts} "
                        f"recipients (last reply: {reply}); nobody was marked bounced"
                    )
        if self._refusing is not None:
            return self._give_back_all(self._refusing)
        return self._settle()

    def _settle(self) -> Verdict:
        """Apply the held bounces of sends past their sample, if a delivery came since."""
        verdict = Verdict()
        if self._run:  # refusals since the last delivery: keep holding
            return verdict
        keep: list[HeldBounce] = []
        for held in self._held:
            tally = self._tally(held.item)
            if tally.attempts >= self.sample:
                tally.sampled = True
            if tally.sampled:
                verdict.apply.append(held)
            else:
                keep.append(held)
        self._held = keep
        return verdict

    def _give_back_all(self, reason: str) -> Verdict:
        verdict = Verdict(give_back=self._held, reason=reason)
        self._held = []
        return verdict

    def idle(self) -> Verdict:
        """Nothing left to send: decide on every held bounce with what was seen."""
        verdict = Verdict()
        for held in self._held:
            tally = self._tally(held.item)
            # Five refusals and no more than half delivered: too few to be sure either way, and
            # a wrong pause costs an editor a click where a wrong bounce loses readers.
            broken = self._run >= self.run_limit or (
                tally.refused >= 5 and tally.refused > self.max_share * tally.attempts
            )
            if broken:
                verdict.give_back.append(held)
                verdict.reason = (
                    f"the relay refused {tally.refused} of {tally.attempts} recipients "
                    f"(last reply: {held.reply}); nobody was marked bounced"
                )
            else:
                verdict.apply.append(held)
        self._held = []
        self._run = 0
        return verdict

    def release_all(self) -> list[HeldBounce]:
        """Shutting down: the held rows go back, undecided."""
        held, self._held = self._held, []
        return held

    def forget(self, send_ids: Iterable[int]) -> None:
        for send_id in send_ids:
            self._tallies.pop(send_id, None)
