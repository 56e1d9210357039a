"""The public archive: what it shows (sent digests only), in which language, without personal
data, cacheable, and the Atom feed read back by feedparser."""

from __future__ import annotations

import re
from datetime import datetime
from pathlib import Path

import feedparser
import httpx
from fastapi import FastAPI
from sqlmodel.ext.asyncio.session import AsyncSession

from app.archive.routes import CACHE_CONTROL
from app.config import Settings
from app.main import create_app
from app.models import Digest
from app.security import Tokens
from tests.factories import (
    html_part,
    import_feed_sample,
    make_subscriber,
    sent_digest,
    text_part,
)
from tests.smtp_server import SmtpServer


async def _articles(client: httpx.AsyncClient, headers: dict[str, str]) -> list[int]:
    response = await client.get("/api/v1/articles?limit=100", headers=headers)
    assert response.status_code == 200, response.text
    return [a["id"] for a in response.json()["items"]]


async def test_archive_lists_sent_digests_only(
    app: FastAPI,
    client: httpx.AsyncClient,
    session: AsyncSession,
    editor_headers: dict[str, str],
    smtp_server: SmtpServer,
) -> None:
    tokens: Tokens = app.state.tokens
    await make_subscriber(session, tokens, email="zoe@example.org", name="Zoé Secret")
    await import_feed_sample(session)
    ids = await _articles(client, editor_headers)
    sent = await sent_digest(
        app, client, editor_headers, subject="Numéro d'été", article_ids=ids[:2]
    )
    hidden = await sent_digest(
        app, client, editor_headers, subject="Hors archive", article_ids=ids[2:3], archive=False
    )
    draft = await client.post(
        "/api/v1/digests",
        json={"subject": "Brouillon", "article_ids": ids[3:4]},
        headers=editor_headers,
    )
    assert draft.status_code == 201
    # A draft with a test copy sent, and a cancelled digest: neither is shown.
    await client.post(
        f"/api/v1/digests/{draft.json()['id']}/test",
        json={"emails": ["editor@example.org"]},
        headers=editor_headers,
    )
    cancelled = await client.post(
        "/api/v1/digests",
        json={"subject": "Annulé", "article_ids": ids[4:5]},
        headers=editor_headers,
    )
    await client.post(f"/api/v1/digests/{cancelled.json()['id']}/cancel", headers=editor_headers)

    page = await client.get("/archive?lang=fr")
    assert page.status_code == 200
    assert "Numéro d&#39;été" in page.text or "Numéro d'été" in page.text
    assert "Hors archive" not in page.text
    assert "Brouillon" not in page.text
    assert "Annulé" not in page.text
    assert "Les numéros précédents" in page.text
    english = await client.get("/archive?lang=en")
    assert "Past issues" in english.text

    path = re.search(r'href="(/archive/\d+-[a-z0-9-]+)\?lang=fr"', page.text)
    assert path is not None
    assert path.group(1) == f"/archive/{sent['id']}-numero-d-ete"
    issue = await client.get(path.group(1))
    assert issue.status_code == 200
    assert "Zoé" not in issue.text
    assert "/unsubscribe/" not in issue.text
    assert "/r/" not in issue.text  # links straight to the site: reading the archive counts nothing
    assert 'href="/subscribe?lang=fr"' in issue.text
    for title_part in ('href="https://',):
        assert title_part in issue.text
    for other in (hidden, draft.json(), cancelled.json()):
        assert (await client.get(f"/archive/{other['id']}-x")).status_code == 404
    assert (await client.get("/archive/99999999999-x")).status_code == 404
    assert (await client.get("/archive/nothing")).status_code == 404

    # The email links its archive page; the left-out digest's email does not.
    copies = smtp_server.messages_to("zoe@example.org")
    assert len(copies) == 2
    first = next(m for m in copies if "été" in str(m["Subject"]))
    assert f"http://testserver/archive/{sent['id']}-numero-d-ete?lang=fr" in text_part(first)
    assert "Voir dans le navigateur" in html_part(first)
    other = next(m for m in copies if "Hors archive" in str(m["Subject"]))
    assert "/archive/" not in text_part(other)


async def test_pages_are_cacheable(
    app: FastAPI, client: httpx.AsyncClient, session: AsyncSession, editor_headers: dict[str, str]
) -> None:
    await import_feed_sample(session)
    digest = await sent_digest(app, client, editor_headers, subject="Cache")
    for path in ("/archive", f"/archive/{digest['id']}-cache", "/archive/feed.xml"):
        first = await client.get(path)
        assert first.status_code == 200, path
        assert first.headers["cache-control"] == CACHE_CONTROL
        etag = first.headers["etag"]
        again = await client.get(path, headers={"If-None-Match": etag})
        assert again.status_code == 304, path
        assert again.content == b""
        changed = await client.get(path, headers={"If-None-Match": '"other"'})
        assert changed.status_code == 200


async def test_atom_feed_reads_back_with_stable_ids(
    app: FastAPI, client: httpx.AsyncClient, session: AsyncSession, editor_headers: dict[str, str]
) -> None:
    await import_feed_sample(session)
    ids = await _articles(client, editor_headers)
    one = await sent_digest(app, client, editor_headers, subject="Un <&> deux", article_ids=ids[:1])
    two = await sent_digest(app, client, editor_headers, article_ids=ids[1:3])
    body = (await client.get("/archive/feed.xml")).content
    feed = feedparser.parse(body)
    assert not feed.bozo, feed.bozo_exception
    assert feed.version == "atom10"
    assert [e.id for e in feed.entries] == [
        f"http://testserver/archive/{two['id']}",
        f"http://testserver/archive/{one['id']}",
    ]
    assert feed.entries[1].title == "Un <&> deux"
    assert feed.entries[1].link.startswith(f"http://testserver/archive/{one['id']}-un-deux")
    # The same ids on the next read, and after a new issue.
    three = await sent_digest(app, client, editor_headers, article_ids=ids[3:4])
    again = feedparser.parse((await client.get("/archive/feed.xml")).content)
    assert [e.id for e in again.entries][1:] == [e.id for e in feed.entries]
    assert again.entries[0].id == f"http://testserver/archive/{three['id']}"


async def test_pagination_newest_first(
    app: FastAPI, client: httpx.AsyncClient, session: AsyncSession, editor_headers: dict[str, str]
) -> None:
    await import_feed_sample(session)
    ids = await _articles(client, editor_headers)
    for i in range(21):
        session.add(Digest(subject=f"Numéro {i}", status="sent", sent_at=datetime(2020, 1, i + 1)))
    await session.commit()
    newest = await sent_digest(app, client, editor_headers, subject="Le dernier", article_ids=ids)
    first = await client.get("/archive")
    assert "Le dernier" in first.text
    assert "Page 1 sur 2" in first.text
    assert 'rel="next"' in first.text
    second = await client.get("/archive?page=2")
    assert second.status_code == 200
    assert 'rel="prev"' in second.text
    assert "Le dernier" not in second.text
    assert newest["id"]
    assert (await client.get("/archive?page=0")).status_code == 422


async def test_archive_disabled(database_url: str, smtp_server: SmtpServer, tmp_path: Path) -> None:
    from tests.conftest import make_settings

    settings: Settings = make_settings(database_url, smtp_server, tmp_path, archive_enabled=False)
    application = create_app(settings)
    async with application.router.lifespan_context(application):
        transport = httpx.ASGITransport(app=application)
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as c:
            for path in ("/archive", "/archive/1-x", "/archive/feed.xml"):
                assert (await c.get(path)).status_code == 404
            assert "/archive" not in (await c.get("/subscribe")).text


async def test_signup_page_links_the_archive(client: httpx.AsyncClient) -> None:
    page = await client.get("/subscribe?lang=en")
    assert 'href="/archive?lang=en"' in page.text
    assert "See past issues" in page.text
