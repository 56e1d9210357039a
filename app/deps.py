"""`Annotated` dependency aliases, so route signatures read like sentences."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Annotated

from fastapi import Depends, HTTPException, Path, Query, Request, status
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlmodel.ext.asyncio.session import AsyncSession

from app.config import Settings
from app.db import session_scope
from app.editors import authenticate
from app.keys import ensure_hashing_key
from app.models import ApiKey
from app.outbox.kinds import Kinds
from app.security import Tokens


def get_settings_dep(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


async def get_session(request: Request) -> AsyncIterator[AsyncSession]:
    # The request owns the unit of work: commit after the handler, roll back if it raised.
    async for session in session_scope(request.app.state.sessionmaker):
        yield session


async def get_tokens(request: Request) -> Tokens:
    tokens: Tokens = request.app.state.tokens
    # Loaded at start unless the database was unreachable then.
    return await ensure_hashing_key(tokens, request.app.state.engine)


def get_kinds(request: Request) -> Kinds:
    # The delivery kinds (app/kinds.py), built once per app: how a domain pauses another's send.
    kinds: Kinds = request.app.state.kinds
    return kinds


def client_ip(request: Request) -> str:
    settings: Settings = request.app.state.settings
    if settings.trust_forwarded_for:
        forwarded = request.headers.get("x-forwarded-for")
        if forwarded:
            # The rightmost entry is the one our proxy wrote; anything left of it came from the
            # client and could be made up to dodge the rate limit or forge the consent record.
            return forwarded.split(",")[-1].strip()[:64] or "unknown"
    return request.client.host if request.client else "unknown"


SettingsDep = Annotated[Settings, Depends(get_settings_dep)]
# scope="function": the commit happens before the response is sent, so a client never gets a
# success for data that then failed to commit, and no lock outlives the handler.
SessionDep = Annotated[AsyncSession, Depends(get_session, scope="function")]
TokensDep = Annotated[Tokens, Depends(get_tokens)]
KindsDep = Annotated[Kinds, Depends(get_kinds)]
ClientIpDep = Annotated[str, Depends(client_ip)]

# Bounded integers from URLs: ids and offsets past a 32-bit database integer are a 422 naming
# the parameter, not a driver overflow (SQLite raises OverflowError past 2**63).
MAX_DB_INT = 2**31 - 1
IdPath = Annotated[int, Path(ge=1, le=MAX_DB_INT, description="A database id")]
OffsetQuery = Annotated[int, Query(ge=0, le=MAX_DB_INT, description="Rows to skip")]

_bearer = HTTPBearer(
    auto_error=False, description="An editor API key: `newsletter create-api-key NAME`"
)


async def require_editor(
    request: Request,
    session: SessionDep,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> ApiKey:
    unauthorized = HTTPException(
        status_code=status.HTTP_401_UNAUTHORIZED,
        detail="a valid editor API key is required (Authorization: Bearer <key>)",
        headers={"WWW-Authenticate": "Bearer"},
    )
    if credentials is None or credentials.scheme.lower() != "bearer":
        raise unauthorized
    api_key = await authenticate(session, key=credentials.credentials)
    if api_key is None:
        raise unauthorized
    return api_key


EditorDep = Annotated[ApiKey, Depends(require_editor)]
