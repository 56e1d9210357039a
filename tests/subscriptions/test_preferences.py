"""Readers' choices: cadence and topics at signup (form and JSON), and the preferences page
(GET shows and changes nothing, POST saves; a signed link scoped to preferences)."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from fastapi import FastAPI
from sqlmodel import select
from sqlmodel.ext.asyncio.session import AsyncSession

from app.main import create_app
from app.models import Subscriber, SubscriberStatus
from app.security import Tokens
from tests.conftest import make_settings
from tests.factories import make_subscriber
from tests.smtp_server import SmtpServer

TOPICS = "International,Économie,Culture"


@pytest.fixture
async def app(database_url: str, smtp_server: SmtpServer, tmp_path: Path) -> AsyncIterator[FastAPI]:
    settings = make_settings(
        database_url, smtp_server, tmp_path, topics=TOPICS, default_cadence="daily"
    )
    application = create_app(settings)
    async with application.router.lifespan_context(application):
        yield application


async def stored(session: AsyncSession, email: str) -> Subscriber:
    row = await session.exec(
        select(Subscriber)
        .where(Subscriber.email == email)
        .execution_options(populate_existing=True)
    )
    return row.one()


async def test_json_signup_takes_cadence_and_topics(
    client: httpx.AsyncClient, session: AsyncSession
) -> None:
    response = await client.post(
        "/api/v1/subscriptions",
        json={"email": "a@example.org", "cadence": "weekly", "topics": ["ÉCONOMIE", "culture"]},
    )
    assert response.status_code == 202
    reader = await stored(session, "a@example.org")
    assert reader.cadence == "weekly"
    assert reader.topics == ["Économie", "Culture"]  # as TOPICS spells them
    await client.post("/api/v1/subscriptions", json={"email": "b@example.org"})
    plain = await stored(session, "b@example.org")
    assert plain.cadence == "daily"  # DEFAULT_CADENCE
    assert plain.topics == []


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"cadence": "monthly"}, "cadence"),
        ({"topics": ["Sport"]}, "topics"),
        ({"topics": "Culture"}, "topics"),
    ],
)
async def test_json_signup_refuses_unknown_choices(
    client: httpx.AsyncClient, body: dict[str, object], field: str
) -> None:
    response = await client.post("/api/v1/subscriptions", json={"email": "c@example.org", **body})
    assert response.status_code == 422
    assert field in [e["loc"][-1] for e in response.json()["detail"]]


async def test_form_shows_topics_and_takes_choices(
    client: httpx.AsyncClient, session: AsyncSession
) -> None:
    page = await client.get("/subscribe")
    assert 'name="topics" value="Économie"' in page.text
    assert re.search(r'value="daily"\s+checked', page.text)  # DEFAULT_CADENCE preselected
    response = await client.post(
        "/subscribe",
        data={"email": "form@example.org", "cadence": "weekly", "topics": ["International"]},
    )
    assert response.status_code == 200
    reader = await stored(session, "form@example.org")
    assert (reader.cadence, reader.topics) == ("weekly", ["International"])
    bad = await client.post(
        "/subscribe", data={"email": "form2@example.org", "topics": ["Astrologie"]}
    )
    assert bad.status_code == 422
    assert "Choisissez parmi les sujets proposés." in bad.text


async def test_form_without_topics_setting_shows_none(
    database_url: str, smtp_server: SmtpServer, tmp_path: Path
) -> None:
    application = create_app(make_settings(database_url, smtp_server, tmp_path))
    async with application.router.lifespan_context(application):
        transport = httpx.ASGITransport(app=application)
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as c:
            page = await c.get("/subscribe")
    assert page.status_code == 200
    assert 'name="topics"' not in page.text
    assert 'name="cadence"' in page.text


async def test_preferences_page_shows_then_post_saves(
    app: FastAPI, client: httpx.AsyncClient, session: AsyncSession
) -> None:
    tokens: Tokens = app.state.tokens
    reader = await make_subscriber(session, tokens, email="p@example.org", cadence="weekly")
    assert reader.id is not None
    token = tokens.preferences_token(reader.id, reader.email_hash)

    page = await client.get(f"/preferences/{token}")
    assert page.status_code == 200
    assert re.search(r'value="weekly"\s+checked', page.text)
    assert "/unsubscribe/" in page.text  # a way out
    assert (await stored(session, "p@example.org")).updated_at == reader.updated_at  # GET: no write

    saved = await client.post(
        f"/preferences/{token}",
        data={"cadence": "daily", "topics": ["economie"], "name": "Zoé", "language": "en"},
    )
    assert saved.status_code == 200
    assert "Your preferences are saved." in saved.text  # the page follows the new language
    after = await stored(session, "p@example.org")
    assert (after.cadence, after.topics, after.name, after.language) == (
        "daily",
        ["Économie"],
        "Zoé",
        "en",
    )
    assert after.status == SubscriberStatus.confirmed

    cleared = await client.post(f"/preferences/{token}", data={"cadence": "daily"})
    assert cleared.status_code == 200
    assert (await stored(session, "p@example.org")).topics == []  # nothing ticked: everything

    bad = await client.post(f"/preferences/{token}", data={"cadence": "hourly"})
    assert bad.status_code == 422
    assert (await stored(session, "p@example.org")).cadence == "daily"


async def test_preferences_links_are_scoped_and_signed(
    app: FastAPI, client: httpx.AsyncClient, session: AsyncSession
) -> None:
    tokens: Tokens = app.state.tokens
    reader = await make_subscriber(session, tokens, email="s@example.org")
    assert reader.id is not None
    unsubscribe = tokens.unsubscribe_token(reader.id, reader.email_hash)
    for token in (unsubscribe, "forged", tokens.preferences_token(reader.id, "f" * 16)):
        assert (await client.get(f"/preferences/{token}")).status_code == 400
        response = await client.post(f"/preferences/{token}", data={"cadence": "daily"})
        assert response.status_code == 400
    # and a preferences token does not unsubscribe
    preferences = tokens.preferences_token(reader.id, reader.email_hash)
    assert (await client.post(f"/unsubscribe/{preferences}")).status_code == 400
    assert (await stored(session, "s@example.org")).status == SubscriberStatus.confirmed
