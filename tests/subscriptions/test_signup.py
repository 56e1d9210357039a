"""The double opt-in flow end to end: form -> outbox -> real SMTP -> link -> confirmed."""

from __future__ import annotations

import mailbox
import statistics
from pathlib import Path

import httpx
import pytest
from fastapi import FastAPI
from sqlmodel import func, select
from sqlmodel.ext.asyncio.session import AsyncSession

from app.models import Delivery, DeliveryStatus, Subscriber, SubscriberStatus
from tests.factories import (
    drain_outbox,
    html_part,
    link_in,
    make_subscriber,
    send_one_batch,
    text_part,
)
from tests.smtp_server import SmtpServer


async def subscriber_by_email(session: AsyncSession, email: str) -> Subscriber | None:
    session.expire_all()
    # Addresses are kept as typed (RFC 5321: the local part is case-sensitive) and compared
    # without regard to case.
    return (
        await session.exec(select(Subscriber).where(func.lower(Subscriber.email) == email.lower()))
    ).first()


async def test_form_signup_email_link_confirmed(
    client: httpx.AsyncClient, app: FastAPI, session: AsyncSession, smtp_server: SmtpServer
) -> None:
    page = await client.get("/subscribe")
    assert page.status_code == 200
    assert 'lang="fr"' in page.text
    assert 'for="email"' in page.text

    response = await client.post(
        "/subscribe",
        data={"email": "Lecteur@Example.ORG", "name": "Amélie", "website": ""},
        headers={"user-agent": "Mozilla/5.0 test"},
    )
    assert response.status_code == 200
    assert "Vérifiez votre boîte" in response.text

    subscriber = await subscriber_by_email(session, "lecteur@example.org")
    assert subscriber is not None
    assert subscriber.status == SubscriberStatus.pending
    assert subscriber.consent_source == "form"
    assert subscriber.consent_ip == "203.0.113.7"
    assert subscriber.consent_user_agent == "Mozilla/5.0 test"
    assert subscriber.consent_at is not None
    assert subscriber.language == "fr"
    assert smtp_server.received == []  # the request never talks SMTP

    report = await drain_outbox(app)
    assert report.sent == 1
    [message] = smtp_server.messages_to("lecteur@example.org")
    assert message.get_content_type() == "multipart/alternative"
    assert message["Message-ID"]
    assert message["From"] == "Dzaleu <newsletter@dzaleu.test>"
    assert "Confirmez" in message["Subject"]
    assert "List-Unsubscribe" not in message  # not on the list yet
    assert "Amélie" in text_part(message)
    assert "Amélie" in html_part(message)
    link = link_in(message, "confirm")

    # Opening the link (what a mail scanner does too) shows a form and changes nothing.
    shown = await client.get(link)
    assert shown.status_code == 200
    assert "Confirmez votre inscription" in shown.text
    assert f'<form method="post" action="{link}"' in shown.text
    assert '<script src="/static/confirm.js" defer></script>' in shown.text
    subscriber = await subscriber_by_email(session, "lecteur@example.org")
    assert subscriber is not None
    assert subscriber.status == SubscriberStatus.pending
    assert (await client.get(link)).status_code == 200
    session.expire_all()
    subscriber = await subscriber_by_email(session, "lecteur@example.org")
    assert subscriber is not None
    assert subscriber.status == SubscriberStatus.pending

    # The form's POST (its script, or the button) confirms.
    confirmed = await client.post(link, data={"lang": "fr"})
    assert confirmed.status_code == 200
    assert "Inscription confirmée" in confirmed.text
    session.expire_all()
    subscriber = await subscriber_by_email(session, "lecteur@example.org")
    assert subscriber is not None
    assert subscriber.status == SubscriberStatus.confirmed
    first_confirmed_at = subscriber.confirmed_at

    again = await client.post(link)  # idempotent: same success page, same timestamp
    assert again.status_code == 200
    assert "Inscription confirmée" in again.text
    # The old link, opened again, shows the success page too.
    assert "Inscription confirmée" in (await client.get(link)).text
    subscriber = await subscriber_by_email(session, "lecteur@example.org")
    assert subscriber is not None
    assert subscriber.confirmed_at == first_confirmed_at


async def test_json_signup_in_english(
    client: httpx.AsyncClient, app: FastAPI, smtp_server: SmtpServer, session: AsyncSession
) -> None:
    response = await client.post(
        "/api/v1/subscriptions", json={"email": "reader@example.com", "language": "en"}
    )
    assert response.status_code == 202
    assert response.json() == {"status": "pending"}
    await drain_outbox(app)
    [message] = smtp_server.messages_to("reader@example.com")
    assert message["Subject"] == "Confirm your subscription to the Dzaleu newsletter"
    shown = await client.get(link_in(message, "confirm"))
    assert "Confirm your subscription" in shown.text
    assert 'lang="en"' in shown.text
    confirmed = await client.post(link_in(message, "confirm"), data={"lang": "en"})
    assert "Subscription confirmed" in confirmed.text
    subscriber = await subscriber_by_email(session, "reader@example.com")
    assert subscriber is not None
    assert subscriber.consent_source == "api"


async def test_form_language_default_query_and_accept_language(
    app: FastAPI, client: httpx.AsyncClient
) -> None:
    assert 'lang="en"' in (await client.get("/subscribe?lang=en")).text
    # DEFAULT_LANGUAGE (fr): a French site's readers get French whatever their browser says,
    # unless they choose English (the link in the footer).
    english_browser = {"accept-language": "en-US,en;q=0.9"}
    page = await client.get("/subscribe", headers=english_browser)
    assert 'lang="fr"' in page.text
    assert '<a href="?lang=en" hreflang="en" lang="en">English</a>' in page.text
    # LANGUAGE_FROM_BROWSER: Babel negotiates the header against the catalogs.
    app.state.settings = app.state.settings.model_copy(update={"language_from_browser": True})
    page = await client.get("/subscribe", headers={"accept-language": "en-GB,en;q=0.9,fr;q=0.5"})
    assert 'lang="en"' in page.text
    assert "Subscribe" in page.text
    page = await client.get("/subscribe", headers={"accept-language": "de-DE, fr;q=0.3"})
    assert 'lang="fr"' in page.text
    page = await client.get("/subscribe", headers={"accept-language": "de-DE, it;q=0.3"})
    assert 'lang="fr"' in page.text  # nothing we have: DEFAULT_LANGUAGE


@pytest.mark.parametrize("bad", ["", "not-an-email", "a@b", "x@@example.org", "a b@example.org"])
async def test_bad_email_json_names_the_field(client: httpx.AsyncClient, bad: str) -> None:
    response = await client.post("/api/v1/subscriptions", json={"email": bad})
    assert response.status_code == 422
    assert response.json()["detail"][0]["loc"][-1] == "email"


async def test_address_needing_smtputf8_is_refused_clearly(
    client: httpx.AsyncClient, session: AsyncSession
) -> None:
    # An accented local part can only be delivered with SMTPUTF8, which the sender lacks.
    response = await client.post("/api/v1/subscriptions", json={"email": "josé@exemple.fr"})
    assert response.status_code == 422
    [error] = response.json()["detail"]
    assert error["loc"][-1] == "email"
    assert error["msg"] == "this address needs SMTPUTF8, which is not supported"
    form = await client.post("/subscribe", data={"email": "josé@exemple.fr"})
    assert form.status_code == 422
    assert 'aria-invalid="true"' in form.text
    assert (await session.exec(select(Subscriber))).all() == []


async def test_internationalised_domain_is_stored_as_punycode_and_mailed(
    client: httpx.AsyncClient, app: FastAPI, session: AsyncSession, smtp_server: SmtpServer
) -> None:
    response = await client.post(
        "/api/v1/subscriptions", json={"email": "Jose@Exémple.fr", "name": "José Ngom"}
    )
    assert response.status_code == 202
    [subscriber] = (await session.exec(select(Subscriber))).all()
    assert subscriber.email == "Jose@xn--exmple-cva.fr"  # the local part as typed

    report = await drain_outbox(app)
    assert (report.sent, report.failed) == (1, 0)
    [message] = smtp_server.messages_to("jose@xn--exmple-cva.fr")
    assert message["To"].addresses[0].addr_spec == "Jose@xn--exmple-cva.fr"
    assert message["To"].addresses[0].display_name == "José Ngom"
    # The same reader typing the Unicode or the punycode domain is one subscriber.
    again = await client.post("/api/v1/subscriptions", json={"email": "jose@xn--exmple-cva.fr"})
    assert again.status_code == 202
    assert len((await session.exec(select(Subscriber))).all()) == 1


async def test_json_rejects_unknown_fields_and_bad_language(client: httpx.AsyncClient) -> None:
    response = await client.post(
        "/api/v1/subscriptions", json={"email": "a@example.org", "language": "de"}
    )
    assert response.status_code == 422
    assert response.json()["detail"][0]["loc"][-1] == "language"
    response = await client.post("/api/v1/subscriptions", json={"email": "a@example.org", "x": 1})
    assert response.status_code == 422
    response = await client.post(
        "/api/v1/subscriptions", json={"email": "a@example.org", "name": "n" * 201}
    )
    assert response.status_code == 422
    assert response.json()["detail"][0]["loc"][-1] == "name"


async def test_bad_email_form_keeps_values_and_shows_message(
    client: httpx.AsyncClient, session: AsyncSession
) -> None:
    response = await client.post("/subscribe", data={"email": "nope", "name": "Jean <b>"})
    assert response.status_code == 422
    assert 'aria-invalid="true"' in response.text
    assert "adresse e-mail n&#39;est pas valide" in response.text or "pas valide" in response.text
    assert 'value="nope"' in response.text
    assert "Jean &lt;b&gt;" in response.text  # kept, and escaped
    assert (await session.exec(select(Subscriber))).all() == []


async def test_same_answer_whatever_the_status_and_no_mail_to_confirmed(
    client: httpx.AsyncClient, app: FastAPI, session: AsyncSession, smtp_server: SmtpServer
) -> None:
    await make_subscriber(session, app.state.tokens, email="known@example.org")
    answers = []
    for email in ("known@example.org", "new@example.org", "new@example.org"):
        r = await client.post("/api/v1/subscriptions", json={"email": email})
        answers.append((r.status_code, r.json()))
        r = await client.post("/subscribe", data={"email": email})
        answers.append((r.status_code, r.text))
    assert answers[0] == answers[2] == answers[4]
    assert answers[1] == answers[3] == answers[5]
    await drain_outbox(app)
    assert smtp_server.messages_to("known@example.org") == []
    # new@ posted four times within ten minutes: one confirmation email only
    assert len(smtp_server.messages_to("new@example.org")) == 1


async def test_case_insensitive_uniqueness(
    client: httpx.AsyncClient, session: AsyncSession
) -> None:
    for email in ("Same@Example.org", "same@example.org", "SAME@EXAMPLE.ORG"):
        assert (
            await client.post("/api/v1/subscriptions", json={"email": email})
        ).status_code == 202
    assert len((await session.exec(select(Subscriber))).all()) == 1


async def test_confirmation_throttle_per_day(
    client: httpx.AsyncClient, session: AsyncSession, app: FastAPI
) -> None:
    app.state.settings.confirmation_min_interval_minutes = 0
    for _ in range(8):
        await client.post("/api/v1/subscriptions", json={"email": "bomb@example.org"})
    deliveries = (await session.exec(select(Delivery))).all()
    assert len(deliveries) == app.state.settings.confirmation_max_per_day == 5


async def test_honeypot_stores_nothing(
    client: httpx.AsyncClient, session: AsyncSession, smtp_server: SmtpServer
) -> None:
    response = await client.post(
        "/subscribe", data={"email": "bot@example.org", "website": "http://spam"}
    )
    assert response.status_code == 200
    assert "boîte" in response.text
    response = await client.post(
        "/api/v1/subscriptions", json={"email": "bot@example.org", "website": "x"}
    )
    assert response.status_code == 202
    assert (await session.exec(select(Subscriber))).all() == []
    assert (await session.exec(select(Delivery))).all() == []


async def test_hostile_name_is_harmless_in_headers_and_body(
    client: httpx.AsyncClient, app: FastAPI, smtp_server: SmtpServer
) -> None:
    name = "<script>alert(1)</script>\r\nBcc: victim@example.net"
    r = await client.post("/api/v1/subscriptions", json={"email": "evil@example.org", "name": name})
    assert r.status_code == 202
    await drain_outbox(app)
    [received] = [r for r in smtp_server.received]
    assert received.rcpt_tos == ["evil@example.org"]
    message = received.message
    assert message["Bcc"] is None
    for key, value in message.items():
        assert not set("\r\n") & set(value), key
    assert "<script>" not in html_part(message)
    assert "&lt;script&gt;" in html_part(message)
    raw_headers = received.data.split(b"\r\n\r\n", 1)[0]
    assert b"\r\nBcc:" not in raw_headers
    assert b"\nBcc:" not in raw_headers


async def test_tampered_and_cross_purpose_tokens_get_400_page(
    client: httpx.AsyncClient, app: FastAPI, session: AsyncSession
) -> None:
    tokens = app.state.tokens
    subscriber = await make_subscriber(session, tokens, status=SubscriberStatus.pending)
    good = tokens.confirm_token(subscriber.id, subscriber.email_hash)
    for bad in (
        good[:-3] + "abc",
        good[:10],
        "x",
        tokens.unsubscribe_token(subscriber.id, subscriber.email_hash),
    ):
        for method in ("GET", "POST"):
            response = await client.request(method, f"/confirm/{bad}")
            assert response.status_code == 400
            assert "/subscribe" in response.text
    unsubscribe = await client.post(f"/unsubscribe/{good}")
    assert unsubscribe.status_code == 400
    subscriber_id = subscriber.id
    session.expire_all()
    fresh = await session.get(Subscriber, subscriber_id)
    assert fresh is not None
    assert fresh.status == SubscriberStatus.pending


async def test_expired_confirm_token(
    client: httpx.AsyncClient, app: FastAPI, session: AsyncSession
) -> None:
    tokens = app.state.tokens
    subscriber = await make_subscriber(session, tokens, status=SubscriberStatus.pending)
    token = tokens.confirm_token(subscriber.id, subscriber.email_hash)
    tokens.confirm_max_age_seconds = -1
    for method in ("GET", "POST"):
        response = await client.request(method, f"/confirm/{token}")
        assert response.status_code == 400
        assert "expiré" in response.text
        assert "/subscribe" in response.text


async def test_signup_rate_limit_per_ip(app: FastAPI, client: httpx.AsyncClient) -> None:
    from app.ratelimit import RateLimiter

    app.state.signup_limiter = RateLimiter("3/minute", "memory://")
    codes = [
        (
            await client.post("/api/v1/subscriptions", json={"email": f"r{i}@example.org"})
        ).status_code
        for i in range(4)
    ]
    assert codes == [202, 202, 202, 429]
    limited = await client.post("/subscribe", data={"email": "x@example.org"})
    assert limited.status_code == 429
    assert int(limited.headers["retry-after"]) > 0


async def test_retry_when_smtp_refuses_temporarily(
    client: httpx.AsyncClient, app: FastAPI, session: AsyncSession, smtp_server: SmtpServer
) -> None:
    smtp_server.faults.rcpt["later@example.org"] = "451 4.3.0 Try again later"
    smtp_server.faults.rcpt_times["later@example.org"] = 1
    await client.post("/api/v1/subscriptions", json={"email": "later@example.org"})
    report = await send_one_batch(app)
    assert report.retried == 1
    [delivery] = (await session.exec(select(Delivery))).all()
    assert delivery.status == DeliveryStatus.queued
    assert delivery.attempts == 1
    assert "451" in (delivery.last_error or "")
    import asyncio

    await asyncio.sleep(0.25)  # past the (test-sized) backoff
    report = await drain_outbox(app)
    assert report.sent == 1
    assert len(smtp_server.messages_to("later@example.org")) == 1


async def test_smtp_down_keeps_mail_queued(
    client: httpx.AsyncClient, app: FastAPI, session: AsyncSession, smtp_server: SmtpServer
) -> None:
    smtp_server.stop()
    await client.post("/api/v1/subscriptions", json={"email": "down@example.org"})
    report = await drain_outbox(app)
    assert report.sent == 0
    [delivery] = (await session.exec(select(Delivery))).all()
    assert delivery.status == DeliveryStatus.queued


async def test_embedded_default_writes_mail_to_a_maildir(database_url: str, tmp_path: Path) -> None:
    """No SMTP_HOST: the confirmation email lands as a file in var/mail (here: tmp_path)."""
    from app.main import create_app
    from tests.conftest import make_settings

    settings = make_settings(database_url, None, tmp_path, maildir_path=tmp_path / "var" / "mail")
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as c:
            r = await c.post("/api/v1/subscriptions", json={"email": "local@example.org"})
            assert r.status_code == 202
        report = await drain_outbox(app)
    assert report.sent == 1
    box = mailbox.Maildir(tmp_path / "var" / "mail", create=False)
    [message] = list(box)
    assert message["To"] == "local@example.org"
    assert "/confirm/" in message.as_string()


def test_migrate_creates_the_sqlite_folder(tmp_path: Path) -> None:
    """`make run` on a fresh checkout: var/ does not exist yet."""
    from app import migrations

    database = tmp_path / "fresh" / "var" / "newsletter.db"
    migrations.upgrade(f"sqlite:///{database}")
    assert database.exists()


async def test_answer_time_does_not_reveal_a_subscribed_address(
    client: httpx.AsyncClient, app: FastAPI, session: AsyncSession
) -> None:
    import time

    app.state.settings.signup_min_answer_ms = 200
    await make_subscriber(session, app.state.tokens, email="known@example.org")
    # Five rounds, alternating, compared by their medians: one slow answer on a loaded machine
    # (seen: 350 ms against 216 ms) says nothing of the address; a status-dependent path would
    # shift every answer for that address.
    timings: dict[str, list[float]] = {}
    for _round in range(5):
        for email in ("known@example.org", "fresh@example.org"):
            started = time.perf_counter()
            r = await client.post("/api/v1/subscriptions", json={"email": email})
            timings.setdefault(email, []).append(time.perf_counter() - started)
            assert r.status_code == 202
            started = time.perf_counter()
            r = await client.post("/subscribe", data={"email": email})
            timings.setdefault(email + " form", []).append(time.perf_counter() - started)
    assert min(min(values) for values in timings.values()) >= 0.2
    medians = {case: statistics.median(values) for case, values in timings.items()}
    assert abs(medians["known@example.org"] - medians["fresh@example.org"]) < 0.05, medians
    assert abs(medians["known@example.org form"] - medians["fresh@example.org form"]) < 0.05, (
        medians
    )


async def test_forwarded_for_uses_the_entry_our_proxy_wrote(
    app: FastAPI, client: httpx.AsyncClient, session: AsyncSession
) -> None:
    from app.ratelimit import RateLimiter

    app.state.settings.trust_forwarded_for = True
    app.state.signup_limiter = RateLimiter("2/minute", "memory://")
    codes = []
    for i in range(4):  # the client makes up a new leftmost address each time
        r = await client.post(
            "/api/v1/subscriptions",
            json={"email": f"x{i}@example.org"},
            headers={"x-forwarded-for": f"10.0.0.{i}, 198.51.100.9"},
        )
        codes.append(r.status_code)
    assert codes == [202, 202, 429, 429]
    subscriber = (await session.exec(select(Subscriber))).first()
    assert subscriber is not None
    assert subscriber.consent_ip == "198.51.100.9"


async def test_a_signup_rolled_back_leaves_nothing_behind(
    app: FastAPI, session: AsyncSession
) -> None:
    """The subscriber and its outbox row are one unit of work, on SQLite too."""
    from app.models import ConsentSource
    from app.subscriptions import service

    await service.signup(
        session,
        settings=app.state.settings,
        tokens=app.state.tokens,
        email="undo@example.org",
        name=None,
        consent=service.Consent(ip=None, user_agent=None, source=ConsentSource.api, language="fr"),
    )
    await session.rollback()
    assert (await session.exec(select(Subscriber))).all() == []
    assert (await session.exec(select(Delivery))).all() == []


async def test_simultaneous_signups_of_one_new_address(
    client: httpx.AsyncClient, session: AsyncSession
) -> None:
    import asyncio

    answers = await asyncio.gather(
        *(
            client.post("/api/v1/subscriptions", json={"email": "race@example.org"})
            for _ in range(8)
        )
    )
    assert {r.status_code for r in answers} == {202}
    assert len((await session.exec(select(Subscriber))).all()) == 1
    assert len((await session.exec(select(Delivery))).all()) == 1  # one confirmation email
