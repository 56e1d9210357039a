"""How fast a worker sends, and over how many connections, adapted to what the relay answers.

Relays throttle with temporary replies (421, 450/451/452, 4.7.x, "rate", "too many",
"throttl"). Pushing on at full speed only collects more of them, so the worker's pace follows
the relay, as TCP's congestion window follows the network (AIMD):

- a throttling reply halves the pace (multiplicative decrease), at most once per
  DECREASE_EVERY seconds: the replies to messages already in flight say nothing new. With no
  pace yet (SEND_RATE_PER_SECOND 0, unlimited), the first one starts from the measured rate;
- each clean delivery adds 1/pace of INCREASE_PER_SECOND messages per second (additive
  increase: about INCREASE_PER_SECOND more every second of clean sending), never above
  SEND_RATE_PER_SECOND;
- a refused connection halves the number of connections (lanes); clean deliveries bring them
  back one at a time, up to SEND_CONCURRENCY;
- after FORGET_AFTER seconds with no throttling reply the pace is SEND_RATE_PER_SECOND again:
  one greylisted confirmation in a quiet hour must not slow the next digest to a crawl.

The pace changes only on replies, so it does not drift while the worker is idle; and it spaces
messages evenly (no burst of a second's worth after a pause), which is what relays count.
"""

from __future__ import annotations

import re
import time
from collections import deque

from app.mail.transport import SendError

THROTTLE_CODES = frozenset({421, 450, 451, 452})
_THROTTLE_WORDS = re.compile(r"\brate\b|too many|throttl|4\.7\.\d", re.IGNORECASE)
_VOLUME_WORDS = re.compile(r"\brate\b|too many|throttl", re.IGNORECASE)
DECREASE_EVERY = 0.5  # seconds: one halving per burst of throttling replies
DECREASE_FACTOR = 0.7  # CUBIC's: a gentler cut keeps the relay busier than halving
MIN_RATE = 1.0  # messages per second: the slowest pace
INCREASE_SHARE = 0.1  # of the pace before the last cut, per second of clean sending
MIN_INCREASE = 1.0  # messages per second, per second
LANE_BACK_AFTER = 200  # clean deliveries before one more connection
MEASURE_SECONDS = 1.0
MEASURE_MIN = 10  # answers in MEASURE_SECONDS
FORGET_AFTER = 60.0  # seconds without a throttling reply: back to SEND_RATE_PER_SECOND


def is_throttling(exc: SendError) -> bool:
    """A temporary refusal that tells the worker to slow down: the relay's busy codes, or a
    reply that speaks of volume."""
    if exc.permanent or exc.code is None:
        return False
    if exc.code in THROTTLE_CODES:
        # 452 4.2.2 is a full mailbox: the reader's, not the relay's load.
        return "4.2.2" not in exc.reply
    return 400 <= exc.code < 500 and bool(_THROTTLE_WORDS.search(exc.reply))


def speaks_of_volume(exc: SendError) -> bool:
    """The reply says outright that we send too much ("rate", "too many", "throttled"): it
    says nothing of the reader, so it is not counted against their copy's attempts. A bare
    451 or a 4.7.x (greylisting) may be about the reader's host as well: counted, as any
    4xx, so that a copy cannot be retried forever."""
    return not exc.permanent and bool(_VOLUME_WORDS.search(exc.reply))


class Pace:
    """One worker's pace (messages per second, None: unlimited) and lanes; only the lanes of
    that worker's sender touch it, on one event loop."""

    def __init__(self, *, ceiling: float, lanes: int) -> None:
        self.ceiling = ceiling if ceiling > 0 else None  # SEND_RATE_PER_SECOND; 0: none
        self.rate: float | None = self.ceiling
        self.max_lanes = lanes
        self.lanes = lanes
        self.throttled = 0  # throttling replies seen
        self.throttled_at: float | None = None  # time.time() of the last one
        self._step = MIN_INCREASE
        self._decreased = 0.0
        self._last_throttle = 0.0  # monotonic
        self._clean = 0
        self._next = 0.0
        self._recent: deque[float] = deque(maxlen=4096)  # monotonic times of answers

    def next_turn(self) -> float:
        """Reserve this message's slot (slots are 1/rate apart): the monotonic time it comes."""
        rate = self.rate
        now = time.monotonic()
        if rate is None:
            return now
        # No credit for idle time beyond one slot: a pause is not followed by a burst.
        start = max(self._next, now - 1.0 / rate)
        self._next = start + 1.0 / rate
        return start

    def delivered(self) -> None:
        now = time.monotonic()
        self._recent.append(now)
        self._clean += 1
        if self._clean % LANE_BACK_AFTER == 0 and self.lanes < self.max_lanes:
            self.lanes += 1
        if self.rate != self.ceiling and now - self._last_throttle > FORGET_AFTER:
            self.rate = self.ceiling
        elif self.rate is not None:
            raised = self.rate + self._step / self.rate
            if self.ceiling is not None and raised >= self.ceiling:
                raised = self.ceiling
            self.rate = raised

    def measured_rate(self) -> float | None:
        """Messages the relay answered per second over the last MEASURE_SECONDS; None with
        fewer than MEASURE_MIN (too few to tell a rate from noise)."""
        now = time.monotonic()
        recent = [t for t in self._recent if t >= now - MEASURE_SECONDS]
        if len(recent) < MEASURE_MIN:
            return None
        span = max(recent[-1] - recent[0], 1e-3)
        return max(MIN_RATE, (len(recent) - 1) / span)

    def throttling(self) -> None:
        """The relay said: slower."""
        now = time.monotonic()
        self._recent.append(now)
        self._last_throttle = now
        self.throttled += 1
        self.throttled_at = time.time()
        self._clean = 0
        if now - self._decreased < DECREASE_EVERY:
            return
        self._decreased = now
        # The pace may have run ahead of what was really sent (a slow database, few messages):
        # halve what the relay saw.
        measured = self.measured_rate()
        if self.rate is None:
            if measured is None:
                return  # nothing measured yet: no rate to halve; the next replies will tell
            current = measured
        else:
            current = self.rate if measured is None else min(self.rate, measured)
        self.rate = max(MIN_RATE, current * DECREASE_FACTOR)
        self._step = max(MIN_INCREASE, INCREASE_SHARE * current)

    def connection_refused(self) -> None:
        self.lanes = max(1, self.lanes // 2)
        self._clean = 0

    def reported_rate(self) -> float | None:
        """The pace to show: None while unlimited and never throttled."""
        return None if self.rate is None else round(self.rate, 1)
