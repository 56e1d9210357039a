"""DKIM signing (RFC 6376) through OpenSSL, and key generation for `newsletter dkim generate`.

Sender usage (once per worker, then once per message, after the message is final):

    signer = DkimSigner.from_settings(settings)   # None when DKIM is not configured
    if signer is not None:
        message = signer.sign(message)

The keys are read and checked once, when the signer is built, so a missing or broken key stops
the worker at start with a message naming the setting, instead of failing every send.

Every message gets an rsa-sha256 signature, and an ed25519-sha256 one (RFC 8463) as well when
DKIM_ED25519_PRIVATE_KEY_PATH is set; both relaxed/relaxed, over the same headers, with the
body hashed once. The canonicalisation is written here because it is the specification itself
(a few lines of RFC 6376 3.4.2 and 3.4.4) and dkimpy has no fast path; the signatures are
OpenSSL's, through `cryptography`. tests/test_dkim.py holds the canonicalisation equal to
dkimpy's on arbitrary input and has dkimpy verify thousands of signed messages.

Cost on one core (bench/dkim.py): about 0.4 ms per message for RSA-2048, most of it OpenSSL's
private-key operation (which releases the GIL); Ed25519 adds about 0.05 ms.
"""

from __future__ import annotations

import base64
import hashlib
import os
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, padding, rsa

from app.config import Settings

# Always signed (a header listed but absent is signed as absent, so it cannot be added later:
# a confirmation email has no List-Unsubscribe and nobody can graft one on).
SIGNED_HEADERS = (
    "From",
    "To",
    "Subject",
    "Date",
    "Message-ID",
    "List-Unsubscribe",
    "List-Unsubscribe-Post",
)
# Signed when the message has them.
SIGNED_IF_PRESENT = ("MIME-Version", "Content-Type", "List-Id", "Reply-To", "Auto-Submitted")
MIN_RSA_BITS = 1024  # RFC 8301 3.2: verifiers refuse smaller keys; 2048 is what we generate
ED25519_SELECTOR_SUFFIX = "-ed25519"

# One header field: its name, then its value with any folded continuation lines (CRLF only).
_FIELD = re.compile(rb"^([!-9;-~]+):([^\r\n]*(?:\r\n[ \t][^\r\n]*)*)\r\n", re.MULTILINE)
_LINE_END = re.compile(rb"\r\n|\r|\n")
_SPACE_RUN = re.compile(rb"  +")
# RFC 6376 3.1 selector and 3.5 d= tag: dot-separated DNS labels, ASCII (A-labels for IDNs).
_LABELS = re.compile(
    r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*"
)
_FOLD_AT = 76  # DKIM-Signature lines stay under 78 characters (RFC 5322 2.1.1)
_B64_CHUNK = 64
_PKCS1V15 = padding.PKCS1v15()
_SHA256 = hashes.SHA256()


class DkimConfigError(ValueError):
    """DKIM settings that cannot work (missing key file, unreadable key, half the settings)."""


class KeyAlgorithm(StrEnum):
    rsa = "rsa"
    ed25519 = "ed25519"


# --- Canonicalisation (RFC 6376 3.4) ------------------------------------------------------------


def relaxed_header(name: bytes, value: bytes) -> bytes:
    """3.4.2: lowercase name; value unfolded, WSP runs made one space, trimmed; CRLF after."""
    value = _collapse_wsp(value.replace(b"\r\n", b"")).strip(b" ")
    return name.lower().rstrip(b" \t") + b":" + value + b"\r\n"


def _collapse_wsp(text: bytes) -> bytes:
    """Every run of spaces and tabs made one space. Tabs first (bytes.replace), then runs of
    spaces with a regex that starts with a literal, which the engine searches fast; a regex
    for both ([ \t]{2,}|\t) tries every space of a 25 KB body and is ten times slower."""
    if b"\t" in text:
        text = text.replace(b"\t", b" ")
    if b"  " in text:
        text = _SPACE_RUN.sub(b" ", text)
    return text


def relaxed_body(body: bytes) -> bytes:
    """3.4.4: WSP runs made one space, none at line ends, no empty lines at the end.

    Line ends are CRLF, the only ones on the wire (see `wire_form`). A digest copy is
    quoted-printable, which never leaves whitespace at a line end, and rarely has runs of it,
    so the usual case is three scans and no copy."""
    body = _collapse_wsp(body)
    if b" \r\n" in body:
        body = body.replace(b" \r\n", b"\r\n")
    end = len(body)
    while body.endswith(b"\r\n", 0, end):
        end -= 2
    if end == 0:
        return b""  # an empty body (or only empty lines) hashes as nothing
    if end == len(body) - 2:
        return body  # exactly one line end at the end: nothing to drop
    return body[:end] + b"\r\n"


def wire_form(message: bytes) -> bytes:
    """The message as it goes on the wire: CRLF line ends only, one at the end. What is
    signed is then exactly what is sent (a bare LF would be turned into CRLF by the SMTP
    client after signing, and the body hash would no longer match)."""
    crlf = message.count(b"\r\n")
    if message.count(b"\n") != crlf or message.count(b"\r") != crlf:
        message = _LINE_END.sub(b"\r\n", message)
    if not message.endswith(b"\r\n"):
        message += b"\r\n"
    return message


# --- Keys ---------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SigningKey:
    """One private key and the selector under which its public half is published."""

    selector: str
    private_key: rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey
    setting: str  # the setting it was read from, for messages

    @property
    def algorithm(self) -> KeyAlgorithm:
        if isinstance(self.private_key, rsa.RSAPrivateKey):
            return KeyAlgorithm.rsa
        return KeyAlgorithm.ed25519

    @property
    def signature_algorithm(self) -> bytes:  # the a= tag
        return b"rsa-sha256" if self.algorithm is KeyAlgorithm.rsa else b"ed25519-sha256"

    @property
    def description(self) -> str:
        if isinstance(self.private_key, rsa.RSAPrivateKey):
            return f"rsa-sha256, {self.private_key.key_size} bits"
        return "ed25519-sha256"

    def public_key_bytes(self) -> bytes:
        """What the DNS record's p= holds: RSA's SubjectPublicKeyInfo (DER), as OpenDKIM and
        dkimpy publish it; Ed25519's raw 32-byte key (RFC 8463 4.2)."""
        public = self.private_key.public_key()
        if isinstance(public, rsa.RSAPublicKey):
            return public.public_bytes(
                serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
            )
        return public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)

    def dns_record_value(self) -> str:
        p = base64.b64encode(self.public_key_bytes()).decode()
        return f"v=DKIM1; k={self.algorithm.value}; p={p}"

    def sign(self, data: bytes) -> bytes:
        if isinstance(self.private_key, rsa.RSAPrivateKey):
            return self.private_key.sign(data, _PKCS1V15, _SHA256)
        # RFC 8463 3: Ed25519 signs the SHA-256 digest of the signed data (PureEdDSA).
        return self.private_key.sign(hashlib.sha256(data).digest())


def load_signing_key(
    data: bytes, *, selector: str, algorithm: KeyAlgorithm, setting: str
) -> SigningKey:
    """Parse a private key file's content; every refusal names the setting to fix."""
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except TypeError as exc:  # a password-protected key
        raise DkimConfigError(
            f"{setting}: the key is encrypted; DKIM needs it unencrypted"
        ) from exc
    except (ValueError, UnsupportedAlgorithm) as exc:
        if algorithm is KeyAlgorithm.ed25519 and (raw := _raw_ed25519_seed(data)) is not None:
            # dkimpy's dknewkey and rspamd write an Ed25519 key as the base64 of its 32 bytes.
            key = ed25519.Ed25519PrivateKey.from_private_bytes(raw)
        else:
            kind = "RSA" if algorithm is KeyAlgorithm.rsa else "Ed25519"
            reason = "unreadable key data" if b"-----BEGIN" in data else "no PEM block"
            raise DkimConfigError(f"{setting}: not a PEM {kind} private key ({reason})") from exc
    if algorithm is KeyAlgorithm.rsa:
        if isinstance(key, ed25519.Ed25519PrivateKey):
            raise DkimConfigError(
                f"{setting}: an Ed25519 key, not RSA; set it as DKIM_ED25519_PRIVATE_KEY_PATH, "
                "next to an RSA key (most receivers verify only RSA)"
            )
        if not isinstance(key, rsa.RSAPrivateKey):
            raise DkimConfigError(f"{setting}: not a PEM RSA private key ({type(key).__name__})")
        if key.key_size < MIN_RSA_BITS:
            raise DkimConfigError(
                f"{setting}: an RSA key of {key.key_size} bits; receivers refuse less than "
                f"{MIN_RSA_BITS} (RFC 8301); generate a 2048-bit one"
            )
    elif not isinstance(key, ed25519.Ed25519PrivateKey):
        raise DkimConfigError(f"{setting}: not an Ed25519 private key ({type(key).__name__})")
    return SigningKey(selector=selector, private_key=key, setting=setting)


def _raw_ed25519_seed(data: bytes) -> bytes | None:
    try:
        raw = base64.b64decode(b"".join(data.split()), validate=True)
    except ValueError:
        return None
    return raw if len(raw) == 32 else None


def _read_key(path: Path, *, selector: str, algorithm: KeyAlgorithm, setting: str) -> SigningKey:
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise DkimConfigError(f"{setting}: cannot read {path}: {exc.strerror or exc}") from exc
    return load_signing_key(data, selector=selector, algorithm=algorithm, setting=setting)


def valid_dns_labels(value: str) -> bool:
    return len(value) <= 253 and _LABELS.fullmatch(value) is not None


def default_ed25519_selector(rsa_selector: str) -> str:
    return f"{rsa_selector}{ED25519_SELECTOR_SUFFIX}"


# --- Signing ------------------------------------------------------------------------------------


class DkimSigner:
    """Signs with every configured key: RSA, then Ed25519 if set. Thread-safe (no state
    changes after construction but a small cache), so the sender may sign off the loop."""

    def __init__(self, *, domain: str, keys: Sequence[SigningKey]) -> None:
        if not keys:
            raise DkimConfigError("DKIM needs at least one key")
        if not valid_dns_labels(domain):
            raise DkimConfigError(
                f"DKIM_DOMAIN: {domain!r} is not a domain name (ASCII labels; an "
                "internationalised domain in its xn-- form)"
            )
        for key in keys:
            if not valid_dns_labels(key.selector):
                setting = (
                    "DKIM_SELECTOR"
                    if key.algorithm is KeyAlgorithm.rsa
                    else "DKIM_ED25519_SELECTOR"
                )
                raise DkimConfigError(
                    f"{setting}: {key.selector!r} is not a DKIM selector "
                    "(letters, digits, '-', dot-separated)"
                )
        if len({key.selector.lower() for key in keys}) != len(keys):
            raise DkimConfigError(
                "DKIM_ED25519_SELECTOR: must differ from DKIM_SELECTOR "
                "(each key is published in its own DNS record)"
            )
        self.domain = domain
        self.keys = tuple(keys)
        self._fixed = [
            [
                (b"v", b"1"),
                (b"a", key.signature_algorithm),
                (b"c", b"relaxed/relaxed"),
                (b"d", domain.encode("ascii")),
                (b"s", key.selector.encode("ascii")),
            ]
            for key in keys
        ]
        self._plans: dict[tuple[frozenset[bytes], int], _Plan] = {}

    @classmethod
    def from_settings(cls, settings: Settings) -> DkimSigner | None:
        """The signer, or None when DKIM is off (none of the DKIM settings set)."""
        values = {
            "DKIM_DOMAIN": settings.dkim_domain,
            "DKIM_SELECTOR": settings.dkim_selector,
            "DKIM_PRIVATE_KEY_PATH": settings.dkim_private_key_path,
        }
        ed25519_path = settings.dkim_ed25519_private_key_path
        if not any(values.values()) and not ed25519_path:
            if settings.dkim_ed25519_selector:
                raise DkimConfigError(
                    "DKIM_ED25519_SELECTOR is set without DKIM_ED25519_PRIVATE_KEY_PATH"
                )
            return None
        missing = [name for name, value in values.items() if not value]
        if missing:
            if not any(values.values()):
                raise DkimConfigError(
                    "DKIM_ED25519_PRIVATE_KEY_PATH is set but RSA signing is not: set "
                    f"{', '.join(missing)} as well (Ed25519 signs next to RSA, not instead: "
                    "most receivers verify only RSA)"
                )
            raise DkimConfigError(f"DKIM is half configured: set {', '.join(missing)} as well")
        selector = str(settings.dkim_selector)
        keys = [
            _read_key(
                Path(str(settings.dkim_private_key_path)),
                selector=selector,
                algorithm=KeyAlgorithm.rsa,
                setting="DKIM_PRIVATE_KEY_PATH",
            )
        ]
        if ed25519_path:
            keys.append(
                _read_key(
                    Path(ed25519_path),
                    selector=settings.dkim_ed25519_selector or default_ed25519_selector(selector),
                    algorithm=KeyAlgorithm.ed25519,
                    setting="DKIM_ED25519_PRIVATE_KEY_PATH",
                )
            )
        elif settings.dkim_ed25519_selector:
            raise DkimConfigError(
                "DKIM_ED25519_SELECTOR is set without DKIM_ED25519_PRIVATE_KEY_PATH"
            )
        return cls(domain=str(settings.dkim_domain), keys=keys)

    def sign(self, message: bytes, *, wire_ready: bool = False) -> bytes:
        """The message with one DKIM-Signature header per key in front, CRLF line ends.

        Wire-safe: nothing in the added headers starts a line with "." and the message itself
        is unchanged when it already has CRLF line ends and ends with one (a MessageTemplate
        copy), so a copy that needed no dot-stuffing still needs none. `wire_ready` (the
        caller knows it is such a copy) skips the three scans that check the line ends, about
        a sixth of the cost besides the signatures themselves."""
        if not wire_ready:
            message = wire_form(message)
        if message.startswith(b"\r\n"):
            head, body = b"", message[2:]
        else:
            split = message.find(b"\r\n\r\n")
            head, body = (
                (message, b"") if split < 0 else (message[: split + 2], message[split + 4 :])
            )
        fields: dict[bytes, list[tuple[bytes, bytes]]] = {}
        for name, value in _FIELD.findall(head):
            fields.setdefault(name.lower(), []).append((name, value))
        timestamp = str(int(time.time())).encode()
        plan = self._plan(frozenset(fields), len(timestamp))
        signed = []
        for name in plan.names:
            instances = fields.get(name)
            if instances:  # RFC 6376 5.4.2: the last instance first, each used once
                signed.append(relaxed_header(*instances.pop()))
        signed_headers = b"".join(signed)
        body_hash = base64.b64encode(hashlib.sha256(relaxed_body(body)).digest())
        out = []
        for key, layout in zip(self.keys, plan.layouts, strict=True):
            h0, h1, h2 = layout.header
            c0, c1, c2 = layout.canonical
            # 3.7: the signature header itself is hashed last, b= empty, without its CRLF.
            signature = key.sign(b"".join((signed_headers, c0, timestamp, c1, body_hash, c2)))
            b64 = _fold_base64(base64.b64encode(signature), layout.column)
            out.append(b"".join((h0, timestamp, h1, body_hash, h2, b64, b"\r\n")))
        out.append(message)
        return b"".join(out)

    def _plan(self, present: frozenset[bytes], timestamp_length: int) -> _Plan:
        """The h= list for a message with these headers, and each key's header folded around
        the t= and bh= values: the same for every copy of a digest, so built once."""
        plan = self._plans.get((present, timestamp_length))
        if plan is None:
            names = tuple(h.lower().encode() for h in SIGNED_HEADERS) + tuple(
                h.lower().encode() for h in SIGNED_IF_PRESENT if h.lower().encode() in present
            )
            layouts = tuple(_layout(fixed, names, timestamp_length) for fixed in self._fixed)
            plan = _Plan(names, layouts)
            if len(self._plans) < 64:
                self._plans[(present, timestamp_length)] = plan
        return plan


@dataclass(frozen=True, slots=True)
class _Layout:
    header: tuple[bytes, bytes, bytes]  # the header up to "b=", split at the t= and bh= values
    canonical: tuple[bytes, bytes, bytes]  # its relaxed form, as hashed
    column: int  # length of its last line


@dataclass(frozen=True, slots=True)
class _Plan:
    names: tuple[bytes, ...]
    layouts: tuple[_Layout, ...]


def _layout(fixed: list[tuple[bytes, bytes]], names: tuple[bytes, ...], t_length: int) -> _Layout:
    # Stand-ins of the right length (t= is 10 digits until 2286, bh= 44 base64 characters),
    # of characters that appear nowhere else and that canonicalisation leaves alone.
    t_mark, bh_mark = b"\x00" * t_length, b"\x01" * 44
    h_pieces = [n + b":" for n in names[:-1]] + [names[-1]]
    tags: list[tuple[bytes, bytes | list[bytes]]] = [
        *fixed,
        (b"t", t_mark),
        (b"h", h_pieces),
        (b"bh", bh_mark),
        (b"b", b""),
    ]
    lines, column = _fold_tags(tags)
    header = b"".join(lines)
    canonical = relaxed_header(b"DKIM-Signature", header[len(b"DKIM-Signature:") :])[:-2]

    def split(text: bytes) -> tuple[bytes, bytes, bytes]:
        before, rest = text.split(t_mark)
        middle, after = rest.split(bh_mark)
        return before, middle, after

    return _Layout(split(header), split(canonical), column)


def _fold_tags(tags: list[tuple[bytes, bytes | list[bytes]]]) -> tuple[list[bytes], int]:
    """`DKIM-Signature: t=v; t=v; ... b=` folded before a tag, or inside a list value (after a
    colon of h=: FWS is allowed there, RFC 6376 3.5). The lines (each but the last with its
    CRLF) and the last line's length."""
    lines: list[bytes] = []
    line = b"DKIM-Signature:"
    for number, (tag, value) in enumerate(tags, 1):
        pieces = [value] if isinstance(value, bytes) else value
        tokens = [tag + b"=" + pieces[0], *pieces[1:]]
        if number < len(tags):
            tokens[-1] += b";"
        for index, token in enumerate(tokens):
            gap = b" " if index == 0 else b""
            if len(line) + len(gap) + len(token) > _FOLD_AT and line.strip():
                lines.append(line + b"\r\n")
                line = b" " + token
            else:
                line += gap + token
    lines.append(line)
    return lines, len(line)


def _fold_base64(b64: bytes, column: int) -> bytes:
    """The signature after "b=", in chunks folded with FWS so no line passes _FOLD_AT."""
    first = max(0, _FOLD_AT - column)
    parts = [b64[:first]]
    parts += [b"\r\n " + b64[i : i + _B64_CHUNK] for i in range(first, len(b64), _B64_CHUNK)]
    return b"".join(parts)


# --- Key generation -----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class GeneratedKey:
    private_key_path: Path
    public_key_path: Path
    record_name: str  # e.g. nl2025._domainkey.example.org
    record_value: str  # v=DKIM1; k=rsa; p=...


def generate_key(
    *,
    domain: str,
    selector: str,
    out_dir: Path,
    algorithm: KeyAlgorithm = KeyAlgorithm.rsa,
    bits: int = 2048,
) -> GeneratedKey:
    """Write `<selector>.private.pem` (PKCS#8, mode 0600) and `<selector>.public.pem` under
    out_dir; the private key file is created readable by its owner only, never overwritten."""
    private_key: rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey
    if algorithm is KeyAlgorithm.rsa:
        private_key = rsa.generate_private_key(public_exponent=65537, key_size=bits)
    else:
        private_key = ed25519.Ed25519PrivateKey.generate()
    key = SigningKey(selector=selector, private_key=private_key, setting="")
    out_dir.mkdir(parents=True, exist_ok=True)
    private_path = out_dir / f"{selector}.private.pem"
    public_path = out_dir / f"{selector}.public.pem"
    private_pem = private_key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    public_pem = private_key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    try:
        fd = os.open(private_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError as exc:
        raise DkimConfigError(
            f"{private_path} already exists; remove it or choose a new selector"
        ) from exc
    with os.fdopen(fd, "wb") as handle:
        handle.write(private_pem)
    public_path.write_bytes(public_pem)
    return GeneratedKey(
        private_key_path=private_path,
        public_key_path=public_path,
        record_name=f"{selector}._domainkey.{domain}",
        record_value=key.dns_record_value(),
    )
