"""When a schedule's slots fall: a cron expression read by croniter in the schedule's time zone.

croniter walks local wall-clock time (naive), and zoneinfo turns each local time into an
instant. So 08:00 Europe/Paris stays 08:00 on both sides of a DST change (07:00 UTC in winter,
06:00 UTC in summer). A local time that occurs twice
(the hour repeated in autumn) is one slot, at its first occurrence (fold=0); one that does not
exist (the hour skipped in spring) runs at the same wall-clock reading shifted by the gap, once.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from croniter import croniter
from croniter.croniter import CroniterError

# Walking back or forth this many local slots finds a slot or proves there is none nearby
# (croniter raises for expressions that never match, e.g. February 30).
_MAX_STEPS = 4


class InvalidCron(ValueError):
    pass


class InvalidTimezone(ValueError):
    pass


def parse_zone(name: str) -> ZoneInfo:
    """The IANA zone `name` ("Europe/Paris"); InvalidTimezone for anything else."""
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError, OSError) as exc:
        raise InvalidTimezone(f"unknown time zone {name!r} (an IANA name: Europe/Paris)") from exc


def check_cron(expression: str) -> str:
    """The expression, normalised (single spaces), if it is five cron fields that match at
    least once; InvalidCron otherwise."""
    fields = expression.split()
    if len(fields) != 5:
        raise InvalidCron(
            f"{expression!r} is not a cron expression of five fields "
            "(minute hour day-of-month month day-of-week, e.g. '0 8 * * 5')"
        )
    normalised = " ".join(fields)
    if not croniter.is_valid(normalised):
        raise InvalidCron(f"{expression!r} is not a valid cron expression")
    try:
        croniter(normalised, datetime(2000, 1, 1)).get_next(datetime)
    except (CroniterError, ValueError) as exc:
        raise InvalidCron(f"{expression!r} never matches a date") from exc
    return normalised


def _instant(local: datetime, zone: ZoneInfo) -> datetime:
    return local.replace(tzinfo=zone).astimezone(UTC)


def next_slot(expression: str, zone: ZoneInfo, after: datetime) -> datetime:
    """The first slot strictly after the instant `after` (UTC)."""
    local = after.astimezone(zone).replace(tzinfo=None)
    walker = croniter(expression, local)
    for _ in range(_MAX_STEPS):
        candidate = _instant(walker.get_next(datetime), zone)
        if candidate > after:
            return candidate
    # In the repeated autumn hour the local reading runs behind: start an hour later.
    return next_slot(expression, zone, after + timedelta(hours=1))


def previous_slot(expression: str, zone: ZoneInfo, at: datetime) -> datetime:
    """The last slot at or before the instant `at` (UTC)."""
    local = at.astimezone(zone).replace(tzinfo=None) + timedelta(microseconds=1)
    walker = croniter(expression, local)
    for _ in range(_MAX_STEPS):
        candidate = _instant(walker.get_prev(datetime), zone)
        if candidate <= at:
            return candidate
    return previous_slot(expression, zone, at - timedelta(hours=1))
