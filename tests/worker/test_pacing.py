"""The pace object on its own: which replies are throttling, and how the pace moves (AIMD)."""

from __future__ import annotations

import pytest

from app.mail.transport import SendError, classify_rcpt_reply
from app.worker import pacing
from app.worker.pacing import Pace, is_throttling, speaks_of_volume


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    fake = Clock()
    monkeypatch.setattr(pacing.time, "monotonic", fake)
    return fake


@pytest.mark.parametrize(
    ("code", "text", "throttling", "volume"),
    [
        (421, "4.7.0 Too many connections, slow down", True, True),
        (450, "4.7.1 Rate limited, try again later", True, True),
        (451, "4.3.0 Temporary local problem", True, False),
        (452, "4.5.3 Too many recipients", True, True),
        (452, "4.2.2 Mailbox full", False, False),
        (451, "4.7.1 Greylisted, try later", True, False),
        (454, "4.7.0 Message throttled: hourly quota", True, True),
        (432, "4.7.12 A password transition is needed", True, False),
        (450, "4.2.1 Mailbox busy", True, False),
        (550, "5.7.1 Rate limit: blocked", False, False),
        (441, "4.4.1 No answer from host", False, False),
    ],
)
def test_which_replies_throttle(code: int, text: str, throttling: bool, volume: bool) -> None:
    exc = classify_rcpt_reply(code, text)
    assert is_throttling(exc) is throttling
    assert speaks_of_volume(exc) is volume


def test_a_connection_error_is_not_throttling() -> None:
    exc = SendError("connection: OSError: refused", code=None, permanent=False, recipient=False)
    assert not is_throttling(exc)


def test_throttling_cuts_the_pace_once_per_burst_and_clean_replies_raise_it(clock: Clock) -> None:
    pace = Pace(ceiling=100, lanes=4)
    assert pace.rate == 100
    pace.throttling()
    assert pace.rate == pytest.approx(100 * pacing.DECREASE_FACTOR)
    cut = pace.rate
    pace.throttling()  # the same burst: replies to messages already in flight
    assert pace.rate == cut
    clock.now += pacing.DECREASE_EVERY
    pace.throttling()
    assert pace.rate == pytest.approx(cut * pacing.DECREASE_FACTOR)
    low = pace.rate
    assert low is not None
    # About INCREASE_SHARE of the pace before the cut per second of clean sending: additive.
    for _ in range(int(low)):  # one second's worth at this pace
        clock.now += 1 / low
        pace.delivered()
    assert pace.rate is not None
    assert pace.rate - low == pytest.approx(pacing.INCREASE_SHARE * cut, rel=0.15)
    for _ in range(10_000):
        clock.now += 0.001
        pace.delivered()
    assert pace.rate == 100  # never above SEND_RATE_PER_SECOND


def test_unlimited_starts_from_the_measured_rate_and_forgets_after_a_quiet_minute(
    clock: Clock,
) -> None:
    pace = Pace(ceiling=0, lanes=4)
    assert pace.rate is None
    pace.throttling()  # nothing measured yet: no rate to cut
    assert pace.rate is None
    clock.now += 1
    for _ in range(300):  # 300 answers in the last second
        clock.now += 1 / 300
        pace.delivered()
    pace.throttling()
    assert pace.rate == pytest.approx(300 * pacing.DECREASE_FACTOR, rel=0.05)
    assert pace.reported_rate() is not None
    clock.now += pacing.FORGET_AFTER + 1
    pace.delivered()
    assert pace.rate is None


def test_refused_connections_halve_the_lanes_and_clean_sending_brings_them_back(
    clock: Clock,
) -> None:
    pace = Pace(ceiling=0, lanes=8)
    pace.connection_refused()
    pace.connection_refused()
    assert pace.lanes == 2
    for _ in range(pacing.LANE_BACK_AFTER * 10):
        pace.delivered()
    assert pace.lanes == 8
