"""`POST /api/v1/bounces`: for editors (API key) and mail providers' webhooks (shared secret)."""

from __future__ import annotations

import hmac
from typing import Annotated

from fastapi import APIRouter, Depends, Header, HTTPException, status
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from app.audit.deps import AuditDep
from app.bounces import service
from app.bounces.schemas import (
    BounceAccepted,
    BounceCreate,
    UnbouncedPublic,
    UnbounceIn,
    UnbounceOut,
)
from app.deps import KindsDep, SessionDep, SettingsDep, TokensDep
from app.editors import authenticate

router = APIRouter(prefix="/api/v1", tags=["bounces"])
_bearer = HTTPBearer(
    auto_error=False, description="An editor API key, or the BOUNCE_WEBHOOK_SECRET"
)


async def bounce_reporter(
    session: SessionDep,
    settings: SettingsDep,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
    x_webhook_secret: Annotated[str | None, Header(max_length=500)] = None,
) -> str:
    """Who reports: `webhook` (the shared secret, as a Bearer token or `X-Webhook-Secret`) or
    `api` (an editor key). Anything else is 401."""
    secret = settings.bounce_webhook_secret
    presented = [x_webhook_secret] if x_webhook_secret else []
    if credentials is not None and credentials.scheme.lower() == "bearer":
        presented.append(credentials.credentials)
    if secret:
        for value in presented:
            # Constant-time comparison: the secret must not leak through response timing.
            if hmac.compare_digest(value.encode(), secret.encode()):
                return service.BounceSource.webhook
    if credentials is not None and credentials.scheme.lower() == "bearer":
        if await authenticate(session, key=credentials.credentials) is not None:
            return service.BounceSource.api
    raise HTTPException(
        status_code=status.HTTP_401_UNAUTHORIZED,
        detail="an editor API key or the bounce webhook secret is required",
        headers={"WWW-Authenticate": "Bearer"},
    )


@router.post(
    "/bounces",
    status_code=202,
    response_model=BounceAccepted,
    responses={401: {"description": "No valid key or secret"}, 422: {"description": "Bad field"}},
)
async def report_bounce(
    body: BounceCreate,
    session: SessionDep,
    tokens: TokensDep,
    settings: SettingsDep,
    kinds: KindsDep,
    source: Annotated[str, Depends(bounce_reporter)],
) -> BounceAccepted:
    """hard -> bounced; complaint -> complained (and counted against the reader's latest
    digest: past SEND_PAUSE_COMPLAINT_RATE its send pauses); soft -> counted (SOFT_BOUNCE_LIMIT
    within 30 days, or on that many digests in a row -> bounced). The answer is the same (202)
    whether or not the address is known; unknown ones store nothing."""
    await service.report_bounce(
        session,
        tokens=tokens,
        email=body.email,
        type=body.type,
        reason=body.reason,
        source=source,
        settings=settings,
        kinds=kinds,
    )
    return BounceAccepted()


@router.post(
    "/bounces/undo",
    response_model=UnbounceOut,
    responses={401: {"description": "Missing, wrong or revoked API key"}},
)
async def unbounce(body: UnbounceIn, session: SessionDep, _audit: AuditDep) -> UnbounceOut:
    """Restore readers marked bounced since `since` (optionally only those whose copy of
    `digest_id` failed): back to confirmed, recorded in their history, their failed copies of
    an unfinished digest queued again. `dry_run: true` lists them and changes nothing."""
    restored = await service.unbounce(
        session, since=body.since, digest_id=body.digest_id, dry_run=body.dry_run
    )
    return UnbounceOut(
        dry_run=body.dry_run,
        count=len(restored),
        subscribers=[
            UnbouncedPublic(email=r.email, bounced_at=r.bounced_at, restored_to=r.restored_to)
            for r in restored
        ],
    )
