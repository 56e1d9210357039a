"""The audit dependency: every state-changing editor route takes `AuditDep` instead of
`EditorDep` (tests/audit/test_audit.py walks the app's routes and fails on one that does not)."""

from __future__ import annotations

from typing import Annotated

import sqlalchemy as sa
from fastapi import Depends, Request
from sqlmodel.ext.asyncio.session import AsyncSession

from app.audit import service as audit_log
from app.deps import EditorDep, SessionDep
from app.models import ApiKey, AuditEvent


class Audit:
    """The audit event of this request, already in its unit of work: a route that learns its
    target only while acting (a new digest's id) names it with `on`."""

    def __init__(self, session: AsyncSession, editor: ApiKey, event: AuditEvent) -> None:
        self.session = session
        self.editor = editor
        self.event = event

    async def drop(self) -> None:
        """Nothing was done after all, yet the route answers without raising (a 409 it
        returns): the event leaves the unit of work. (A route that raises is rolled back.)"""
        if sa.inspect(self.event).persistent:  # already flushed by a query of the route
            await self.session.delete(self.event)
        else:
            self.session.expunge(self.event)

    def on(self, target_type: str, target_id: object, detail: str | None = None) -> None:
        self.event.target_type = target_type
        self.event.target_id = str(target_id)[:200]
        if detail is not None:
            self.event.detail = detail[:2000]


async def audited_editor(request: Request, session: SessionDep, editor: EditorDep) -> Audit:
    """An editor's state-changing request, recorded in the audit log with the request's own
    transaction (an action that fails or rolls back leaves no row). The action is the route's
    name; the target, a path parameter ending in `_id` (never an address: personal data)."""
    route = request.scope.get("route")
    action = getattr(route, "name", None) or request.url.path
    target_type = target_id = None
    for name, value in request.path_params.items():
        if name.endswith("_id"):
            target_type, target_id = name.removesuffix("_id"), value
    event = audit_log.record(
        session,
        actor=audit_log.api_actor(editor.name),
        source="api",
        action=action,
        target_type=target_type,
        target_id=target_id,
        detail=f"{request.method} {getattr(route, 'path', request.url.path)}",
    )
    return Audit(session, editor, event)


# Every state-changing editor route takes this instead of EditorDep (tests/audit checks it).
AuditDep = Annotated[Audit, Depends(audited_editor)]
