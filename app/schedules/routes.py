"""Editor API: schedules (Bearer API key)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, HTTPException, status
from fastapi.responses import Response
from sqlmodel.ext.asyncio.session import AsyncSession

from app.audit.deps import AuditDep
from app.deps import EditorDep, IdPath, SessionDep
from app.http import field_error
from app.models import Schedule
from app.schedules import service
from app.schedules.schemas import (
    ScheduleCreate,
    ScheduleList,
    SchedulePublic,
    ScheduleRunPublic,
    ScheduleUpdate,
)

router = APIRouter(prefix="/api/v1/schedules", tags=["schedules"])

NOT_FOUND: dict[int | str, dict[str, Any]] = {404: {"description": "No such schedule"}}
INVALID: dict[int | str, dict[str, Any]] = {
    422: {"description": "A field is invalid (a cron expression, a time zone, min > max)"}
}
# PATCH: these may be left out, never set to null.
REQUIRED = ("name", "cron", "timezone", "cadence", "min_articles", "max_articles", "enabled")


async def _public(session: AsyncSession, schedules: list[Schedule]) -> list[SchedulePublic]:
    runs = await service.recent_runs(
        session, schedule_ids=[s.id for s in schedules if s.id is not None]
    )
    return [
        SchedulePublic.model_validate(
            {
                **schedule.model_dump(),
                "categories": list(schedule.categories or []),
                "next_run_at": service.next_run_at(schedule),
                "runs": [
                    ScheduleRunPublic.model_validate(r, from_attributes=True)
                    for r in runs[schedule.id]
                ],
            }
        )
        for schedule in schedules
        if schedule.id is not None
    ]


def _invalid(exc: service.InvalidSchedule) -> Exception:
    return field_error(exc.field, message=exc.message, value=exc.value)


async def _found(session: AsyncSession, schedule_id: int) -> Schedule:
    try:
        return await service.get_schedule(session, schedule_id=schedule_id)
    except service.ScheduleNotFound as exc:
        raise HTTPException(status.HTTP_404_NOT_FOUND, detail=str(exc)) from exc


@router.post(
    "", status_code=status.HTTP_201_CREATED, response_model=SchedulePublic, responses=INVALID
)
async def create_schedule(
    body: ScheduleCreate, session: SessionDep, audit: AuditDep
) -> SchedulePublic:
    """A schedule: at each slot of `cron` in `timezone`, a digest of the articles that are new
    since its last one (in its `categories`), to the readers of its `cadence`, when there are at
    least `min_articles`."""
    values = body.model_dump(mode="json")
    values["categories"] = values["categories"] or []
    try:
        schedule = await service.create_schedule(session, values=values)
    except service.InvalidSchedule as exc:
        raise _invalid(exc) from exc
    audit.on("schedule", schedule.id)
    return (await _public(session, [schedule]))[0]


@router.get("", response_model=ScheduleList)
async def list_schedules(session: SessionDep, _editor: EditorDep) -> ScheduleList:
    return ScheduleList(items=await _public(session, await service.list_schedules(session)))


@router.get("/{schedule_id}", response_model=SchedulePublic, responses=NOT_FOUND)
async def get_schedule(
    schedule_id: IdPath, session: SessionDep, _editor: EditorDep
) -> SchedulePublic:
    """With `next_run_at` and its last runs (slot, outcome, digest id)."""
    return (await _public(session, [await _found(session, schedule_id)]))[0]


@router.patch("/{schedule_id}", response_model=SchedulePublic, responses={**NOT_FOUND, **INVALID})
async def update_schedule(
    schedule_id: IdPath, body: ScheduleUpdate, session: SessionDep, _audit: AuditDep
) -> SchedulePublic:
    """Any field; `enabled: false` stops it, `true` starts it again from now."""
    changes = body.model_dump(mode="json", exclude_unset=True)
    await _found(session, schedule_id)
    for field in REQUIRED:
        if field in changes and changes[field] is None:
            raise field_error(field, message="may be left out, not set to null", value=None)
    if "categories" in changes:
        changes["categories"] = changes["categories"] or []
    try:
        schedule = await service.update_schedule(session, schedule_id=schedule_id, changes=changes)
    except service.InvalidSchedule as exc:
        raise _invalid(exc) from exc
    return (await _public(session, [schedule]))[0]


@router.delete("/{schedule_id}", status_code=status.HTTP_204_NO_CONTENT, responses=NOT_FOUND)
async def delete_schedule(schedule_id: IdPath, session: SessionDep, _audit: AuditDep) -> Response:
    """The schedule and its runs; the digests it sent stay."""
    try:
        await service.delete_schedule(session, schedule_id=schedule_id)
    except service.ScheduleNotFound as exc:
        raise HTTPException(status.HTTP_404_NOT_FOUND, detail=str(exc)) from exc
    return Response(status_code=status.HTTP_204_NO_CONTENT)
