"""Feed import cannot reach into the private network (SSRF), and says nothing about what it found.

Every request these tests let through goes to a server on loopback; the private, link-local and
reserved ranges are checked without sending anything (the address policy and the resolution
step), never by connecting to them.
"""

from __future__ import annotations

import ipaddress
import socket
import ssl
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import trustme
from sqlmodel import select
from sqlmodel.ext.asyncio.session import AsyncSession
from typer.testing import CliRunner

from app import outbound
from app.articles import fetch
from app.articles.fetch import UNREACHABLE, FeedLimits, FeedUnreachable, fetch_feed
from app.cli import cli
from app.models import Article
from tests.feed_server import FeedServer, Page

SAMPLE = Path(__file__).parents[1] / "data" / "wordpress-feed-fr.xml"
ALLOW = FeedLimits(allow_private_networks=True)


@pytest.fixture
def feed_server() -> Iterator[FeedServer]:
    server = FeedServer()
    server.pages["/feed/"] = Page(SAMPLE.read_bytes())
    server.start()
    try:
        yield server
    finally:
        server.stop()


def loopback_spellings(port: int) -> list[str]:
    return [
        f"http://127.0.0.1:{port}/feed/",
        f"http://127.1:{port}/feed/",
        f"http://0x7f000001:{port}/feed/",
        f"http://2130706433:{port}/feed/",
        f"http://017700000001:{port}/feed/",
        f"http://[::ffff:127.0.0.1]:{port}/feed/",
        f"http://[::1]:{port}/feed/",
        f"http://localhost:{port}/feed/",  # a name that resolves to loopback
        f"http://LOCALHOST.:{port}/feed/",
        f"http://0.0.0.0:{port}/feed/",
    ]


async def test_api_refuses_loopback_in_every_spelling(
    client: httpx.AsyncClient,
    session: AsyncSession,
    editor_headers: dict[str, str],
    feed_server: FeedServer,
) -> None:
    details = set()
    for url in loopback_spellings(feed_server.port):
        response = await client.post(
            "/api/v1/feeds/import", json={"url": url}, headers=editor_headers
        )
        assert response.status_code == 502, (url, response.text)
        details.add(response.json()["detail"])
    assert details == {f"feed unreachable: {UNREACHABLE}"}
    assert feed_server.requests == []  # nothing was ever sent
    assert (await session.exec(select(Article))).first() is None


@pytest.mark.parametrize(
    "address",
    [
        "127.0.0.1",
        "127.255.255.254",
        "10.1.2.3",
        "172.16.0.1",
        "192.168.1.1",
        "169.254.169.254",  # cloud metadata
        "100.64.0.1",  # carrier-grade NAT
        "0.0.0.0",
        "224.0.0.1",
        "239.255.255.250",
        "240.0.0.1",
        "255.255.255.255",
        "192.0.2.1",
        "198.18.0.1",
        "::1",
        "::",
        "::ffff:127.0.0.1",
        "::ffff:10.0.0.1",
        "fd00::1",  # unique local
        "fc00::1",
        "fe80::1",  # link-local
        "ff02::1",  # multicast
        "2002:7f00:1::",  # 6to4 of 127.0.0.1
        "64:ff9b::a00:1",  # NAT64 of 10.0.0.1
        "2001:db8::1",
    ],
)
def test_address_policy_refuses_non_public(address: str) -> None:
    assert not outbound.is_public_address(ipaddress.ip_address(address))


@pytest.mark.parametrize("address", ["93.184.215.14", "1.1.1.1", "2606:4700:4700::1111"])
def test_address_policy_allows_public(address: str) -> None:
    assert outbound.is_public_address(ipaddress.ip_address(address))


@pytest.mark.parametrize("address", ["10.0.0.7", "169.254.169.254", "fd12:3456::1", "fe80::1"])
async def test_names_resolving_to_private_addresses_are_refused_before_connecting(
    address: str,
) -> None:
    # The resolution step alone: a refused address never reaches the connection step.
    async def resolver(host: str, port: int) -> list[str]:
        return ["93.184.215.14", address]  # one bad address is enough to refuse

    with pytest.raises(outbound.Refused, match="not allowed"):
        await outbound.checked_addresses(
            httpx.URL("http://intranet.example.org/feed"),
            allow_private=False,
            resolver=resolver,
            dns_seconds=1,
        )


async def test_every_redirect_hop_is_checked(
    feed_server: FeedServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Stand-in for the internet: 127.0.0.1 counts as public here; every other address does not.
    monkeypatch.setattr(outbound, "is_public_address", lambda a: str(a) == "127.0.0.1")
    port = feed_server.port

    async def resolver(host: str, p: int) -> list[str]:
        # A name of the intranet; anything else resolves as the system says.
        return (
            ["127.0.0.2"] if host == "intranet.newsroom.test" else await outbound.resolve(host, p)
        )

    for target in (
        f"http://127.0.0.2:{port}/feed/",
        f"http://intranet.newsroom.test:{port}/feed/",  # a name that resolves to loopback
        f"http://[::1]:{port}/feed/",
        f"http://0x7f000002:{port}/feed/",
        "file:///etc/passwd",
        "gopher://127.0.0.1/",
    ):
        feed_server.requests.clear()
        feed_server.pages["/go"] = Page(b"", status=302, headers={"Location": target})
        with pytest.raises(FeedUnreachable) as refused:
            await fetch_feed(feed_server.url("/go"), resolver=resolver)
        assert str(refused.value) == UNREACHABLE
        assert [path for path, _ in feed_server.requests] == ["/go"], target
    # A redirect to an allowed address is followed; a relative one too.
    feed_server.pages["/go"] = Page(b"", status=301, headers={"Location": "/feed/"})
    fetched = await fetch_feed(feed_server.url("/go"))
    assert fetched.content == SAMPLE.read_bytes()


async def test_redirects_are_bounded(feed_server: FeedServer) -> None:
    for hop in range(10):
        feed_server.pages[f"/r{hop}"] = Page(b"", status=302, headers={"Location": f"/r{hop + 1}"})
    with pytest.raises(FeedUnreachable, match="could not be fetched"):
        await fetch_feed(feed_server.url("/r0"), limits=ALLOW)
    assert len(feed_server.requests) == fetch.MAX_REDIRECTS + 1


async def test_the_connection_goes_to_the_address_checked(feed_server: FeedServer) -> None:
    """No second lookup (DNS rebinding): the name is resolved once per hop, the connection goes
    to that address, and the request still names the host."""
    lookups: list[str] = []

    async def resolver(host: str, port: int) -> list[str]:
        lookups.append(host)
        return ["127.0.0.1"]

    url = feed_server.url("/feed/", host="feeds.newsroom.test")  # unknown to the system resolver
    fetched = await fetch_feed(url, limits=ALLOW, resolver=resolver)
    assert fetched.content == SAMPLE.read_bytes()
    assert lookups == ["feeds.newsroom.test"]
    [(_, headers)] = feed_server.requests
    assert headers["Host"] == f"feeds.newsroom.test:{feed_server.port}"


async def test_https_keeps_the_server_name_and_checks_the_certificate_for_it() -> None:
    ca = trustme.CA()
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("feeds.newsroom.test").configure_cert(server_context)
    names: list[str | None] = []
    server_context.sni_callback = lambda sock, name, ctx: names.append(name)
    server = FeedServer(tls=server_context)
    server.pages["/feed/"] = Page(SAMPLE.read_bytes())
    server.start()
    client_context = ssl.create_default_context()
    ca.configure_trust(client_context)

    async def resolver(host: str, port: int) -> list[str]:
        return ["127.0.0.1"]

    try:
        url = server.url("/feed/", host="feeds.newsroom.test")
        fetched = await fetch_feed(url, limits=ALLOW, resolver=resolver, verify=client_context)
        assert fetched.content == SAMPLE.read_bytes()
        assert names == ["feeds.newsroom.test"]
        # A certificate for another name is refused, with the same uniform text.
        with pytest.raises(FeedUnreachable) as wrong:
            await fetch_feed(
                server.url("/feed/", host="other.newsroom.test"),
                limits=ALLOW,
                resolver=resolver,
                verify=client_context,
            )
        assert str(wrong.value) == UNREACHABLE
    finally:
        server.stop()


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def test_one_error_text_for_every_failure(feed_server: FeedServer) -> None:
    """Refused address, connection refused, no such host and timeout read the same, so the
    endpoint cannot map hosts and ports."""
    silent = socket.socket()  # accepts connections (backlog) and never answers
    silent.bind(("127.0.0.1", 0))
    silent.listen(5)

    async def no_such_host(host: str, port: int) -> list[str]:
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

    try:
        attempts = [
            fetch_feed(feed_server.url("/feed/")),  # refused address
            fetch_feed(f"http://127.0.0.1:{closed_port()}/", limits=ALLOW),  # nothing listens
            fetch_feed("http://feeds.newsroom.test/", limits=ALLOW, resolver=no_such_host),
            fetch_feed(
                f"http://127.0.0.1:{silent.getsockname()[1]}/",
                limits=FeedLimits(allow_private_networks=True, timeout_seconds=0.3),
            ),
        ]
        messages = []
        for attempt in attempts:
            with pytest.raises(FeedUnreachable) as failed:
                await attempt
            messages.append(str(failed.value))
    finally:
        silent.close()
    assert messages == [UNREACHABLE] * 4


def test_cli_refuses_private_addresses_unless_allowed(
    database_url: str, monkeypatch: pytest.MonkeyPatch, feed_server: FeedServer
) -> None:
    monkeypatch.setenv("DATABASE_URL", database_url)
    monkeypatch.setenv("SECRET_KEY", "test-secret-key-0123456789abcdef")
    monkeypatch.delenv("FEED_ALLOW_PRIVATE_NETWORKS", raising=False)
    refused = CliRunner().invoke(cli, ["import-feed", feed_server.url("/feed/")])
    assert refused.exit_code == 1
    assert refused.stderr.splitlines()[-1] == f"error: feed unreachable: {UNREACHABLE}"
    assert feed_server.requests == []
    monkeypatch.setenv("FEED_ALLOW_PRIVATE_NETWORKS", "true")
    allowed = CliRunner().invoke(cli, ["import-feed", feed_server.url("/feed/")])
    assert allowed.exit_code == 0, allowed.output
    assert "5 created" in allowed.stdout
