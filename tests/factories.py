"""Small factories and helpers shared by the tests."""

from __future__ import annotations

import asyncio
import re
from datetime import datetime, timedelta
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import httpx
from fastapi import FastAPI
from sqlmodel import select
from sqlmodel.ext.asyncio.session import AsyncSession
from typer.testing import Result

from app.background import make_sender as build_sender
from app.config import Settings
from app.models import Article, Delivery, DeliveryKind, Subscriber, SubscriberStatus, utcnow
from app.security import Tokens
from app.worker.sender import BatchReport, Sender

SAMPLE_FEED = Path(__file__).parent / "data" / "wordpress-feed-fr.xml"


async def make_subscriber(
    session: AsyncSession,
    tokens: Tokens,
    *,
    email: str = "reader@example.org",
    name: str | None = "Reader",
    status: SubscriberStatus = SubscriberStatus.confirmed,
    language: str = "fr",
    cadence: str = "weekly",
    topics: list[str] | None = None,
) -> Subscriber:
    subscriber = Subscriber(
        email=email.lower(),
        email_hash=tokens.email_hash(email.lower()),
        name=name,
        status=status,
        language=language,
        cadence=cadence,
        topics=topics or [],
        confirmed_at=utcnow() if status == SubscriberStatus.confirmed else None,
    )
    session.add(subscriber)
    await session.commit()
    await session.refresh(subscriber)
    return subscriber


def make_sender(app: FastAPI) -> Sender:
    return build_sender(
        app.state.settings, app.state.sessionmaker, app.state.mailer, app.state.tokens
    )


async def send_one_batch(app: FastAPI) -> BatchReport:
    return await make_sender(app).run_batch()


async def drain_outbox(app: FastAPI, *, max_batches: int = 100) -> BatchReport:
    """Run the real sender until the outbox has nothing claimable; return the summed report."""
    sender = make_sender(app)
    total = BatchReport()
    for _ in range(max_batches):
        report = await sender.run_batch()
        total.add(report)
        if report.claimed == 0:  # and the bounces it held are settled
            break
    return total


def text_part(message: EmailMessage) -> str:
    part = message.get_body(preferencelist=("plain",))
    assert part is not None
    return str(part.get_content())


def html_part(message: EmailMessage) -> str:
    part = message.get_body(preferencelist=("html",))
    assert part is not None
    return str(part.get_content())


def link_in(message: EmailMessage, path: str) -> str:
    """The first link to PUBLIC_URL/<path>/... in the text part, as a path for the test client."""
    match = re.search(rf"http://testserver(/{path}/[A-Za-z0-9_.\-]+)", text_part(message))
    assert match, f"no /{path}/ link in:\n{text_part(message)}"
    return match.group(1)


async def queue_confirmations(
    session: AsyncSession, tokens: Tokens, count: int, *, prefix: str = "reader"
) -> list[int]:
    """`count` pending subscribers, each with one queued confirmation delivery; their ids."""

    subscribers = [
        Subscriber(
            email=f"{prefix}{i}@example.org",
            email_hash=tokens.email_hash(f"{prefix}{i}@example.org"),
            status=SubscriberStatus.pending,
        )
        for i in range(count)
    ]
    session.add_all(subscribers)
    await session.flush()
    session.add_all(
        Delivery(kind=DeliveryKind.confirmation, subscriber_id=s.id, language="fr")
        for s in subscribers
    )
    await session.commit()
    return [s.id for s in subscribers if s.id is not None]


async def editor_headers(session: AsyncSession, *, name: str = "tests") -> dict[str, str]:
    """A fresh editor API key, as request headers."""
    from app.editors import create_api_key

    _, key = await create_api_key(session, name=name)
    await session.commit()
    return {"Authorization": f"Bearer {key}"}


def cli_env(settings: Settings, **extra: str) -> dict[str, str]:
    """The environment a `newsletter` command needs to act on the test's database."""
    env = {
        "APP_ENV": "test",
        "DATABASE_URL": settings.database_url,
        "SECRET_KEY": settings.secret_key,
        "MAIL_FROM": settings.mail_from,
        "PUBLIC_URL": settings.public_url,
        "VERP": "true" if settings.verp else "false",
        "LOG_LEVEL": "WARNING",
    }
    env.update(extra)
    return env


async def run_cli(args: list[str], env: dict[str, str]) -> Result:
    """`newsletter ARGS` in-process (typer's CliRunner), off the event loop: the command runs
    its own asyncio loop and its own engine, as it would from a shell."""
    from typer.testing import CliRunner

    from app.cli import cli

    runner = CliRunner()
    return await asyncio.to_thread(lambda: runner.invoke(cli, args, env=env))


async def digest_deliveries(session: AsyncSession, digest_id: int) -> list[Delivery]:
    """The digest copies of one digest, fresh from the database."""

    session.expire_all()
    rows = await session.exec(
        select(Delivery).where(
            Delivery.digest_id == digest_id, Delivery.kind == DeliveryKind.digest
        )
    )
    return list(rows.all())


async def sent_digest(
    app: FastAPI, client: httpx.AsyncClient, headers: dict[str, str], **body: object
) -> dict[str, Any]:
    """A digest created through the API with `body`, sent, and delivered by the real sender."""
    response = await client.post("/api/v1/digests", json=body, headers=headers)
    assert response.status_code == 201, response.text
    digest: dict[str, Any] = response.json()
    response = await client.post(f"/api/v1/digests/{digest['id']}/send", headers=headers)
    assert response.status_code == 202, response.text
    await drain_outbox(app)
    return digest


async def import_feed_sample(session: AsyncSession) -> None:
    """The French WordPress sample feed's articles."""
    from app.articles import service as articles

    await articles.import_feed_document(session, data=SAMPLE_FEED.read_bytes())
    await session.commit()


class Clock:
    """An injectable clock that tests move instead of waiting."""

    def __init__(self, now: datetime) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now

    def advance(self, delta: timedelta) -> datetime:
        self.now += delta
        return self.now


async def make_article(
    session: AsyncSession,
    *,
    title: str,
    published_at: datetime,
    categories: list[str] | None = None,
) -> Article:
    slug = f"{title.lower().replace(' ', '-')}-{published_at:%Y%m%d%H%M%S%f}"
    article = Article(
        url=f"https://news.example.org/{slug}",
        title=title,
        summary=f"About {title}.",
        categories=categories or [],
        published_at=published_at,
        created_at=published_at,
    )
    session.add(article)
    await session.commit()
    await session.refresh(article)
    return article
