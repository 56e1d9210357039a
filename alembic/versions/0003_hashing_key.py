"""stored_secret: the address-hashing key, kept in the database, apart from SECRET_KEY

Revision ID: 0003_hashing_key
Revises: 0002
Create Date: 2026-12-02 09:00:00.000000

Until now an address hash (`subscriber.email_hash`, what uniqueness and suppression rely on) was
HMAC-SHA256(K, address) with K = HMAC-SHA256(SECRET_KEY, "newsletter.email-hash.v1"), so
SECRET_KEY could never change. From here on K is stored in `stored_secret` and SECRET_KEY only
signs links, so it can be rotated (`newsletter keys rotate`).

Existing data: we adopt the K the database was hashed with as the stored key, instead of
re-hashing every row with a new one. Re-hashing needs the address, and an erased subscriber has
none left (only its hash, which is what keeps the erased address suppressed and its old
unsubscribe link working): re-hashing would lose exactly the suppressions that matter most.
Adopting K keeps every hash as it is, so nothing is rewritten and nothing can be lost.

K is derived from the SECRET_KEY the migration runs with (`newsletter migrate` reads it from the
environment, as the service does). Migrating with the wrong SECRET_KEY would silently break every
suppression, so the key is checked against stored addresses first; of SECRET_KEY and
SECRET_KEY_FALLBACKS, the one that reproduces the stored hashes is adopted, and if none does the
migration stops and says so. A database with no subscriber gets a fresh random key.

Downgrade drops the table: the old code then derives K from SECRET_KEY again, which is right only
if SECRET_KEY is still the key the hashes were made with (true when the stored key was adopted
and SECRET_KEY was not rotated since).
"""

import hashlib
import hmac
import logging
import secrets
from collections.abc import Sequence
from datetime import UTC, datetime

import sqlalchemy as sa

from alembic import context, op
from app.migrations import MigrationRefused

revision: str = "0003_hashing_key"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

log = logging.getLogger("alembic.runtime.migration")
HASHING_KEY = "email_hash_key"
SAMPLE = 200


def _derived_key(secret_key: str) -> bytes:
    # Frozen copy of what app.security did before this revision.
    return hmac.new(secret_key.encode(), b"newsletter.email-hash.v1", hashlib.sha256).digest()


def _hash(key: bytes, address: str) -> str:
    return hmac.new(key, address.encode(), hashlib.sha256).hexdigest()


def _candidate_secret_keys() -> list[str]:
    keys = context.config.attributes.get("secret_keys")
    if keys is None:  # run by `alembic upgrade` rather than `newsletter migrate`
        from app.config import get_settings

        settings = get_settings()
        keys = [settings.secret_key, *settings.secret_key_fallback_list]
    return list(keys)


def _existing_key(connection: sa.Connection) -> bytes | None:
    """The key the existing hashes were made with; None when there is no subscriber."""
    subscribers = connection.execute(sa.text("SELECT count(*) FROM subscriber")).scalar_one()
    if not subscribers:
        return None
    sample = connection.execute(
        sa.text(
            "SELECT email, email_hash FROM subscriber WHERE email IS NOT NULL ORDER BY id LIMIT :n"
        ),
        {"n": SAMPLE},
    ).all()
    candidates = _candidate_secret_keys()
    if not sample:
        # Only erased subscribers: no address to check a key against. SECRET_KEY it is.
        log.warning(
            "every subscriber is erased: adopting the address-hashing key of SECRET_KEY "
            "unchecked (it must be the key the service ran with until now)"
        )
        return _derived_key(candidates[0])
    for secret_key in candidates:
        key = _derived_key(secret_key)
        if all(hmac.compare_digest(_hash(key, email.lower()), digest) for email, digest in sample):
            return key
    raise MigrationRefused(
        "the address hashes in this database were not made with SECRET_KEY (nor with any of "
        "SECRET_KEY_FALLBACKS): run `newsletter migrate` with the SECRET_KEY the service has "
        "been running with, so that every unsubscribed, bounced and erased address stays "
        "suppressed. Nothing was changed."
    )


def upgrade() -> None:
    connection = op.get_bind()
    key = _existing_key(connection) or secrets.token_bytes(32)
    table = op.create_table(
        "stored_secret",
        sa.Column("name", sa.String(length=64), nullable=False),
        sa.Column("value", sa.String(length=500), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("name"),
    )
    op.bulk_insert(
        table, [{"name": HASHING_KEY, "value": key.hex(), "created_at": datetime.now(UTC)}]
    )


def downgrade() -> None:
    op.drop_table("stored_secret")
