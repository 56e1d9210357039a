"""Editor API keys: shown once, stored hashed, revocable."""

from __future__ import annotations

from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession

from app.models import ApiKey, utcnow
from app.security import hash_api_key, new_api_key


class ApiKeyExists(ValueError):
    pass


async def create_api_key(session: AsyncSession, *, name: str) -> tuple[ApiKey, str]:
    """A new key; the clear key is returned once and never stored."""
    name = name.strip()
    if not name or len(name) > 100:
        raise ValueError("NAME must be 1 to 100 characters")
    existing = (await session.exec(select(ApiKey).where(ApiKey.name == name))).first()
    if existing is not None and existing.revoked_at is None:
        raise ApiKeyExists(f"an active API key named {name!r} already exists")
    if existing is not None:
        await session.delete(existing)
        await session.flush()
    key = new_api_key()
    api_key = ApiKey(name=name, key_hash=hash_api_key(key), prefix=key[:10])
    session.add(api_key)
    await session.flush()
    return api_key, key


async def revoke_api_key(session: AsyncSession, *, name: str) -> ApiKey | None:
    api_key = (
        await session.exec(
            select(ApiKey).where(ApiKey.name == name, col(ApiKey.revoked_at).is_(None))
        )
    ).first()
    if api_key is not None:
        api_key.revoked_at = utcnow()
        session.add(api_key)
        await session.flush()
    return api_key


async def authenticate(session: AsyncSession, *, key: str) -> ApiKey | None:
    if len(key) > 200:
        return None
    api_key = (
        await session.exec(select(ApiKey).where(ApiKey.key_hash == hash_api_key(key)))
    ).first()
    if api_key is None or api_key.revoked_at is not None:
        return None
    return api_key
