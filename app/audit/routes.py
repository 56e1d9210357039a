"""`GET /api/v1/audit`: the audit log, newest first, with paging and filters."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Annotated, Any

from fastapi import APIRouter, Query
from pydantic import AfterValidator, BaseModel, BeforeValidator

from app.audit import service
from app.deps import EditorDep, OffsetQuery, SessionDep
from app.models import as_utc

router = APIRouter(prefix="/api/v1", tags=["audit"])

AUTH: dict[int | str, dict[str, Any]] = {401: {"description": "Missing, wrong or revoked API key"}}
Timestamp = Annotated[datetime, AfterValidator(as_utc)]


# RFC 3339 date-time, as the OpenAPI format says: not a number (Unix time), not a bare date.
_RFC3339 = re.compile(
    r"\d{4}-\d{2}-\d{2}[Tt ]\d{2}:\d{2}:\d{2}(\.\d+)?([Zz]|[+-]\d{2}:\d{2})", re.ASCII
)


def _rfc3339(value: object) -> object:
    if isinstance(value, str) and not _RFC3339.fullmatch(value):
        raise ValueError("an RFC 3339 date-time with its offset, e.g. 2026-11-01T00:00:00Z")
    return value


def _instant(value: datetime | None) -> datetime | None:
    """In UTC, between the years 1 and 9999 once converted (else a 422, not a driver error)."""
    if value is None:
        return None
    try:
        return as_utc(value).astimezone(UTC)
    except OverflowError as exc:
        raise ValueError("out of range once converted to UTC") from exc


Instant = Annotated[datetime | None, BeforeValidator(_rfc3339), AfterValidator(_instant)]
# Printable text: a NUL byte reaches no database (PostgreSQL refuses it), it is a 422.
PRINTABLE = r"^[^\x00-\x1f\x7f]*$"
Filter = Annotated[str | None, Query(max_length=200, pattern=PRINTABLE)]


class AuditEventPublic(BaseModel):
    id: int
    created_at: Timestamp
    actor: str
    source: str
    action: str
    target_type: str | None
    target_id: str | None
    detail: str | None


class AuditList(BaseModel):
    total: int
    limit: int
    offset: int
    items: list[AuditEventPublic]


@router.get(
    "/audit", response_model=AuditList, responses={**AUTH, 422: {"description": "Bad filter"}}
)
async def list_audit_events(
    session: SessionDep,
    _editor: EditorDep,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    offset: OffsetQuery = 0,
    action: Annotated[
        str | None,
        Query(
            max_length=64,
            pattern=PRINTABLE,
            description="e.g. create_digest, pause, erase_subscriber",
        ),
    ] = None,
    actor: Annotated[
        str | None, Query(max_length=200, pattern=PRINTABLE, description="e.g. api-key:desk")
    ] = None,
    target_type: Annotated[
        str | None,
        Query(max_length=32, pattern=PRINTABLE, description="digest, article, feed, subscriber..."),
    ] = None,
    target_id: Filter = None,
    since: Annotated[Instant, Query(description="From this instant (ISO 8601)")] = None,
    until: Annotated[Instant, Query(description="Before this instant (ISO 8601)")] = None,
) -> AuditList:
    """Who did what to what, and when: every state-changing request of an editor API key and
    every editor command of the CLI. Newest first."""
    rows, total = await service.list_events(
        session,
        offset=offset,
        limit=limit,
        action=action,
        actor=actor,
        target_type=target_type,
        target_id=target_id,
        since=since,
        until=until,
    )
    items = [AuditEventPublic.model_validate(r, from_attributes=True) for r in rows]
    return AuditList(total=total, limit=limit, offset=offset, items=items)
