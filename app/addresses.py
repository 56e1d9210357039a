"""Addresses and names: validating, normalising, and making them safe for headers.

Every room that takes an address or a name from outside (signup, import, test copies, bounces)
goes through here, so an address is valid, sendable and compared the same way everywhere.

An address is kept as typed, except for its domain (lower-cased, punycode for an IDN): RFC 5321
says the local part is case-sensitive, so `Ghost4@…` is mailed as `Ghost4@…`. Two addresses that
differ only in case are the same reader: uniqueness and suppression use `address_key`.
"""

from __future__ import annotations

import base64
import functools
import re
from email.utils import formataddr

from email_validator import EmailNotValidError, validate_email

# C0 and C1 controls, DEL, and the Unicode line and paragraph separators: CR and LF split
# headers, and the email package treats every character `str.splitlines` breaks at (NEL,
# U+2028...) as a line break too; none has a place in an address or a name.
CONTROL_CHARACTERS = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]+")
MAX_ADDRESS_LENGTH = 320
MAX_NAME_LENGTH = 200


class InvalidEmail(ValueError):
    pass


def normalize_email(raw: str, *, check_deliverability: bool = False) -> str:
    """Validate syntax (and DNS if asked); return the sendable ASCII form: the local part as
    typed, the domain lower-cased (an internationalised domain becomes punycode, `xn--...`).

    A non-ASCII local part (`josé@...`) is refused: it can only be delivered with SMTPUTF8
    (RFC 6531), which the sender does not speak, so accepting it would queue undeliverable mail.
    """
    raw = raw.strip()
    if not raw:
        raise InvalidEmail("enter an email address")
    if len(raw) > MAX_ADDRESS_LENGTH or CONTROL_CHARACTERS.search(raw):
        raise InvalidEmail("this email address is not valid")
    if not check_deliverability:
        fast = _plain_address(raw)
        if fast is not None:
            return fast
    return _validated(raw, check_deliverability=check_deliverability)


# The common address, checked without email_validator's per-address domain work (IDNA/UTS-46
# checks of every character: 80% of a million-row import): a dot-atom local part (RFC 5322) and
# an ASCII domain validated once per domain. Anything else takes the library's path; a property
# test holds the two equal (tests/test_addresses.py).
_DOT_ATOM = re.compile(r"[a-zA-Z0-9_!#$%&'*+\-/=?^`{|}~]+(?:\.[a-zA-Z0-9_!#$%&'*+\-/=?^`{|}~]+)*\Z")
_LOCAL_MAX = 64
_ADDRESS_MAX = 254


def _plain_address(raw: str) -> str | None:
    """`raw` normalised, when it is a plain address the library would accept as it is; None
    when the library must decide (anything unusual, or invalid: it words the error)."""
    if not raw.isascii() or len(raw) > _ADDRESS_MAX or raw.count("@") != 1:
        return None
    local, _, domain = raw.partition("@")
    if len(local) > _LOCAL_MAX or not _DOT_ATOM.match(local) or "xn--" in domain.lower():
        return None
    ascii_domain = _valid_domain(domain)
    return None if ascii_domain is None else f"{local}@{ascii_domain}"


@functools.lru_cache(maxsize=4096)
def _valid_domain(domain: str) -> str | None:
    try:
        result = validate_email("a@" + domain, check_deliverability=False, allow_smtputf8=False)
    except EmailNotValidError:
        return None
    return result.ascii_domain.lower()


def _validated(raw: str, *, check_deliverability: bool) -> str:
    try:
        result = validate_email(
            raw, check_deliverability=check_deliverability, allow_smtputf8=False
        )
    except EmailNotValidError as exc:
        if not raw.rpartition("@")[0].isascii() and _valid_with_smtputf8(raw):
            raise InvalidEmail("this address needs SMTPUTF8, which is not supported") from exc
        raise InvalidEmail(str(exc)) from exc
    assert result.ascii_email is not None  # always set when SMTPUTF8 is not allowed
    local, _, domain = result.ascii_email.rpartition("@")
    return f"{local}@{domain.lower()}"


def address_key(address: str) -> str:
    """What identifies a reader: the address without regard to case (what the keyed hash is
    taken of). Mail providers treat local parts case-insensitively, and so do readers."""
    return address.strip().lower()


def _valid_with_smtputf8(raw: str) -> bool:
    try:
        validate_email(raw, check_deliverability=False, allow_smtputf8=True)
    except EmailNotValidError:
        return False
    return True


def clean_name(raw: str | None) -> str | None:
    """Names reach headers and bodies: control characters (CR/LF...) become spaces, runs of
    spaces one space, and an RFC 2047 opener `=?` is broken (see `header_safe`)."""
    if raw is None:
        return None
    name = header_safe(" ".join(CONTROL_CHARACTERS.sub(" ", raw).split()), max_length=200)
    return name or None


def header_safe(value: str, *, max_length: int = 900) -> str:
    """Collapse CR, LF and other control characters: no value can add or split a header.

    Also break RFC 2047 encoded-word openers: the email package decodes `=?utf-8?q?=0D=0A?=`
    when a header is set and writes the decoded CR LF out raw, a header injection; and a reader
    could otherwise name themselves with text that a mail client decodes into something else."""
    if not value.isprintable():  # isprintable() (C) is False for every control character
        value = CONTROL_CHARACTERS.sub(" ", value)
    return value.replace("=?", "= ?").strip()[:max_length]


# An encoded word is at most 75 characters (RFC 2047 section 2): "=?utf-8?b?" + "?=" leave 63
# characters of base64, which carry 45 bytes.
_WORD_BYTES = 45


def _encoded_words(text: str) -> str:
    """`text` as RFC 2047 base64 encoded words, each under 76 characters and holding whole
    characters, folded onto continuation lines (decoders join adjacent encoded words)."""
    words: list[bytes] = []
    chunk = b""
    for char in text:
        encoded = char.encode("utf-8")
        if len(chunk) + len(encoded) > _WORD_BYTES:
            words.append(chunk)
            chunk = b""
        chunk += encoded
    if chunk:
        words.append(chunk)
    return "\r\n ".join(f"=?utf-8?b?{base64.b64encode(word).decode('ascii')}?=" for word in words)


def format_address(name: str | None, email: str) -> str:
    """A ready header value `Name <address>`: an ASCII name quoted where RFC 5322 needs it, any
    other name RFC 2047-encoded. Safe to write after "To: " as it is; no further escaping
    (escaping an encoded word breaks it: that was the accented `To:` of every digest)."""
    clean = header_safe(name or "", max_length=MAX_NAME_LENGTH)
    if not clean:
        return email
    if clean.isascii():
        return formataddr((clean, email))
    return f"{_encoded_words(clean)} <{email}>"
