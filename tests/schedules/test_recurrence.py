"""Slots of a cron expression in a time zone, across DST changes (pure functions)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest

from app.schedules.recurrence import (
    InvalidCron,
    InvalidTimezone,
    check_cron,
    next_slot,
    parse_zone,
    previous_slot,
)

PARIS = ZoneInfo("Europe/Paris")


def _walk(expression: str, zone: ZoneInfo, start: datetime, count: int) -> list[datetime]:
    slots, at = [], start
    for _ in range(count):
        at = next_slot(expression, zone, at)
        slots.append(at)
    return slots


@pytest.mark.parametrize(
    ("start", "summer_after"),
    [
        (datetime(2026, 3, 1, tzinfo=UTC), True),  # last Sunday of March: 29 March 2026
        (datetime(2026, 10, 1, tzinfo=UTC), False),  # last Sunday of October: 25 October 2026
    ],
)
def test_eight_fridays_at_eight_local_across_a_dst_change(
    start: datetime, summer_after: bool
) -> None:
    slots = _walk("0 8 * * 5", PARIS, start, 8)
    local = [s.astimezone(PARIS) for s in slots]
    assert all((t.hour, t.minute, t.weekday()) == (8, 0, 4) for t in local)
    assert all(
        b - a
        in (
            timedelta(days=7) - timedelta(hours=1),
            timedelta(days=7),
            timedelta(days=7) + timedelta(hours=1),
        )
        for a, b in zip(slots, slots[1:], strict=False)
    )
    utc_hours = [s.hour for s in slots]
    # 07:00 UTC in winter (UTC+1), 06:00 UTC in summer (UTC+2); the change falls in between.
    assert utc_hours[0] == (7 if summer_after else 6)
    assert utc_hours[-1] == (6 if summer_after else 7)


def test_the_repeated_autumn_hour_runs_once() -> None:
    # 02:30 happens twice on 25 October 2026 in Paris: one slot.
    slots = _walk("30 2 * * *", PARIS, datetime(2026, 10, 24, 12, tzinfo=UTC), 3)
    assert [s.astimezone(PARIS).day for s in slots] == [25, 26, 27]
    assert len(set(slots)) == 3


def test_the_skipped_spring_hour_runs_once() -> None:
    # 02:30 does not exist on 29 March 2026 in Paris: the slot still happens that day, once.
    slots = _walk("30 2 * * *", PARIS, datetime(2026, 3, 28, 12, tzinfo=UTC), 3)
    assert [s.astimezone(PARIS).day for s in slots] == [29, 30, 31]


def test_previous_slot_is_at_or_before() -> None:
    slot = datetime(2026, 11, 27, 7, tzinfo=UTC)  # Friday 08:00 Paris
    assert previous_slot("0 8 * * 5", PARIS, slot) == slot
    assert previous_slot("0 8 * * 5", PARIS, slot + timedelta(hours=3)) == slot
    assert previous_slot("0 8 * * 5", PARIS, slot - timedelta(seconds=1)) == slot - timedelta(
        days=7
    )
    assert next_slot("0 8 * * 5", PARIS, slot) == slot + timedelta(days=7)


@pytest.mark.parametrize(
    "expression", ["", "0 8 * *", "0 8 * * 5 2026", "61 8 * * *", "0 8 30 2 *", "every friday"]
)
def test_bad_cron_expressions(expression: str) -> None:
    with pytest.raises(InvalidCron):
        check_cron(expression)


def test_cron_is_normalised() -> None:
    assert check_cron("  0  8 * *   5 ") == "0 8 * * 5"


@pytest.mark.parametrize("name", ["Mars/Olympus", "", "../../etc/passwd", "Europe/Paris\x00"])
def test_unknown_zones(name: str) -> None:
    with pytest.raises(InvalidTimezone):
        parse_zone(name)
