"""Editor API over subscriber data: `/api/v1/subscribers` (list, access, erasure)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, HTTPException, Path, Query, Response, status

from app.audit.deps import AuditDep
from app.deps import EditorDep, OffsetQuery, SessionDep, TokensDep
from app.models import SubscriberStatus, as_utc
from app.openapi import EMAIL_FORMAT
from app.subscribers import service
from app.subscribers.schemas import (
    BouncePublic,
    ConsentPublic,
    DeliveryPublic,
    EventPublic,
    SubscriberList,
    SubscriberPublic,
    SubscriberRecordPublic,
)

router = APIRouter(prefix="/api/v1/subscribers", tags=["subscribers"])
EmailPath = Annotated[
    str, Path(description="The subscriber's address", json_schema_extra=EMAIL_FORMAT)
]


def _not_found(email: str) -> HTTPException:
    return HTTPException(status_code=404, detail=f"no subscriber with the address {email!r}")


@router.get("", response_model=SubscriberList)
async def list_subscribers(
    session: SessionDep,
    _editor: EditorDep,
    status: SubscriberStatus | None = None,
    q: Annotated[str | None, Query(max_length=320, description="Part of an email or name")] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    offset: OffsetQuery = 0,
) -> SubscriberList:
    """Newest first; erased subscribers are not listed."""
    page = await service.list_subscribers(session, status=status, q=q, limit=limit, offset=offset)
    return SubscriberList(
        total=page.total,
        limit=limit,
        offset=offset,
        items=[SubscriberPublic.model_validate(s, from_attributes=True) for s in page.items],
    )


@router.get("/{email}", response_model=SubscriberRecordPublic, responses={404: {}})
async def get_subscriber(
    email: EmailPath, session: SessionDep, tokens: TokensDep, _editor: EditorDep
) -> SubscriberRecordPublic:
    record = await service.subscriber_record(session, tokens=tokens, email=email)
    if record is None:
        raise _not_found(email)
    if record.subscriber.erased_at is not None:
        # Erased: nothing personal is held any more (only the keyed hash that keeps the address
        # suppressed), so there is no record to give; a GET after the DELETE is a 404.
        erased = as_utc(record.subscriber.erased_at)
        raise HTTPException(
            status_code=404, detail=f"the address was erased on {erased.isoformat()}"
        )
    s = record.subscriber
    return SubscriberRecordPublic(
        subscriber=SubscriberPublic.model_validate(s, from_attributes=True),
        consent=ConsentPublic(
            at=s.consent_at,
            ip=s.consent_ip,
            user_agent=s.consent_user_agent,
            source=s.consent_source,
            language=s.language,
        ),
        history=[
            EventPublic(at=e.created_at, event=e.event, detail=e.detail) for e in record.events
        ],
        deliveries=[
            DeliveryPublic.model_validate(d, from_attributes=True) for d in record.deliveries
        ],
        bounces=[
            BouncePublic(at=b.created_at, type=b.type, reason=b.reason, source=b.source)
            for b in record.bounces
        ],
    )


@router.delete("/{email}", status_code=status.HTTP_204_NO_CONTENT, responses={404: {}})
async def erase_subscriber(
    email: EmailPath, session: SessionDep, tokens: TokensDep, audit: AuditDep
) -> Response:
    """Erase the personal data (GDPR erasure). The address stays suppressed through a keyed
    hash: it is never mailed again unless its owner signs up again (a new double opt-in)."""
    erased = await service.erase_subscriber(session, tokens=tokens, email=email)
    if erased is None:
        raise _not_found(email)
    audit.on("subscriber", erased.id)
    return Response(status_code=status.HTTP_204_NO_CONTENT)
