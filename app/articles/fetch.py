"""Fetch a feed over HTTP without becoming a way into the private network (SSRF).

Every hop (the URL, then each redirect, followed here and bounded) is resolved first; if any
address the name resolves to is loopback, private, link-local, reserved, multicast or
unspecified, nothing is sent, unless FEED_ALLOW_PRIVATE_NETWORKS is set. The connection then
goes to the address that was checked (no second lookup a DNS rebinding could answer
differently), with the Host header and the TLS server name of the URL. Every failure to fetch
(refused address, no such host, connection refused, timeout, TLS) gives the same error text, so
the endpoint cannot be used to map hosts and ports; the log keeps the cause.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import socket
import ssl
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import httpx

if TYPE_CHECKING:
    from app.config import Settings

log = logging.getLogger("app.articles.fetch")

FETCH_TIMEOUT_SECONDS = 20.0
DEFAULT_MAX_ITEMS = 500
MAX_FEED_BYTES = 10_000_000
MAX_REDIRECTS = 5
USER_AGENT = "newsletter/0.1 (+feed import)"
UNREACHABLE = "the feed could not be fetched (no answer, no such host, or an address not allowed)"
_REDIRECTS = {301, 302, 303, 307, 308}
# NAT64 (RFC 6052) carries an IPv4 address in its last 32 bits.
_NAT64 = ipaddress.ip_network("64:ff9b::/96")

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
Resolver = Callable[[str, int], Awaitable[list[str]]]


class FeedUnreachable(Exception):
    """The feed could not be fetched; the message is safe to show to the requester."""


@dataclass(frozen=True, slots=True)
class FeedLimits:
    """What a feed import may do: reach private networks, take how many items, wait how long."""

    allow_private_networks: bool = False
    max_items: int = DEFAULT_MAX_ITEMS
    timeout_seconds: float = FETCH_TIMEOUT_SECONDS

    @classmethod
    def from_settings(cls, settings: Settings) -> FeedLimits:
        return cls(
            allow_private_networks=settings.feed_allow_private_networks,
            max_items=settings.feed_max_items,
        )


@dataclass(frozen=True, slots=True)
class Fetched:
    content: bytes | None  # None: 304 Not Modified
    content_type: str | None
    etag: str | None
    modified: str | None


def is_public_address(address: IPAddress) -> bool:
    """False for anything but a globally routable unicast address, including IPv4 addresses
    carried inside IPv6 ones (mapped, 6to4, Teredo, NAT64)."""
    if isinstance(address, ipaddress.IPv6Address):
        embedded: list[IPAddress] = []
        if address.ipv4_mapped is not None:
            embedded.append(address.ipv4_mapped)
        if address.sixtofour is not None:
            embedded.append(address.sixtofour)
        if address.teredo is not None:
            embedded.extend(address.teredo)
        if address in _NAT64:
            embedded.append(ipaddress.IPv4Address(int(address) & 0xFFFFFFFF))
        if any(not is_public_address(inner) for inner in embedded):
            return False
    return not (
        not address.is_global
        or address.is_private
        or address.is_loopback
        or address.is_link_local
        or address.is_multicast
        or address.is_reserved
        or address.is_unspecified
    )


async def resolve(host: str, port: int) -> list[str]:
    """Every address the system resolver gives for `host` (numeric forms such as 0x7f000001 or
    2130706433 included: they resolve like any name)."""
    infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return list(dict.fromkeys(str(info[4][0]) for info in infos))


class _Refused(Exception):
    """A fetch stopped before anything was sent; the message is for the log only."""


async def _checked_addresses(
    url: httpx.URL, *, allow_private: bool, resolver: Resolver, dns_seconds: float
) -> list[str]:
    if url.scheme not in ("http", "https") or not url.host:
        raise _Refused(f"not an http(s) URL: {url}")
    port = url.port or (443 if url.scheme == "https" else 80)
    try:
        async with asyncio.timeout(dns_seconds):
            addresses = await resolver(url.host, port)
    except (OSError, TimeoutError, UnicodeError) as exc:
        raise _Refused(f"{url.host} does not resolve: {exc}") from exc
    parsed: list[IPAddress] = []
    for text in addresses:
        try:
            parsed.append(ipaddress.ip_address(text.split("%", 1)[0]))  # drop an IPv6 zone
        except ValueError as exc:
            raise _Refused(f"{url.host} resolved to {text!r}") from exc
    if not parsed:
        raise _Refused(f"{url.host} resolved to nothing")
    if not allow_private:
        refused = [str(a) for a in parsed if not is_public_address(a)]
        if refused:
            raise _Refused(f"{url.host} resolves to an address not allowed: {', '.join(refused)}")
    return [str(a) for a in parsed]


async def fetch_feed(
    url: str,
    *,
    etag: str | None = None,
    modified: str | None = None,
    limits: FeedLimits = FeedLimits(),
    resolver: Resolver = resolve,
    verify: ssl.SSLContext | bool = True,
) -> Fetched:
    """GET a feed, following at most MAX_REDIRECTS redirects, each hop checked and pinned.
    Raises FeedUnreachable."""
    headers = {
        "User-Agent": USER_AGENT,
        "Accept": "application/rss+xml, application/atom+xml, application/xml;q=0.9, */*;q=0.5",
    }
    if etag:
        headers["If-None-Match"] = etag
    if modified:
        headers["If-Modified-Since"] = modified
    try:
        # No proxy from the environment: the connection must go to the address checked here.
        async with httpx.AsyncClient(
            timeout=limits.timeout_seconds, follow_redirects=False, trust_env=False, verify=verify
        ) as client:
            target = httpx.URL(url)
            for _hop in range(MAX_REDIRECTS + 1):
                addresses = await _checked_addresses(
                    target,
                    allow_private=limits.allow_private_networks,
                    resolver=resolver,
                    dns_seconds=limits.timeout_seconds,
                )
                response = await _send_pinned(client, target, addresses, headers)
                try:
                    location = response.headers.get("location")
                    if response.status_code in _REDIRECTS and location:
                        target = target.join(location)
                        continue
                    return await _read(response, etag=etag, modified=modified)
                finally:
                    await response.aclose()
            raise _Refused(f"more than {MAX_REDIRECTS} redirects")
    except FeedUnreachable:
        raise
    except (
        _Refused,
        httpx.HTTPError,
        httpx.InvalidURL,
        OSError,
        ssl.SSLError,
        ValueError,
        UnicodeError,
    ) as exc:  # a malformed Location, a name IDNA refuses...: the cause stays in the log
        log.info("feed fetch failed: %s: %s", exc.__class__.__name__, exc, extra={"feed": url})
        raise FeedUnreachable(UNREACHABLE) from exc


async def _send_pinned(
    client: httpx.AsyncClient, target: httpx.URL, addresses: list[str], headers: dict[str, str]
) -> httpx.Response:
    """Send to the checked addresses in turn (the first that accepts a connection), never to a
    new lookup of the name; the Host header and TLS server name stay the URL's."""
    failure: httpx.ConnectError | None = None
    for address in addresses:
        request = client.build_request("GET", target, headers=headers)  # Host: from the name
        request.url = target.copy_with(host=address)
        if target.scheme == "https":
            request.extensions["sni_hostname"] = target.host  # the certificate is checked for it
        try:
            return await client.send(request, stream=True)
        except httpx.ConnectError as exc:
            failure = exc
    assert failure is not None
    raise failure


async def _read(response: httpx.Response, *, etag: str | None, modified: str | None) -> Fetched:
    if response.status_code == 304:
        return Fetched(None, None, etag, modified)
    if response.status_code >= 400 or response.status_code in _REDIRECTS:
        raise FeedUnreachable(f"the feed's server answered HTTP {response.status_code}")
    chunks: list[bytes] = []
    size = 0
    async for chunk in response.aiter_bytes():
        size += len(chunk)
        if size > MAX_FEED_BYTES:
            raise FeedUnreachable(f"the feed is larger than {MAX_FEED_BYTES} bytes")
        chunks.append(chunk)
    return Fetched(
        b"".join(chunks),
        response.headers.get("content-type"),
        response.headers.get("etag"),
        response.headers.get("last-modified"),
    )
