"""Signed, scoped tokens (confirm / unsubscribe / preferences), keyed address hashes and API-key hashing.

Two keys, two jobs. Links are signed with SECRET_KEY and still accepted when signed with one of
SECRET_KEY_FALLBACKS, so the signing key can be replaced. Address hashes use the hashing key kept
in the database (app.keys), which never changes: uniqueness and suppression must not depend on a
key that may have to be rotated.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from collections.abc import Sequence
from typing import TYPE_CHECKING

from itsdangerous import BadSignature, SignatureExpired, URLSafeSerializer, URLSafeTimedSerializer

# One salt per purpose: a token signed for one purpose never verifies for another.
CONFIRM_SALT = "newsletter.confirm.v1"
UNSUBSCRIBE_SALT = "newsletter.unsubscribe.v1"
PREFERENCES_SALT = "newsletter.preferences.v1"
API_KEY_PREFIX = "nl_"
LEGACY_EMAIL_HASH_INFO = b"newsletter.email-hash.v1"

if TYPE_CHECKING:
    from app.config import Settings


class TokenError(Exception):
    """A token that is forged, truncated, of another purpose or bound to someone else."""


class TokenExpired(TokenError):
    pass


class HashingKeyMissing(RuntimeError):
    """The address-hashing key has not been loaded from the database (app.keys)."""


def legacy_hashing_key(secret_key: str) -> bytes:
    """The hashing key that releases before the stored one derived from SECRET_KEY (used once,
    by the migration that stores the key)."""
    return hmac.new(secret_key.encode(), LEGACY_EMAIL_HASH_INFO, hashlib.sha256).digest()


def message_id_tag(secret_key: str, delivery_id: int) -> str:
    """The keyed tag in our Message-IDs (app.outbox.identity.message_id_for)."""
    return hashlib.sha256(f"{secret_key}:{delivery_id}".encode()).hexdigest()[:10]


def verp_tag(secret_key: str, delivery_id: int) -> str:
    """The keyed tag in a VERP envelope sender (app.outbox.identity.verp_sender). 40 bits:
    guessing one takes a trillion tries, each an email to the bounce mailbox."""
    digest = hmac.new(secret_key.encode(), f"newsletter.verp.v1:{delivery_id}".encode(), "sha256")
    return digest.hexdigest()[:10]


class Tokens:
    def __init__(
        self,
        secret_key: str,
        *,
        confirm_max_age_seconds: int,
        fallback_keys: Sequence[str] = (),
        hashing_key: bytes | None = None,
    ) -> None:
        # itsdangerous signs with the last key of the list and verifies with each, newest first.
        keys = [*reversed(fallback_keys), secret_key]
        self._verifying_keys = (secret_key, *fallback_keys)
        self._confirm = URLSafeTimedSerializer(keys, salt=CONFIRM_SALT)
        # Unsubscribe links never expire: a link in a two-year-old email must still work.
        self._unsubscribe = URLSafeSerializer(keys, salt=UNSUBSCRIBE_SALT)
        # Nor do preferences links (every digest's footer carries one).
        self._preferences = URLSafeSerializer(keys, salt=PREFERENCES_SALT)
        self.confirm_max_age_seconds = confirm_max_age_seconds
        self.hashing_key = hashing_key

    @classmethod
    def from_settings(cls, settings: Settings, *, hashing_key: bytes | None = None) -> Tokens:
        return cls(
            settings.secret_key,
            confirm_max_age_seconds=settings.confirm_token_max_age_days * 86400,
            fallback_keys=settings.secret_key_fallback_list,
            hashing_key=hashing_key,
        )

    def email_hash(self, normalized_email: str) -> str:
        """Keyed hash of an address: lets suppression outlive erasure without keeping the address."""
        if self.hashing_key is None:
            raise HashingKeyMissing("the address-hashing key was not loaded from the database")
        return hmac.new(self.hashing_key, normalized_email.encode(), hashlib.sha256).hexdigest()

    def is_our_message_id_tag(self, delivery_id: int, tag: str) -> bool:
        """Whether a Message-ID tag was made by us, with the current key or a former one."""
        return any(
            hmac.compare_digest(message_id_tag(key, delivery_id), tag)
            for key in self._verifying_keys
        )

    def is_our_verp_tag(self, delivery_id: int, tag: str) -> bool:
        """Whether a VERP tag was made by us, with the current key or a former one."""
        return any(
            hmac.compare_digest(verp_tag(key, delivery_id), tag.lower())
            for key in self._verifying_keys
        )

    # The token binds the subscriber id to a short tag of the address hash, so a token issued
    # before an erasure cannot confirm a later, different sign-up that reused nothing but the id.
    def confirm_token(self, subscriber_id: int, email_hash: str) -> str:
        return self._confirm.dumps([subscriber_id, email_hash[:16]])

    def read_confirm_token(self, token: str) -> tuple[int, str]:
        try:
            data = self._confirm.loads(token, max_age=self.confirm_max_age_seconds)
        except SignatureExpired as exc:
            raise TokenExpired("the confirmation link has expired") from exc
        except BadSignature as exc:
            raise TokenError("the link is not valid") from exc
        return _pair(data)

    def unsubscribe_token(self, subscriber_id: int, email_hash: str) -> str:
        return self._unsubscribe.dumps([subscriber_id, email_hash[:16]])

    def read_unsubscribe_token(self, token: str) -> tuple[int, str]:
        try:
            data = self._unsubscribe.loads(token)
        except BadSignature as exc:
            raise TokenError("the link is not valid") from exc
        return _pair(data)

    def preferences_token(self, subscriber_id: int, email_hash: str) -> str:
        return self._preferences.dumps([subscriber_id, email_hash[:16]])

    def read_preferences_token(self, token: str) -> tuple[int, str]:
        try:
            data = self._preferences.loads(token)
        except BadSignature as exc:
            raise TokenError("the link is not valid") from exc
        return _pair(data)


def _pair(data: object) -> tuple[int, str]:
    if (
        isinstance(data, list)
        and len(data) == 2
        and isinstance(data[0], int)
        and isinstance(data[1], str)
    ):
        return data[0], data[1]
    raise TokenError("the link is not valid")


def new_api_key() -> str:
    return API_KEY_PREFIX + secrets.token_urlsafe(32)


def hash_api_key(key: str) -> str:
    # API keys carry 256 bits of randomness, so SHA-256 (not a slow password hash) is enough.
    return hashlib.sha256(key.encode()).hexdigest()
