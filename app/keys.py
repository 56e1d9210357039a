"""The keys the service lives with: the address-hashing key kept in the database, and the
rotation of SECRET_KEY (`newsletter keys rotate`).

SECRET_KEY signs links; links signed with a former key listed in SECRET_KEY_FALLBACKS are still
accepted (app.security.Tokens). The address-hashing key never changes: migration
0003_hashing_key created it (or adopted the one the database was already hashed with) in the
`stored_secret` table, and every process loads it from there at start.
"""

from __future__ import annotations

import logging
import secrets
from dataclasses import dataclass
from datetime import date, timedelta

import sqlalchemy as sa
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncEngine

from app.config import DEFAULT_SECRET_KEY, Settings
from app.db import sync_url
from app.security import HashingKeyMissing, Tokens

log = logging.getLogger("app.keys")

HASHING_KEY = "email_hash_key"
_SELECT = sa.text("SELECT value FROM stored_secret WHERE name = :name").bindparams(name=HASHING_KEY)
MISSING = (
    "the database has no address-hashing key (table stored_secret): run `newsletter migrate` "
    "with the SECRET_KEY the service has been running with"
)


def _decode(value: str | None) -> bytes:
    if value is None:
        raise HashingKeyMissing(MISSING)
    return bytes.fromhex(value)


async def load_hashing_key(engine: AsyncEngine) -> bytes | None:
    """The stored hashing key; None when the database cannot be reached now (the caller tries
    again later). Raises HashingKeyMissing when the database answers but has no key."""
    try:
        connection = await engine.connect()
    except (OSError, SQLAlchemyError) as exc:
        log.warning("database unreachable, address-hashing key not loaded yet: %s", exc)
        return None
    try:
        value = (await connection.execute(_SELECT)).scalar_one_or_none()
    except SQLAlchemyError as exc:  # no table: a database older than the code
        raise HashingKeyMissing(MISSING) from exc
    finally:
        await connection.close()
    return _decode(value)


async def ensure_hashing_key(tokens: Tokens, engine: AsyncEngine) -> Tokens:
    """Load the hashing key into `tokens` unless it is there already (cheap when it is)."""
    if tokens.hashing_key is None:
        tokens.hashing_key = await load_hashing_key(engine)
    return tokens


def read_hashing_key(database_url: str) -> bytes:
    """The stored hashing key, read with a sync driver (for commands run from a shell)."""
    engine = sa.create_engine(sync_url(database_url), poolclass=sa.pool.NullPool)
    try:
        with engine.connect() as connection:
            if not sa.inspect(connection).has_table("stored_secret"):
                raise HashingKeyMissing(MISSING)
            value = connection.execute(_SELECT).scalar_one_or_none()
    finally:
        engine.dispose()
    return _decode(value)


def tokens_for_command(settings: Settings) -> Tokens:
    """Tokens with the stored hashing key, for a command that hashes addresses."""
    return Tokens.from_settings(settings, hashing_key=read_hashing_key(settings.database_url))


# --- Rotation ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RotationStep:
    action: str  # what to do
    effect: str  # what it does


def new_secret_key() -> str:
    return secrets.token_urlsafe(48)


def rotation_plan(
    settings: Settings, *, new_key: str, keep_days: int, today: date
) -> list[RotationStep]:
    """The steps that replace SECRET_KEY by `new_key` without breaking a link already sent."""
    old = settings.secret_key
    # The default key is public: a link signed with it proves nothing, so it is not kept.
    kept = [k for k in [old, *settings.secret_key_fallback_list] if k != DEFAULT_SECRET_KEY]
    fallbacks = ",".join(dict.fromkeys(kept))
    remaining = ",".join(dict.fromkeys(k for k in settings.secret_key_fallback_list if k != old))
    until = today + timedelta(days=keep_days)
    return [
        RotationStep(
            f"SECRET_KEY={new_key}",
            "New links (confirmation, unsubscribe) are signed with this key, and Message-IDs "
            "are tagged with it. Set it where the service reads its settings (.env, the "
            "container's environment) for every process: `serve` replicas and `worker`s.",
        ),
        RotationStep(
            f"SECRET_KEY_FALLBACKS={fallbacks}" if fallbacks else "SECRET_KEY_FALLBACKS=",
            "Links signed with the former key (in emails already sent) are still accepted, "
            "and bounces quoting their Message-IDs still match."
            if fallbacks
            else "The former key was the public default: links signed with it are not kept.",
        ),
        RotationStep(
            "restart every process (all `newsletter serve` and `newsletter worker`)",
            "Each process reads its settings at start. Address hashes (uniqueness, "
            "suppression, erased records) use the hashing key stored in the database, which "
            "does not change: every unsubscribed, bounced and erased address stays suppressed.",
        ),
        RotationStep(
            f"after {keep_days} days (on {until.isoformat()}): "
            + (f"SECRET_KEY_FALLBACKS={remaining}" if remaining else "SECRET_KEY_FALLBACKS="),
            "then restart again. The former key stops working: links in emails sent before the "
            "rotation (an unsubscribe link in an old digest) get the 'invalid link' page, while "
            "every email sent since carries links signed with the new key. If the former key "
            "leaked, do this step at once instead of waiting: a leaked key lets anyone sign "
            "links.",
        ),
    ]
