"""Set and forget, end to end: the real WordPress feed served over HTTP (FEED_URL, polled by the
scheduler first), readers who sign up with a cadence and topics (one changes them on the
preferences page), a daily and a weekly schedule, a clock moved hour by hour over a week, the
real sender and SMTP. Each reader receives exactly the digests and the articles they chose."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta
from email.message import EmailMessage
from pathlib import Path

import httpx
import pytest
from fastapi import FastAPI
from sqlmodel import col, select

from app.main import create_app
from app.models import Delivery, Subscriber
from app.schedules import service
from app.schedules.runner import Scheduler
from tests.conftest import make_settings
from tests.factories import Clock, drain_outbox, link_in, text_part
from tests.feed_server import FeedServer, Page
from tests.smtp_server import SmtpServer

FEED = Path(__file__).resolve().parent.parent / "data" / "wordpress-feed-fr.xml"
# The feed's five articles (Dec 2021), by a piece of each one's link.
GAS = "economie-prix-du-gaz"  # Mon 27 07:30 UTC, Économie
BETI = "langue-beti"  # Tue 28 15:45, Culture
NEWSLETTER = "newsletter-ce-qui-change"  # Wed 29 09:00, Vie du site
GENEVA = "geneve-pourparlers"  # Thu 30 11:20, International + Europe
RUSSIA = "poutine-et-biden"  # Thu 30 17:05, Non classé


@pytest.fixture
def feed_server() -> Iterator[FeedServer]:
    server = FeedServer()
    server.pages["/feed/"] = Page(FEED.read_bytes())
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
async def newsroom(
    database_url: str, smtp_server: SmtpServer, tmp_path: Path, feed_server: FeedServer
) -> AsyncIterator[FastAPI]:
    settings = make_settings(
        database_url,
        smtp_server,
        tmp_path,
        feed_url=feed_server.url("/feed/"),
        feed_allow_private_networks=True,  # the feed server is on loopback
        topics="International,Économie,Culture,Sport",
        default_cadence="weekly",
        track_clicks="off",  # the articles' own URLs in the copies (tests/clicks: tracked links)
    )
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        yield app


async def sign_up(client: httpx.AsyncClient, app: FastAPI, email: str, **choices: object) -> None:
    response = await client.post("/api/v1/subscriptions", json={"email": email, **choices})
    assert response.status_code == 202, response.text


async def confirm(client: httpx.AsyncClient, app: FastAPI, email: str) -> Subscriber:
    async with app.state.sessionmaker() as session:
        reader = (await session.exec(select(Subscriber).where(Subscriber.email == email))).one()
    assert reader.id is not None
    token = app.state.tokens.confirm_token(reader.id, reader.email_hash)
    assert (await client.post(f"/confirm/{token}")).status_code == 200
    return reader


def titles(message: EmailMessage) -> list[str]:
    """The links to the site's articles in a digest's text part: one per article."""
    return re.findall(r"https://www\.dzaleu\.com/\S+", text_part(message))


def has(message_titles: list[str], *pieces: str) -> bool:
    return len(message_titles) == len(pieces) and all(
        any(piece in title for title in message_titles) for piece in pieces
    )


async def test_readers_receive_exactly_the_digests_and_articles_they_chose(
    newsroom: FastAPI, smtp_server: SmtpServer, feed_server: FeedServer
) -> None:
    app = newsroom
    transport = httpx.ASGITransport(app=app, client=("203.0.113.9", 50000))
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
        await sign_up(client, app, "alice@example.org")  # DEFAULT_CADENCE, every topic
        await sign_up(client, app, "bruno@example.org", cadence="weekly", topics=["economie"])
        await sign_up(
            client, app, "chloe@example.org", cadence="daily", topics=["Culture", "INTERNATIONAL"]
        )
        await sign_up(client, app, "david@example.org", cadence="daily")
        await sign_up(client, app, "eve@example.org", topics=["Sport"])
        await sign_up(client, app, "frank@example.org", cadence="daily")  # never confirms
        readers = {
            name: await confirm(client, app, f"{name}@example.org")
            for name in ("alice", "bruno", "chloe", "david", "eve")
        }
        assert readers["alice"].cadence == "weekly"
        assert readers["bruno"].topics == ["Économie"]  # spelled as in TOPICS
        assert readers["chloe"].topics == ["Culture", "International"]

        # Eve moves to the daily digest on her preferences page (a form POST).
        eve = readers["eve"]
        assert eve.id is not None
        token = app.state.tokens.preferences_token(eve.id, eve.email_hash)
        saved = await client.post(
            f"/preferences/{token}",
            data={"cadence": "daily", "topics": ["Sport"], "name": "Ève", "language": "fr"},
        )
        assert saved.status_code == 200, saved.text

        clock = Clock(datetime(2021, 12, 26, 12, tzinfo=UTC))  # a Sunday
        async with app.state.sessionmaker() as session:
            for name, cron, cadence in (
                ("Le quotidien", "0 8 * * *", "daily"),
                ("L'hebdo", "0 8 * * 5", "weekly"),
            ):
                await service.create_schedule(
                    session,
                    values={
                        "name": name,
                        "cron": cron,
                        "timezone": "Europe/Paris",
                        "cadence": cadence,
                        "min_articles": 1,
                        "max_articles": 15,
                        "categories": [],
                        "subject": None,
                        "intro": None,
                        "enabled": True,
                    },
                    now=clock.now,
                )
            await session.commit()

        scheduler = Scheduler(app.state.settings, app.state.sessionmaker, clock=clock)
        outcomes: list[tuple[str, str]] = []
        while clock.now < datetime(2021, 12, 31, 12, tzinfo=UTC):
            for run in await scheduler.run_due():
                outcomes.append((f"{clock.now:%a %H:%M}", run.outcome))
            clock.advance(timedelta(hours=1))
        await drain_outbox(app)

        assert outcomes == [
            ("Mon 07:00", "skipped_not_enough_articles"),  # the gas article comes at 07:30
            ("Tue 07:00", "sent"),
            ("Wed 07:00", "sent"),
            ("Thu 07:00", "sent"),
            ("Fri 07:00", "sent"),  # daily
            ("Fri 07:00", "sent"),  # weekly
        ]
        assert feed_server.requests, "the feed was polled"

        def inbox(name: str) -> list[list[str]]:
            """The digests a reader got (a confirmation email has no List-Unsubscribe)."""
            messages = smtp_server.messages_to(f"{name}@example.org")
            return [titles(m) for m in messages if m["List-Unsubscribe"]]

        alice, bruno, chloe, david = (inbox(n) for n in ("alice", "bruno", "chloe", "david"))
        assert len(alice) == 1
        assert has(alice[0], GENEVA, RUSSIA, NEWSLETTER, BETI, GAS)
        assert len(bruno) == 1
        assert has(bruno[0], GAS)
        assert len(chloe) == 2
        assert has(chloe[0], BETI)
        assert has(chloe[1], GENEVA)
        assert len(david) == 4
        assert [len(d) for d in david] == [1, 1, 1, 2]
        assert has(david[3], GENEVA, RUSSIA)
        assert inbox("eve") == []  # daily now, and nothing about sport this week
        assert inbox("frank") == []  # never confirmed
        assert len(smtp_server.messages_to("frank@example.org")) == 1  # the confirmation email

        async with app.state.sessionmaker() as session:
            eve_rows = (
                await session.exec(select(Delivery).where(col(Delivery.subscriber_id) == eve.id))
            ).all()
        digest_rows = [d for d in eve_rows if d.kind == "digest"]
        assert len(digest_rows) == 4
        assert {(d.status, d.last_error) for d in digest_rows} == {
            ("skipped", "nothing in the reader's topics")
        }

        # Every digest's footer links to the reader's preferences; the page shows, changes nothing.
        message = smtp_server.messages_to("chloe@example.org")[0]
        page = await client.get(link_in(message, "preferences"))
        assert page.status_code == 200
        assert re.search(r'value="daily"\s+checked', page.text)
        assert re.search(r'value="International"\s+checked', page.text)
