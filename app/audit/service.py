"""The audit log of editors' actions. One row per action, written in the same transaction as
the action (a rolled-back action leaves no row). No personal data: a subscriber is named by id,
never by address (an erased reader's address must not survive in the log)."""

from __future__ import annotations

import csv
import getpass
import io
import json
from collections.abc import AsyncIterator
from datetime import datetime
from typing import Any

from sqlmodel import col, func, select
from sqlmodel.ext.asyncio.session import AsyncSession

from app.models import AuditEvent, as_utc
from app.spreadsheet import spreadsheet_safe

EXPORT_FIELDS = (
    "id",
    "created_at",
    "actor",
    "source",
    "action",
    "target_type",
    "target_id",
    "detail",
)


def api_actor(key_name: str) -> str:
    return f"api-key:{key_name}"


def cli_actor() -> str:
    """The operating-system user who ran the command."""
    try:
        user = getpass.getuser()
    except (KeyError, OSError):  # no passwd entry (a container's numeric user)
        user = "unknown"
    return f"cli:{user}"


def record(
    session: AsyncSession,
    *,
    actor: str,
    source: str,
    action: str,
    target_type: str | None = None,
    target_id: object = None,
    detail: str | None = None,
) -> AuditEvent:
    """Add the event to the caller's unit of work (it commits with the action)."""
    event = AuditEvent(
        actor=actor[:200],
        source=source,
        action=action[:64],
        target_type=target_type,
        target_id=None if target_id is None else str(target_id)[:200],
        detail=None if detail is None else detail[:2000],
    )
    session.add(event)
    return event


def _filtered(
    statement: Any,
    *,
    action: str | None,
    actor: str | None,
    target_type: str | None,
    target_id: str | None,
    since: datetime | None,
    until: datetime | None,
) -> Any:
    if action:
        statement = statement.where(col(AuditEvent.action) == action)
    if actor:
        statement = statement.where(col(AuditEvent.actor) == actor)
    if target_type:
        statement = statement.where(col(AuditEvent.target_type) == target_type)
    if target_id:
        statement = statement.where(col(AuditEvent.target_id) == target_id)
    if since:
        statement = statement.where(col(AuditEvent.created_at) >= since)
    if until:
        statement = statement.where(col(AuditEvent.created_at) < until)
    return statement


async def list_events(
    session: AsyncSession,
    *,
    offset: int = 0,
    limit: int = 50,
    action: str | None = None,
    actor: str | None = None,
    target_type: str | None = None,
    target_id: str | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
) -> tuple[list[AuditEvent], int]:
    """Newest first, and the number of events the filters match."""
    filters: dict[str, Any] = {
        "action": action,
        "actor": actor,
        "target_type": target_type,
        "target_id": target_id,
        "since": since,
        "until": until,
    }
    counted = _filtered(select(func.count()).select_from(AuditEvent), **filters)
    total: int = (await session.exec(counted)).one()
    rows: list[AuditEvent] = (
        await session.exec(
            _filtered(select(AuditEvent), **filters)
            .order_by(col(AuditEvent.created_at).desc(), col(AuditEvent.id).desc())
            .offset(offset)
            .limit(limit)
        )
    ).all()
    return list(rows), total


def _cell(value: object) -> object:
    """A CSV cell: a name or detail that would start a formula is made text, as the subscriber
    export does (a key name, an editor's name or an address may begin with `=`)."""
    if value is None:
        return ""
    return spreadsheet_safe(value) if isinstance(value, str) else value


async def export_lines(
    session: AsyncSession, *, since: datetime | None, fmt: str
) -> AsyncIterator[str]:
    """The log, oldest first, as CSV (with a header) or JSON Lines, in pages of 1000."""
    if fmt == "csv":
        yield ",".join(EXPORT_FIELDS) + "\r\n"
    last_id = 0
    while True:
        statement = select(AuditEvent).where(col(AuditEvent.id) > last_id)
        if since is not None:
            statement = statement.where(col(AuditEvent.created_at) >= since)
        page = (await session.exec(statement.order_by(col(AuditEvent.id)).limit(1000))).all()
        if not page:
            return
        for event in page:
            row = {f: getattr(event, f) for f in EXPORT_FIELDS}
            row["created_at"] = as_utc(event.created_at).isoformat()
            if fmt == "csv":
                buffer = io.StringIO()
                csv.writer(buffer).writerow([_cell(row[f]) for f in EXPORT_FIELDS])
                yield buffer.getvalue()
            else:
                yield json.dumps(row, ensure_ascii=False) + "\n"
        last_id = page[-1].id or last_id
