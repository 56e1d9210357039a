"""Signed, scoped tokens (confirm / unsubscribe / preferences), keyed address hashes and API-key hashing.

Two keys, two jobs. Links are signed with SECRET_KEY and still accepted when signed with one of
SECRET_KEY_FALLBACKS, so the signing key can be replaced. Address hashes use the hashing key kept
in the database (app.keys), which never changes: uniqueness and suppression must not depend on a
key that may have to be rotated.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import re
import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from itsdangerous import BadSignature, SignatureExpired, URLSafeSerializer, URLSafeTimedSerializer
from itsdangerous.encoding import base64_encode

# One salt per purpose: a token signed for one purpose never verifies for another.
CONFIRM_SALT = "newsletter.confirm.v1"
UNSUBSCRIBE_SALT = "newsletter.unsubscribe.v1"
PREFERENCES_SALT = "newsletter.preferences.v1"
API_KEY_PREFIX = "nl_"
LEGACY_EMAIL_HASH_INFO = b"newsletter.email-hash.v1"
CLICK_INFO = b"newsletter.click.v1"
CLICK_SEEN_INFO = b"newsletter.click-seen.v1"
OPEN_INFO = b"newsletter.open.v1"
# delivery.digest.position.signature (96 bits of HMAC-SHA256, base64url): short, since a digest
# copy holds one per link.
_OPEN_TOKEN = re.compile(r"^([0-9]{1,10})\.([0-9]{1,10})\.([A-Za-z0-9_-]{16})$")
_CLICK_TOKEN = re.compile(r"^([0-9]{1,10})\.([0-9]{1,10})\.([0-9]{1,3})\.([A-Za-z0-9_-]{16})$")

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


OPEN_POSITION = -2  # the click_count row of a digest's opens (TRACK_OPENS)


@dataclass(frozen=True, slots=True)
class ClickRef:
    """What a click link names: the copy (delivery), its digest and the link's position."""

    delivery_id: int
    digest_id: int
    position: int


def _click_signature(key: bytes, body: str) -> str:
    return base64.urlsafe_b64encode(hmac.digest(key, body.encode(), "sha256")[:12]).decode()


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
        self._unsubscribe_signing = _LinkSigner(self._unsubscribe)
        self._preferences_signing = _LinkSigner(self._preferences)
        self.confirm_max_age_seconds = confirm_max_age_seconds
        self.hashing_key = hashing_key
        # Click links are signed with HMAC directly rather than itsdangerous: a digest copy
        # carries one per article, made per reader in the sender's hot path (microseconds each).
        self._click_keys = [
            hmac.digest(key.encode(), CLICK_INFO, "sha256") for key in self._verifying_keys
        ]
        self._open_keys = [
            hmac.digest(key.encode(), OPEN_INFO, "sha256") for key in self._verifying_keys
        ]

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
        return self._unsubscribe_signing.dumps([subscriber_id, email_hash[:16]])

    def read_unsubscribe_token(self, token: str) -> tuple[int, str]:
        try:
            data = self._unsubscribe.loads(token)
        except BadSignature as exc:
            raise TokenError("the link is not valid") from exc
        return _pair(data)

    def click_token(self, delivery_id: int, digest_id: int, position: int) -> str:
        body = f"{delivery_id}.{digest_id}.{position}"
        return f"{body}.{_click_signature(self._click_keys[0], body)}"

    def read_click_token(self, token: str) -> ClickRef:
        match = _CLICK_TOKEN.match(token)
        if match is None:
            raise TokenError("the link is not valid")
        delivery, digest, position, signature = match.groups()
        body = f"{delivery}.{digest}.{position}"
        if not any(
            hmac.compare_digest(_click_signature(key, body), signature) for key in self._click_keys
        ):
            raise TokenError("the link is not valid")
        return ClickRef(int(delivery), int(digest), int(position))

    def open_token(self, delivery_id: int, digest_id: int) -> str:
        body = f"{delivery_id}.{digest_id}"
        return f"{body}.{_click_signature(self._open_keys[0], body)}"

    def read_open_token(self, token: str) -> ClickRef:
        """The copy an open pixel names (position: OPEN_POSITION)."""
        match = _OPEN_TOKEN.match(token)
        if match is None:
            raise TokenError("the link is not valid")
        delivery, digest, signature = match.groups()
        body = f"{delivery}.{digest}"
        if not any(
            hmac.compare_digest(_click_signature(key, body), signature) for key in self._open_keys
        ):
            raise TokenError("the link is not valid")
        return ClickRef(int(delivery), int(digest), OPEN_POSITION)

    def click_seen_tag(self, delivery_id: int, position: int) -> str:
        """A one-way tag of (copy, link): lets a reader count once without recording who. Keyed
        with the stored hashing key, which never rotates (counts stay unique across rotations)."""
        if self.hashing_key is None:
            raise HashingKeyMissing("the address-hashing key was not loaded from the database")
        key = hmac.digest(self.hashing_key, CLICK_SEEN_INFO, "sha256")
        body = f"{delivery_id}.{position}".encode()
        return hmac.digest(key, body, "sha256")[:12].hex()

    def preferences_token(self, subscriber_id: int, email_hash: str) -> str:
        return self._preferences_signing.dumps([subscriber_id, email_hash[:16]])

    def read_preferences_token(self, token: str) -> tuple[int, str]:
        try:
            data = self._preferences.loads(token)
        except BadSignature as exc:
            raise TokenError("the link is not valid") from exc
        return _pair(data)


class _LinkSigner:
    """Signs what `serializer.dumps` signs, in the same format, for every digest copy's
    unsubscribe and preferences links: the key is derived once and no zlib compression is
    tried (a 30-byte payload never shrinks). itsdangerous's `loads` reads these tokens, and
    dumps equals `serializer.dumps` whenever that does not compress (tests/test_security.py).
    itsdangerous took 50 µs a token here (half of it zlib), this 6 µs: two a copy, on the
    sender's hot path."""

    def __init__(self, serializer: URLSafeSerializer) -> None:
        signer = serializer.make_signer()
        self._key = signer.derive_key()
        self._algorithm = signer.algorithm
        self._sep = signer.sep

    def dumps(self, payload: list[int | str]) -> str:
        data = base64_encode(json.dumps(payload, separators=(",", ":")).encode())
        signature = base64_encode(self._algorithm.get_signature(self._key, data))
        return (data + self._sep + signature).decode("ascii")


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
