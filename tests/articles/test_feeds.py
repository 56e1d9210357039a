"""Feed parsing, sanitising, idempotent import, the import endpoint, the CLI and the poller."""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from fastapi import FastAPI
from sqlmodel import func, select
from sqlmodel.ext.asyncio.session import AsyncSession
from typer.testing import CliRunner

from app.articles import service
from app.articles.feeds import MalformedFeed, parse_feed
from app.articles.polling import poll_feed_once, poll_feeds_forever
from app.articles.sanitize import sanitize_html, summary_text, truncate
from app.cli import cli
from app.config import Settings
from app.models import Article, Feed
from tests.conftest import make_settings
from tests.feed_server import FeedServer, Page
from tests.smtp_server import SmtpServer

DATA = Path(__file__).parents[1] / "data"
SAMPLE = DATA / "wordpress-feed-fr.xml"  # a copy of the site's feed (shared/samples)


def data(name: str) -> bytes:
    return (DATA / name).read_bytes()


@pytest.fixture
def settings(database_url: str, smtp_server: SmtpServer, tmp_path: Path) -> Settings:
    """These tests fetch from a feed server on loopback: a private address, allowed here."""
    return make_settings(database_url, smtp_server, tmp_path, feed_allow_private_networks=True)


@pytest.fixture
def feed_server() -> Iterator[FeedServer]:
    server = FeedServer()
    server.start()
    try:
        yield server
    finally:
        server.stop()


def closed_port_url() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}/feed/"


async def count_articles(session: AsyncSession) -> int:
    return int((await session.exec(select(func.count()).select_from(Article))).one())


# --- Parsing -----------------------------------------------------------------------------------


def test_wordpress_sample() -> None:
    feed = parse_feed(SAMPLE.read_bytes())
    assert feed.title == "Dzaleu.com"
    assert len(feed.entries) == 5
    first = feed.entries[0]
    assert first.guid == "https://www.dzaleu.com/?p=41873"
    assert first.url == (
        "https://www.dzaleu.com/russie-etats-unis-rencontre-telephonique-entre-poutine-et-biden/"
    )
    assert first.title == "Russie – Etats-Unis : Rencontre téléphonique entre Poutine et Biden"
    assert first.author == "Rédaction"
    assert first.categories == ["Non classé"]
    assert first.published_at is not None
    assert first.published_at.isoformat() == "2021-12-30T17:05:00+00:00"
    # The summary is plain text, without the "… Lire la suite" trailer.
    assert first.summary is not None
    assert first.summary.endswith("les relations avec l’Otan, etc.")
    assert "<" not in first.summary
    assert "Lire la suite" not in first.summary
    assert "&#8230;" not in first.summary
    assert "…" not in first.summary
    # The body keeps its structure.
    assert first.content_html is not None
    assert "<h3>La conversation précédente" in first.content_html
    assert "<strong>Article traduit*</strong>" in first.content_html
    assert feed.entries[1].categories == ["International", "Europe"]
    assert feed.entries[2].author == "Équipe Dzaleu"
    assert (
        feed.entries[3].image_url == "https://www.dzaleu.com/wp-content/uploads/2021/12/ekang.jpg"
    )


def test_atom_feed_resolves_relative_links() -> None:
    feed = parse_feed(data("atom-feed.xml"), url="https://blog.example.org/feed.atom")
    assert [e.url for e in feed.entries] == [
        "https://blog.example.org/2022/01/budget",
        "https://blog.example.org/2022/01/no-summary",
    ]
    budget = feed.entries[0]
    assert budget.title == "Budget 2022 adopted & signed"
    assert budget.guid == "tag:blog.example.org,2022:budget"
    assert budget.author == "Jane Doe"
    assert budget.categories == ["Politics", "Economy"]
    assert budget.published_at is not None
    assert budget.published_at.isoformat() == "2022-01-05T08:30:00+00:00"  # +01:00 -> UTC
    assert budget.summary == "The council adopted the 2022 budget after a long night."
    assert budget.content_html is not None
    assert 'src="https://blog.example.org/media/council.jpg"' in budget.content_html
    assert 'href="https://blog.example.org/2021/12/draft"' in budget.content_html
    assert budget.image_url == "https://blog.example.org/media/council.jpg"
    # No summary: the start of the body stands in.
    assert feed.entries[1].summary == "Only a body, which becomes the summary."


def test_latin1_feed() -> None:
    feed = parse_feed(data("latin1-feed.xml"))
    assert feed.title == "Le Journal de Yaoundé"
    [entry] = feed.entries
    assert entry.title == "Élections à Yaoundé : les résultats définitifs"
    assert entry.author == "Rédaction"
    assert entry.categories == ["Société"]
    assert (
        entry.summary == "Les résultats définitifs ont été proclamés à Yaoundé, où l'été fut long."
    )
    assert entry.guid is None


def test_malformed_feed_says_why() -> None:
    with pytest.raises(MalformedFeed, match="could not be read: .*unclosed token"):
        parse_feed(data("malformed-feed.xml"))
    with pytest.raises(MalformedFeed, match="not an RSS or Atom feed"):
        parse_feed(b"<html><body><p>Not a feed</p></body></html>")
    with pytest.raises(MalformedFeed):
        parse_feed(b"")


def test_hostile_feed_is_sanitised() -> None:
    feed = parse_feed(data("hostile-feed.xml"))
    assert feed.skipped == 2  # no link; a javascript: link
    [entry] = feed.entries
    html = entry.content_html or ""
    for bad in (
        "<script",
        "alert",
        "onerror",
        "onload",
        "javascript:",
        "JaVaScRiPt",
        "data:",
        "<iframe",
        "style=",
        "<style",
        "<form",
        "<input",
        "<svg",
    ):
        assert bad.lower() not in html.lower(), bad
    assert "<em>emphasis</em>" in html
    assert '<a href="https://ok.example.org/" rel="noopener noreferrer">a link</a>' in html
    assert '<img src="https://img.example.org/a.png">' in html
    assert entry.summary == "Summary with tags"
    assert "<" not in entry.title


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ('<p onclick="x()">Hi</p>', "<p>Hi</p>"),
        ('<a href="javascript:alert(1)">x</a>', '<a rel="noopener noreferrer">x</a>'),
        ('<a href="  javascript:alert(1)">x</a>', '<a rel="noopener noreferrer">x</a>'),
        ('<a href="/relative">x</a>', '<a rel="noopener noreferrer">x</a>'),
        ('<img src="x.jpg" onerror="alert(1)">', "<img>"),
        (
            '<img src="http://cdn.example.org/a.jpg" alt="A">',
            '<img src="http://cdn.example.org/a.jpg" alt="A">',
        ),
        ("<iframe src='https://evil.example'></iframe><p>ok</p>", "<p>ok</p>"),
        ("<script>alert(1)</script><p>ok</p>", "<p>ok</p>"),
        ('<p style="color:red">red</p>', "<p>red</p>"),
        (
            "<blockquote><ul><li>one</li></ul></blockquote>",
            "<blockquote><ul><li>one</li></ul></blockquote>",
        ),
        ("<h2>Title</h2>", "<h2>Title</h2>"),
        ("   ", None),
    ],
)
def test_sanitize_html(raw: str, expected: str | None) -> None:
    assert sanitize_html(raw) == expected


def test_summaries_are_plain_and_short() -> None:
    assert summary_text('Texte &#8230; <a href="https://x.example/">Lire la suite</a>') == "Texte"
    assert summary_text("Text [&hellip;]") == "Text"
    assert summary_text("<p>Un</p><p>Deux &amp; trois</p>") == "Un Deux & trois"
    assert summary_text(None, "<p>Body <script>x()</script>only</p>") == "Body only"
    assert summary_text("", None) is None
    long = summary_text("mot " * 500)
    assert long is not None
    assert len(long) <= 500
    assert long.endswith("mot…")
    assert truncate("court") == "court"


# --- Import into the database ------------------------------------------------------------------


async def test_reimport_is_idempotent_and_updates_changes(session: AsyncSession) -> None:
    sample = SAMPLE.read_bytes()
    first = await service.import_feed_document(session, data=sample)
    await session.commit()
    assert (first.created, first.updated, first.unchanged) == (5, 0, 0)

    again = await service.import_feed_document(session, data=sample)
    await session.commit()
    assert (again.created, again.updated, again.unchanged) == (0, 0, 5)
    assert await count_articles(session) == 5

    # The site edits a title and moves a post to a new permalink (same guid).
    edited = sample.replace(
        b"<title>Langue Beti : nouvelle s",
        b"<title>Langue Beti (mis \xc3\xa0 jour) : nouvelle s",
    ).replace(
        b"<link>https://www.dzaleu.com/economie-prix-du-gaz-europe-record/</link>",
        b"<link>https://www.dzaleu.com/economie/prix-du-gaz-record/</link>",
    )
    changed = await service.import_feed_document(session, data=edited)
    await session.commit()
    assert (changed.created, changed.updated, changed.unchanged) == (0, 2, 3)
    assert await count_articles(session) == 5
    session.expire_all()
    moved = (
        await session.exec(select(Article).where(Article.guid == "https://www.dzaleu.com/?p=41801"))
    ).one()
    assert moved.url == "https://www.dzaleu.com/economie/prix-du-gaz-record/"

    # A feed that lists fewer items deletes nothing.
    shorter = await service.import_feed_document(session, data=data("latin1-feed.xml"))
    await session.commit()
    assert shorter.created == 1
    assert await count_articles(session) == 6


async def test_link_is_the_key_without_guid(session: AsyncSession) -> None:
    latin1 = data("latin1-feed.xml")
    await service.import_feed_document(session, data=latin1)
    result = await service.import_feed_document(
        session, data=latin1.replace(b"Les r\xe9sultats d\xe9finitifs ont", b"Les chiffres ont")
    )
    await session.commit()
    assert (result.created, result.updated) == (0, 1)
    assert await count_articles(session) == 1


# --- The import endpoint -----------------------------------------------------------------------


async def test_import_endpoint(
    client: httpx.AsyncClient,
    session: AsyncSession,
    editor_headers: dict[str, str],
    feed_server: FeedServer,
) -> None:
    feed_server.pages["/feed/"] = Page(SAMPLE.read_bytes())
    url = feed_server.url("/feed/")
    response = await client.post("/api/v1/feeds/import", json={"url": url}, headers=editor_headers)
    assert response.status_code == 200, response.text
    assert response.json() == {
        "url": url,
        "created": 5,
        "updated": 0,
        "unchanged": 0,
        "skipped": 0,
        "not_modified": False,
        "warning": None,
    }
    again = await client.post("/api/v1/feeds/import", json={"url": url}, headers=editor_headers)
    assert again.json()["unchanged"] == 5
    assert await count_articles(session) == 5
    feed = (await session.exec(select(Feed).where(Feed.url == url))).one()
    assert feed.etag
    assert feed.last_polled_at
    assert feed.last_error is None

    listed = await client.get("/api/v1/articles", headers=editor_headers)
    assert listed.json()["total"] == 5


async def test_import_endpoint_errors(
    client: httpx.AsyncClient, editor_headers: dict[str, str], feed_server: FeedServer
) -> None:
    unreachable = await client.post(
        "/api/v1/feeds/import", json={"url": closed_port_url()}, headers=editor_headers
    )
    assert unreachable.status_code == 502
    assert "could not be fetched" in unreachable.json()["detail"]

    feed_server.pages["/down"] = Page(b"oops", content_type="text/plain", status=503)
    down = await client.post(
        "/api/v1/feeds/import", json={"url": feed_server.url("/down")}, headers=editor_headers
    )
    assert down.status_code == 502
    assert "HTTP 503" in down.json()["detail"]

    feed_server.pages["/broken"] = Page(data("malformed-feed.xml"))
    broken = await client.post(
        "/api/v1/feeds/import", json={"url": feed_server.url("/broken")}, headers=editor_headers
    )
    assert broken.status_code == 422
    assert broken.json()["detail"].startswith("malformed feed: the feed could not be read")

    for bad in ("ftp://example.org/feed", "/etc/passwd", "file:///etc/passwd", "not a url"):
        response = await client.post(
            "/api/v1/feeds/import", json={"url": bad}, headers=editor_headers
        )
        assert response.status_code == 422, bad
        assert response.json()["detail"][0]["loc"] == ["body", "url"]

    no_key = await client.post("/api/v1/feeds/import", json={"url": feed_server.url("/feed")})
    assert no_key.status_code == 401


# --- The CLI -----------------------------------------------------------------------------------


@pytest.fixture
def restore_logging() -> Iterator[None]:
    """The CLI points the root logger at the runner's stream, which closes after the test."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


@pytest.mark.usefixtures("restore_logging")
def test_cli_import_feed(
    database_url: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("DATABASE_URL", database_url)
    monkeypatch.setenv("SECRET_KEY", "test-secret-key-0123456789abcdef")
    monkeypatch.setenv("FEED_ALLOW_PRIVATE_NETWORKS", "false")  # a file is no fetch
    runner = CliRunner()
    first = runner.invoke(cli, ["import-feed", str(SAMPLE)])
    assert first.exit_code == 0, first.output
    assert "5 created, 0 updated, 0 unchanged" in first.stdout
    second = runner.invoke(cli, ["import-feed", str(SAMPLE)])
    assert "0 created, 0 updated, 5 unchanged" in second.stdout

    broken = runner.invoke(cli, ["import-feed", str(DATA / "malformed-feed.xml")])
    assert broken.exit_code == 1
    assert broken.stderr.startswith("error: malformed feed:")
    missing = runner.invoke(cli, ["import-feed", str(tmp_path / "nope.xml")])
    assert missing.exit_code == 1
    assert "error:" in missing.stderr
    assert "nope.xml" in missing.stderr


# --- The poller --------------------------------------------------------------------------------


async def test_poll_uses_validators_and_survives_errors(
    app: FastAPI, session: AsyncSession, settings: Settings, feed_server: FeedServer
) -> None:
    feed_server.pages["/feed/"] = Page(SAMPLE.read_bytes())
    url = feed_server.url("/feed/")
    polling = settings.model_copy(update={"feed_url": url, "feed_poll_minutes": 30})
    sessionmaker = app.state.sessionmaker

    result = await poll_feed_once(polling, sessionmaker, url=url)
    assert result is not None
    assert result.created == 5
    # Polled moments ago: another worker (or this one) skips the round.
    assert await poll_feed_once(polling, sessionmaker, url=url) is None

    async with sessionmaker() as s:
        feed = (await s.exec(select(Feed).where(Feed.url == url))).one()
        feed.last_polled_at = None  # due again
        s.add(feed)
        await s.commit()
    not_modified = await poll_feed_once(polling, sessionmaker, url=url)
    assert not_modified is not None
    assert not_modified.not_modified
    assert feed_server.requests[-1][1].get("If-None-Match")

    # The feed breaks: the error is recorded, nothing is deleted.
    feed_server.pages["/feed/"] = Page(data("malformed-feed.xml"))
    async with sessionmaker() as s:
        feed = (await s.exec(select(Feed).where(Feed.url == url))).one()
        feed.last_polled_at = None
        s.add(feed)
        await s.commit()
    assert await poll_feed_once(polling, sessionmaker, url=url) is None
    async with sessionmaker() as s:
        feed = (await s.exec(select(Feed).where(Feed.url == url))).one()
        assert feed.last_error
        assert "could not be read" in feed.last_error
        assert await count_articles(s) == 5


async def test_poll_loop_runs_until_stopped(app: FastAPI, settings: Settings) -> None:
    url = closed_port_url()
    polling = settings.model_copy(update={"feed_url": url, "feed_poll_minutes": 1})
    stop = asyncio.Event()
    task = asyncio.create_task(poll_feeds_forever(polling, app.state.sessionmaker, stop))
    for _ in range(100):
        async with app.state.sessionmaker() as s:
            feed = (await s.exec(select(Feed).where(Feed.url == url))).first()
        if feed is not None and feed.last_error:
            break
        await asyncio.sleep(0.05)
    assert feed is not None
    assert feed.last_error
    assert "could not be fetched" in feed.last_error
    assert not task.done()  # an unreachable feed does not end the loop
    stop.set()
    await asyncio.wait_for(task, timeout=5)


async def test_poll_disabled_without_settings(
    app: FastAPI, settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    """Without FEED_URL, or with FEED_POLL_MINUTES=0, the poller returns at once (the stop
    event is never set) and fetches nothing."""
    stop = asyncio.Event()
    await asyncio.wait_for(poll_feeds_forever(settings, app.state.sessionmaker, stop), timeout=1)
    never = settings.model_copy(
        update={"feed_url": "http://127.0.0.1:9/feed", "feed_poll_minutes": 0}
    )
    with caplog.at_level("INFO", logger="app.articles.polling"):
        await asyncio.wait_for(poll_feeds_forever(never, app.state.sessionmaker, stop), timeout=1)
    assert "FEED_POLL_MINUTES is 0: the feed is not polled" in caplog.text
    assert not stop.is_set()
    async with app.state.sessionmaker() as s:
        assert (await s.exec(select(Feed))).all() == []
