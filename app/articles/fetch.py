"""Fetch a feed over HTTP without becoming a way into the private network (SSRF).

Every hop (the URL, then each redirect, followed here and bounded) goes through the one guard in
app/outbound.py: resolved first, refused if any address is not public (unless
FEED_ALLOW_PRIVATE_NETWORKS is set), then connected to the address checked. Every failure to fetch
(refused address, no such host, connection refused, timeout, TLS) gives the same error text, so
the endpoint cannot be used to map hosts and ports; the log keeps the cause.
"""

from __future__ import annotations

import logging
import ssl
from dataclasses import dataclass
from typing import TYPE_CHECKING

import httpx

from app.outbound import Refused, Resolver, checked_addresses, resolve, send_pinned

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
                addresses = await checked_addresses(
                    target,
                    allow_private=limits.allow_private_networks,
                    resolver=resolver,
                    dns_seconds=limits.timeout_seconds,
                )
                response = await send_pinned(client, target, addresses, headers)
                try:
                    location = response.headers.get("location")
                    if response.status_code in _REDIRECTS and location:
                        target = target.join(location)
                        continue
                    return await _read(response, etag=etag, modified=modified)
                finally:
                    await response.aclose()
            raise Refused(f"more than {MAX_REDIRECTS} redirects")
    except FeedUnreachable:
        raise
    except (
        Refused,
        httpx.HTTPError,
        httpx.InvalidURL,
        OSError,
        ssl.SSLError,
        ValueError,
        UnicodeError,
    ) as exc:  # a malformed Location, a name IDNA refuses...: the cause stays in the log
        log.info("feed fetch failed: %s: %s", exc.__class__.__name__, exc, extra={"feed": url})
        raise FeedUnreachable(UNREACHABLE) from exc


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
