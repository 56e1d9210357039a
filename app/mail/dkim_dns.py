"""`newsletter dkim check`: is each signing key's public half published where receivers look?

Receivers fetch `<selector>._domainkey.<domain>` (TXT) and verify with the key they find there
(RFC 6376 3.6.2.2); a key that is missing, malformed or stale fails every message. This asks
DNS (dnspython) for each configured key and compares the published key with the private one.
"""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass

import dns.exception
import dns.nameserver
import dns.resolver
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from app.mail.dkim import KeyAlgorithm, SigningKey


@dataclass(frozen=True, slots=True)
class KeyCheck:
    key: SigningKey
    record_name: str
    ok: bool
    message: str  # one line, for people
    unreachable: bool = False  # DNS did not answer: nothing is known about the record


class MalformedRecord(ValueError):
    pass


class NoResolver(Exception):
    """The system has no usable DNS configuration (no /etc/resolv.conf, say)."""


def make_resolver(nameserver: str | None = None, *, timeout: float = 5.0) -> dns.resolver.Resolver:
    """The system's resolver, or one that asks only `nameserver` ("IP" or "IP:port",
    "[IPv6]:port"; ValueError otherwise). EDNS0 so that a 2048-bit key's record (~420 bytes)
    fits in a UDP answer."""
    if nameserver is None:
        try:
            resolver = dns.resolver.Resolver()
        except (dns.exception.DNSException, OSError) as exc:
            raise NoResolver(str(exc)) from exc
    else:
        host, port = parse_nameserver(nameserver)
        resolver = dns.resolver.Resolver(configure=False)
        resolver.nameservers = [dns.nameserver.Do53Nameserver(host, port)]
    resolver.use_edns(0, 0, 1232)
    resolver.lifetime = timeout
    resolver.timeout = timeout
    return resolver


def parse_nameserver(value: str) -> tuple[str, int]:
    """ "192.0.2.53" or "192.0.2.53:5353" or "[2001:db8::53]:5353"; ValueError otherwise."""
    import ipaddress

    host, port = value, 53
    if value.startswith("["):
        host, _, rest = value[1:].partition("]")
        if rest:
            if not rest.startswith(":"):
                raise ValueError(f"{value!r}: expected [IPv6]:port")
            port = int(rest[1:])
    elif value.count(":") == 1:
        host, _, port_text = value.partition(":")
        port = int(port_text)
    ipaddress.ip_address(host)  # a name would need a resolver to find the resolver
    if not 0 < port < 65536:
        raise ValueError(f"port {port} out of range")
    return host, port


def parse_key_record(text: str) -> dict[str, str]:
    """RFC 6376 3.6.1 tag=value list; whitespace inside values (folded p=) removed."""
    tags: dict[str, str] = {}
    for number, item in enumerate(text.split(";")):
        if not item.strip():
            continue
        name, equals, value = item.partition("=")
        name = name.strip()
        if not equals or not name:
            raise MalformedRecord(f"{item.strip()!r} is not tag=value")
        if name in tags:
            raise MalformedRecord(f"the tag {name}= appears twice")
        if name == "v" and number != 0:
            raise MalformedRecord("v= must come first")
        tags[name] = "".join(value.split())
    return tags


def check_record(key: SigningKey, text: str) -> tuple[bool, str]:
    """Whether a published record carries `key`'s public key; a reason when not."""
    try:
        tags = parse_key_record(text)
    except MalformedRecord as exc:
        return False, f"malformed record: {exc}"
    if tags.get("v", "DKIM1") != "DKIM1":
        return False, f"malformed record: v={tags['v']} (expected v=DKIM1)"
    if "p" not in tags:
        return False, "malformed record: no p= (public key) tag"
    published_type = tags.get("k", "rsa")
    if published_type != key.algorithm.value:
        return False, f"the record is for k={published_type}, the key is {key.algorithm.value}"
    if "h" in tags and "sha256" not in tags["h"].split(":"):
        return False, f"h={tags['h']} does not allow sha256"
    if "s" in tags and not {"*", "email"} & set(tags["s"].split(":")):
        return False, f"s={tags['s']}: not for email"
    if not tags["p"]:
        return False, "the record has an empty p=: the key is revoked"
    try:
        published = base64.b64decode(tags["p"], validate=True)
    except binascii.Error:
        return False, "malformed record: p= is not base64"
    if key.algorithm is KeyAlgorithm.rsa:
        try:
            public = serialization.load_der_public_key(published)
        except ValueError:
            return False, "malformed record: p= is not an RSA public key"
        own = key.private_key.public_key()
        if not isinstance(public, rsa.RSAPublicKey) or not isinstance(own, rsa.RSAPublicKey):
            return False, "malformed record: p= is not an RSA public key"
        matches = public.public_numbers() == own.public_numbers()
    else:
        if len(published) != 32:
            return False, "malformed record: p= is not a 32-byte Ed25519 key"
        matches = published == key.public_key_bytes()
    if not matches:
        return False, "the published key does not match the private key"
    testing = " (t=y: receivers are told this domain is testing DKIM)" if _testing(tags) else ""
    return True, f"the published key matches{testing}"


def _testing(tags: dict[str, str]) -> bool:
    return "y" in tags.get("t", "").split(":")


def check_published_key(
    key: SigningKey, *, domain: str, resolver: dns.resolver.Resolver
) -> KeyCheck:
    name = f"{key.selector}._domainkey.{domain}"

    def result(ok: bool, message: str) -> KeyCheck:
        return KeyCheck(key=key, record_name=name, ok=ok, message=message)

    def unreachable(reason: str) -> KeyCheck:
        message = f"DNS cannot be reached: {reason}, not checked"
        return KeyCheck(key=key, record_name=name, ok=False, message=message, unreachable=True)

    try:
        answer = resolver.resolve(name, "TXT", search=False)
    except dns.resolver.NXDOMAIN:
        return result(False, "no such name in DNS (NXDOMAIN): the record is not published")
    except dns.resolver.NoAnswer:
        return result(False, "no TXT record at this name: the record is not published")
    except dns.resolver.LifetimeTimeout:
        return unreachable(f"no answer within {resolver.lifetime:g}s")
    except dns.resolver.NoNameservers as exc:
        return unreachable(_first_error(exc))
    except dns.exception.DNSException as exc:
        return unreachable(str(exc))
    # A TXT record may be split in strings of at most 255 bytes: they are one value (3.6.2.2).
    records = [b"".join(rdata.strings).decode("ascii", "replace") for rdata in answer]
    keys = [r for r in records if "p=" in r or r.lstrip().startswith("v=DKIM1")]
    if not keys:
        return result(False, f"malformed record: no DKIM key in {len(records)} TXT record(s)")
    if len(keys) > 1:
        return result(False, f"{len(keys)} DKIM records at this name: publish exactly one")
    ok, message = check_record(key, keys[0])
    return result(ok, message)


def _first_error(exc: dns.resolver.NoNameservers) -> str:
    errors = exc.kwargs.get("errors") or []
    for server, _tcp, _port, error, *_ in errors:
        where = str(server).removeprefix("Do53:").replace("@", ":")
        return f"{where} answered {error}" if isinstance(error, str) else f"{where}: {error}"
    return str(exc)
