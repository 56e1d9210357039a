"""Outbound HTTP that cannot be turned against the private network (SSRF): the one guard for
every request the server makes to a URL someone gave it (feed imports, the alert webhook).

Every hop is resolved first; if any address the name resolves to is loopback, private,
link-local, reserved, multicast or unspecified, nothing is sent, unless the caller allows private
networks (FEED_ALLOW_PRIVATE_NETWORKS). The connection then goes to the address that was checked
(no second lookup a DNS rebinding could answer differently), with the Host header and the TLS
server name of the URL.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import socket
import ssl
from collections.abc import Awaitable, Callable
from typing import Any

import httpx

# NAT64 (RFC 6052) carries an IPv4 address in its last 32 bits.
_NAT64 = ipaddress.ip_network("64:ff9b::/96")

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
Resolver = Callable[[str, int], Awaitable[list[str]]]


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


class Refused(Exception):
    """A request stopped before anything was sent; the message is for the log only."""


async def checked_addresses(
    url: httpx.URL, *, allow_private: bool, resolver: Resolver, dns_seconds: float
) -> list[str]:
    if url.scheme not in ("http", "https") or not url.host:
        raise Refused(f"not an http(s) URL: {url}")
    port = url.port or (443 if url.scheme == "https" else 80)
    try:
        async with asyncio.timeout(dns_seconds):
            addresses = await resolver(url.host, port)
    except (OSError, TimeoutError, UnicodeError) as exc:
        raise Refused(f"{url.host} does not resolve: {exc}") from exc
    parsed: list[IPAddress] = []
    for text in addresses:
        try:
            parsed.append(ipaddress.ip_address(text.split("%", 1)[0]))  # drop an IPv6 zone
        except ValueError as exc:
            raise Refused(f"{url.host} resolved to {text!r}") from exc
    if not parsed:
        raise Refused(f"{url.host} resolved to nothing")
    if not allow_private:
        refused = [str(a) for a in parsed if not is_public_address(a)]
        if refused:
            raise Refused(f"{url.host} resolves to an address not allowed: {', '.join(refused)}")
    return [str(a) for a in parsed]


async def send_pinned(
    client: httpx.AsyncClient,
    target: httpx.URL,
    addresses: list[str],
    headers: dict[str, str],
    *,
    method: str = "GET",
    content: bytes | None = None,
) -> httpx.Response:
    """Send to the checked addresses in turn (the first that accepts a connection), never to a
    new lookup of the name; the Host header and TLS server name stay the URL's."""
    failure: httpx.ConnectError | None = None
    for address in addresses:
        request = client.build_request(
            method, target, headers=headers, content=content
        )  # Host: from the name
        request.url = target.copy_with(host=address)
        if target.scheme == "https":
            request.extensions["sni_hostname"] = target.host  # the certificate is checked for it
        try:
            return await client.send(request, stream=True)
        except httpx.ConnectError as exc:
            failure = exc
    assert failure is not None
    raise failure


async def post_json(
    url: str,
    payload: dict[str, Any],
    *,
    allow_private_networks: bool,
    timeout_seconds: float = 10.0,
    user_agent: str = "newsletter/0.1",
    resolver: Resolver = resolve,
    verify: ssl.SSLContext | bool = True,
) -> int:
    """POST `payload` as JSON to `url` through the guard, following no redirect; the status.
    Raises Refused, httpx.HTTPError or OSError."""
    body = json.dumps(payload, ensure_ascii=False).encode()
    headers = {"User-Agent": user_agent, "Content-Type": "application/json"}
    async with httpx.AsyncClient(
        timeout=timeout_seconds, follow_redirects=False, trust_env=False, verify=verify
    ) as client:
        target = httpx.URL(url)
        addresses = await checked_addresses(
            target,
            allow_private=allow_private_networks,
            resolver=resolver,
            dns_seconds=timeout_seconds,
        )
        response = await send_pinned(
            client, target, addresses, headers, method="POST", content=body
        )
        await response.aclose()
        return response.status_code
