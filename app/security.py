"""Signed, scoped tokens (confirm / unsubscribe), keyed address hashes and API-key hashing."""

from __future__ import annotations

import hashlib
import hmac
import secrets

from itsdangerous import BadSignature, SignatureExpired, URLSafeSerializer, URLSafeTimedSerializer

# One salt per purpose: a token signed for one purpose never verifies for another.
CONFIRM_SALT = "newsletter.confirm.v1"
UNSUBSCRIBE_SALT = "newsletter.unsubscribe.v1"
API_KEY_PREFIX = "nl_"


class TokenError(Exception):
    """A token that is forged, truncated, of another purpose or bound to someone else."""


class TokenExpired(TokenError):
    pass


class Tokens:
    def __init__(self, secret_key: str, *, confirm_max_age_seconds: int) -> None:
        self._secret = secret_key
        self._confirm = URLSafeTimedSerializer(secret_key, salt=CONFIRM_SALT)
        # Unsubscribe links never expire: a link in a two-year-old email must still work.
        self._unsubscribe = URLSafeSerializer(secret_key, salt=UNSUBSCRIBE_SALT)
        self.confirm_max_age_seconds = confirm_max_age_seconds

    def email_hash(self, normalized_email: str) -> str:
        """Keyed hash of an address: lets suppression outlive erasure without keeping the address."""
        key = hmac.new(self._secret.encode(), b"newsletter.email-hash.v1", hashlib.sha256).digest()
        return hmac.new(key, normalized_email.encode(), hashlib.sha256).hexdigest()

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
