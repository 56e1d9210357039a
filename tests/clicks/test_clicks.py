"""Tracked links: the redirect goes only where the digest's frozen copy says, a bad token gets a
page, and counts are honest: readers apart from scanners, unique readers, nothing lost."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest
import sqlalchemy as sa
from fastapi import FastAPI
from sqlmodel import col
from sqlmodel.ext.asyncio.session import AsyncSession

from app.clicks import scanners
from app.clicks.recorder import ClickRecorder
from app.clicks.service import Click
from app.config import Settings
from app.db import make_engine, make_sessionmaker
from app.main import create_app
from app.models import ClickSeen, Delivery, Digest, DigestArticle, SubscriberEvent
from app.security import Tokens
from tests.conftest import make_settings
from tests.factories import (
    editor_headers as make_editor_headers,
)
from tests.factories import (
    html_part,
    import_feed_sample,
    make_subscriber,
    sent_digest,
    text_part,
)
from tests.smtp_server import SmtpServer, free_port

BROWSER = "Mozilla/5.0 (X11; Linux x86_64; rv:132.0) Gecko/20100101 Firefox/132.0"
READERS = [f"reader{i}@example.org" for i in range(5)]


def tracked_links(message_text: str) -> list[str]:
    """The /r/ paths of a copy's text part, in order, each once."""
    return list(dict.fromkeys(re.findall(r"http://testserver(/r/[A-Za-z0-9._-]+)", message_text)))


async def age_copies(session: AsyncSession, digest_id: int) -> None:
    """As if the copies had been delivered an hour ago (clicks seconds after delivery are a
    scanner's)."""
    await session.execute(
        sa.update(Delivery)
        .where(col(Delivery.digest_id) == digest_id)
        .values(sent_at=datetime.now(UTC) - timedelta(hours=1))
    )
    await session.commit()


async def numbers(client: httpx.AsyncClient, headers: dict[str, str], digest_id: int) -> dict:
    response = await client.get(f"/api/v1/digests/{digest_id}", headers=headers)
    assert response.status_code == 200, response.text
    result: dict = response.json()["numbers"]
    return result


async def _send(
    app: FastAPI, client: httpx.AsyncClient, session: AsyncSession, headers: dict[str, str]
) -> dict:
    tokens: Tokens = app.state.tokens
    for address in READERS:
        await make_subscriber(session, tokens, email=address, name="Zoé")
    await import_feed_sample(session)
    response = await client.get("/api/v1/articles?limit=3", headers=headers)
    ids = [a["id"] for a in response.json()["items"]]
    return await sent_digest(app, client, headers, subject="Clics", article_ids=ids)


async def test_redirect_goes_to_the_frozen_url_and_counts(
    app: FastAPI,
    client: httpx.AsyncClient,
    session: AsyncSession,
    editor_headers: dict[str, str],
    smtp_server: SmtpServer,
) -> None:
    digest = await _send(app, client, session, editor_headers)
    await age_copies(session, digest["id"])
    copy = smtp_server.messages_to(READERS[0])[0]
    links = tracked_links(text_part(copy))
    assert len(links) == 3
    for link in links:
        assert f'href="http://testserver{link}"' in html_part(copy)
    urls = [a["url"] for a in digest["articles"]]
    assert not any(url in text_part(copy) for url in urls)  # every article link is tracked

    first = await client.get(links[0], headers={"User-Agent": BROWSER})
    assert first.status_code == 302
    assert first.headers["location"] == urls[0]
    assert first.headers["cache-control"] == "no-store"
    again = await client.get(links[0], headers={"User-Agent": BROWSER})
    assert again.headers["location"] == urls[0]

    # Tampered: another position, another digest, a cut signature: a page, never a redirect.
    body, signature = links[1].rsplit(".", 1)
    for bad in (
        links[1][:-1] + ("A" if links[1][-1] != "A" else "B"),
        body.rsplit(".", 1)[0] + ".2." + signature,
        "/r/1.1.0.AAAAAAAAAAAAAAAA",
        "/r/https:evil.example",
        links[1][:-3],
    ):
        response = await client.get(bad, headers={"User-Agent": BROWSER})
        assert response.status_code == 400, bad
        assert "location" not in response.headers
        assert 'href="/archive?lang=fr"' in response.text
    # A signed position the digest does not have: also the page.
    tokens: Tokens = app.state.tokens
    ref = tokens.read_click_token(links[0].removeprefix("/r/"))
    beyond = tokens.click_token(ref.delivery_id, ref.digest_id, 9)
    assert (await client.get(f"/r/{beyond}")).status_code == 400

    recorder: ClickRecorder = app.state.click_recorder
    await recorder.flush(everything=True)
    figures = await numbers(client, editor_headers, digest["id"])
    assert figures["delivered"] == len(READERS)
    assert figures["clicks"] == {"total": 2, "unique": 1, "machine": 0}
    first_article = figures["articles"][0]
    assert (first_article["clicks"], first_article["unique"]) == (2, 1)
    assert figures["articles"][1]["clicks"] == 0
    # aggregate: no reader's record, only keyed tags.
    events = (await session.exec(sa.select(SubscriberEvent.event))).all()  # type: ignore[call-overload]
    assert "clicked" not in {e[0] for e in events}
    assert (await session.exec(sa.select(sa.func.count()).select_from(ClickSeen))).one()[0] == 2  # type: ignore[call-overload]

    csv_file = await client.get(
        f"/api/v1/digests/{digest['id']}/clicks.csv", headers=editor_headers
    )
    assert csv_file.status_code == 200
    assert csv_file.headers["content-type"].startswith("text/csv")
    lines = csv_file.text.splitlines()
    assert lines[0] == "position,title,url,clicks,unique_readers,machine_clicks"
    assert lines[1].endswith(",2,1,0")

    metrics = (await client.get("/metrics")).text
    assert 'clicks_total{kind="reader"} 2.0' in metrics
    assert "click_redirects_total 2.0" in metrics


async def test_scanner_script_counted_as_machine_clicks(
    app: FastAPI,
    client: httpx.AsyncClient,
    session: AsyncSession,
    editor_headers: dict[str, str],
    smtp_server: SmtpServer,
) -> None:
    digest = await _send(app, client, session, editor_headers)
    await age_copies(session, digest["id"])
    copies = {a: tracked_links(text_part(smtp_server.messages_to(a)[0])) for a in READERS}
    # A corporate scanner opens every link of two copies at once, with a browser's agent...
    for address in READERS[:2]:
        for link in copies[address]:
            assert (await client.get(link, headers={"User-Agent": BROWSER})).status_code == 302
    # ...another checks with HEAD, another announces itself.
    for link in copies[READERS[2]]:
        await client.head(link, headers={"User-Agent": BROWSER})
    await client.get(copies[READERS[2]][0], headers={"User-Agent": "Mimecast URL scanner"})
    # Three readers each open one article (the scanned reader 2 too, later on).
    for address, position in ((READERS[2], 1), (READERS[3], 0), (READERS[4], 0)):
        response = await client.get(copies[address][position], headers={"User-Agent": BROWSER})
        assert response.status_code == 302
    recorder: ClickRecorder = app.state.click_recorder
    await recorder.flush(everything=True)
    figures = await numbers(client, editor_headers, digest["id"])
    assert figures["clicks"] == {"total": 3, "unique": 3, "machine": 6 + 3 + 1}
    per_article = [(a["clicks"], a["unique"]) for a in figures["articles"]]
    assert per_article == [(2, 2), (1, 1), (0, 0)]


async def test_clicks_right_after_delivery_are_machine_clicks(
    app: FastAPI,
    client: httpx.AsyncClient,
    session: AsyncSession,
    editor_headers: dict[str, str],
    smtp_server: SmtpServer,
) -> None:
    digest = await _send(app, client, session, editor_headers)  # delivered just now
    link = tracked_links(text_part(smtp_server.messages_to(READERS[0])[0]))[0]
    assert (await client.get(link, headers={"User-Agent": BROWSER})).status_code == 302
    await app.state.click_recorder.flush(everything=True)
    figures = await numbers(client, editor_headers, digest["id"])
    assert figures["clicks"] == {"total": 0, "unique": 0, "machine": 1}


def test_burst_rule() -> None:
    t0 = datetime(2026, 1, 1, tzinfo=UTC)

    def at(seconds: float) -> datetime:
        return t0 + timedelta(seconds=seconds)

    clicks = [scanners.TimedClick(p, at(s)) for p, s in ((0, 0), (1, 0.4), (2, 0.9))]
    assert scanners.burst_positions(clicks, link_count=10)
    spread = [scanners.TimedClick(p, at(s)) for p, s in ((0, 0), (1, 40), (2, 95))]
    assert not scanners.burst_positions(spread, link_count=10)
    same_link = [scanners.TimedClick(0, at(s)) for s in (0, 0.5, 1)]
    assert not scanners.burst_positions(same_link, link_count=10)
    two_of_two = [scanners.TimedClick(p, at(s)) for p, s in ((0, 0), (1, 1))]
    assert scanners.burst_positions(two_of_two, link_count=2)
    assert not scanners.burst_positions(two_of_two[:1], link_count=1)
    assert scanners.agent_reason("HEAD", BROWSER) == "head"
    assert scanners.agent_reason("GET", "") == "agent"
    assert scanners.agent_reason("GET", "python-httpx/0.27") == "agent"
    assert scanners.agent_reason("GET", BROWSER) is None


async def test_per_reader_history_and_nothing_lost_on_shutdown(
    database_url: str, smtp_server: SmtpServer, tmp_path: Path
) -> None:
    settings: Settings = make_settings(
        database_url, smtp_server, tmp_path, track_clicks="per_reader"
    )
    application = create_app(settings)
    async with application.router.lifespan_context(application):
        transport = httpx.ASGITransport(app=application)
        async with (
            httpx.AsyncClient(transport=transport, base_url="http://testserver") as client,
            application.state.sessionmaker() as session,
        ):
            headers = await make_editor_headers(session)
            digest = await _send(application, client, session, headers)
            await age_copies(session, digest["id"])
            link = tracked_links(text_part(smtp_server.messages_to(READERS[0])[0]))[1]
            assert (await client.get(link, headers={"User-Agent": BROWSER})).status_code == 302
            assert application.state.click_recorder.held == 1  # held for its burst window
    # The lifespan ended with the click still held: its last flush counted it.
    application = create_app(settings)
    async with application.router.lifespan_context(application):
        transport = httpx.ASGITransport(app=application)
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
            figures = await numbers(client, headers, digest["id"])
            assert figures["clicks"]["total"] == 1
            record = await client.get(f"/api/v1/subscribers/{READERS[0]}", headers=headers)
            events = [e for e in record.json()["history"] if e["event"] == "clicked"]
            assert len(events) == 1
            assert digest["articles"][1]["url"] in events[0]["detail"]
            # Erasure takes the reader's clicks with it; the counters stay.
            erased = await client.delete(f"/api/v1/subscribers/{READERS[0]}", headers=headers)
            assert erased.status_code == 204
            async with application.state.sessionmaker() as session:
                clicked = await session.exec(
                    sa.select(sa.func.count())
                    .select_from(SubscriberEvent)
                    .where(col(SubscriberEvent.event) == "clicked")
                )
                assert clicked.one()[0] == 0
            assert (await numbers(client, headers, digest["id"]))["clicks"]["total"] == 1


async def test_off_links_go_straight_to_the_site(
    database_url: str, smtp_server: SmtpServer, tmp_path: Path
) -> None:
    settings = make_settings(database_url, smtp_server, tmp_path, track_clicks="off")
    application = create_app(settings)
    async with application.router.lifespan_context(application):
        assert application.state.click_recorder is None
        transport = httpx.ASGITransport(app=application)
        async with (
            httpx.AsyncClient(transport=transport, base_url="http://testserver") as client,
            application.state.sessionmaker() as session,
        ):
            headers = await make_editor_headers(session)
            digest = await _send(application, client, session, headers)
            text = text_part(smtp_server.messages_to(READERS[0])[0])
            assert "/r/" not in text
            for article in digest["articles"]:
                assert article["url"] in text


async def test_recorder_keeps_what_it_could_not_write(
    app: FastAPI, client: httpx.AsyncClient, session: AsyncSession, editor_headers: dict[str, str]
) -> None:
    digest = Digest(subject="Kept", status="sent")
    session.add(digest)
    await session.commit()
    assert digest.id is not None
    recorder: ClickRecorder = app.state.click_recorder
    now = datetime.now(UTC)
    # The database is away: nothing is lost, the clicks wait for the next flush.
    recorder.add(Click(1, digest.id, 0, now, None))
    real = recorder.sessionmaker
    nowhere = make_engine(f"postgresql://postgres@127.0.0.1:{free_port()}/none")
    recorder.sessionmaker = make_sessionmaker(nowhere)
    with pytest.raises(OSError, match="refused|Connect"):
        await recorder.flush(everything=True)
    assert recorder.held == 1
    await nowhere.dispose()
    recorder.sessionmaker = real
    # A click of a digest deleted meanwhile can never be written: dropped, the others counted.
    recorder.add(Click(2, 999_999, 0, now, None))
    assert await recorder.flush(everything=True) == 1
    assert recorder.held == 0
    assert (await numbers(client, editor_headers, digest.id))["clicks"]["total"] == 1


async def test_fast_path_answers_as_the_route(
    app: FastAPI, client: httpx.AsyncClient, session: AsyncSession
) -> None:
    """The first click of a digest goes through the route (it loads the links); the next ones
    through ClickFastPath: same status, Location (quoted alike) and caching."""
    digest = Digest(subject="Accents", status="sent")
    session.add(digest)
    await session.flush()
    assert digest.id is not None
    odd = 'https://www.example.org/été/a b|c?x=1&y="2"#frag'
    session.add(DigestArticle(digest_id=digest.id, position=0, title="É", url=odd))
    await session.commit()
    tokens: Tokens = app.state.tokens
    link = f"/r/{tokens.click_token(1, digest.id, 0)}"
    assert app.state.click_links.known(digest.id) is None
    by_route = await client.get(link, headers={"User-Agent": BROWSER})
    assert app.state.click_links.known(digest.id) is not None
    by_fast_path = await client.get(link, headers={"User-Agent": BROWSER})
    for response in (by_route, by_fast_path):
        assert response.status_code == 302
        assert response.headers["cache-control"] == "no-store"
        assert response.headers["referrer-policy"] == "no-referrer"
        assert response.content == b""
    assert by_route.headers["location"] == by_fast_path.headers["location"]
    assert by_route.headers["location"].startswith("https://www.example.org/%C3%A9t%C3%A9/a%20b")
    assert app.state.click_recorder.held == 2


async def test_opens_only_when_turned_on_with_the_warning(
    database_url: str, smtp_server: SmtpServer, tmp_path: Path
) -> None:
    settings = make_settings(database_url, smtp_server, tmp_path, track_opens=True)
    application = create_app(settings)
    async with application.router.lifespan_context(application):
        transport = httpx.ASGITransport(app=application)
        async with (
            httpx.AsyncClient(transport=transport, base_url="http://testserver") as client,
            application.state.sessionmaker() as session,
        ):
            headers = await make_editor_headers(session)
            digest = await _send(application, client, session, headers)
            html = html_part(smtp_server.messages_to(READERS[0])[0])
            pixel = re.search(r'<img src="http://testserver(/o/[A-Za-z0-9._-]+)"', html)
            assert pixel is not None
            for _ in range(2):  # Apple's proxy, then the reader: one copy, two fetches
                image = await client.get(pixel.group(1))
                assert image.status_code == 200
                assert image.headers["content-type"] == "image/gif"
            checked = await client.head(pixel.group(1))  # a link checker: not an open
            assert (checked.status_code, checked.headers["content-type"]) == (200, "image/gif")
            assert (await client.get("/o/1.1.AAAAAAAAAAAAAAAA")).status_code == 400
            # The preview's pixel fetches nothing.
            preview = await client.get(f"/api/v1/digests/{digest['id']}/preview", headers=headers)
            assert "/o/" not in preview.text
            assert 'src="data:image/gif' in preview.text
            await application.state.click_recorder.flush(everything=True)
            figures = await numbers(client, headers, digest["id"])
            assert figures["opens"]["total"] == 2
            assert figures["opens"]["unique"] == 1
            assert "Apple Mail Privacy Protection" in figures["opens"]["warning"]
            assert figures["clicks"] == {"total": 0, "unique": 0, "machine": 0}


async def test_no_open_pixel_by_default(
    app: FastAPI,
    client: httpx.AsyncClient,
    session: AsyncSession,
    editor_headers: dict[str, str],
    smtp_server: SmtpServer,
) -> None:
    digest = await _send(app, client, session, editor_headers)
    html = html_part(smtp_server.messages_to(READERS[0])[0])
    assert "/o/" not in html
    assert "<img" not in html  # the sample's articles have no image: nothing else fetched
    assert (await numbers(client, editor_headers, digest["id"]))["opens"] is None
