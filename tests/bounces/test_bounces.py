"""Bounces and complaints: the API and webhook, and returned mail read from a Maildir or mbox."""

from __future__ import annotations

import hashlib
import mailbox
import re
import shutil
from datetime import timedelta
from pathlib import Path

import httpx
import pytest
from fastapi import FastAPI
from sqlmodel import col, func, select
from sqlmodel.ext.asyncio.session import AsyncSession

from app.bounces.reports import UnreadableReport, parse_report
from app.bounces.service import apply_bounce
from app.config import Settings
from app.main import create_app
from app.models import (
    BounceEvent,
    BounceType,
    Delivery,
    DeliveryKind,
    DeliveryStatus,
    Digest,
    DigestStatus,
    Subscriber,
    SubscriberEvent,
    SubscriberEventType,
    SubscriberStatus,
    utcnow,
)
from app.outbox.identity import verp_delivery_id, verp_sender
from app.security import Tokens
from tests.conftest import SECRET, make_settings
from tests.factories import cli_env, editor_headers, make_subscriber, run_cli
from tests.smtp_server import SmtpServer

DATA = Path(__file__).parents[1] / "data" / "bounces"
WEBHOOK_SECRET = "whsec_3f9a1c7e5b2d4f6a8c0e1b3d5f7a9c2e"


@pytest.fixture
def settings(database_url: str, smtp_server: SmtpServer, tmp_path: Path) -> Settings:
    return make_settings(
        database_url, smtp_server, tmp_path, verp=True, bounce_webhook_secret=WEBHOOK_SECRET
    )


async def fresh(session: AsyncSession, subscriber_id: int | None) -> Subscriber:
    await session.rollback()  # end the read transaction: see what the app committed since
    session.expire_all()
    subscriber = await session.get(Subscriber, subscriber_id)
    assert subscriber is not None
    return subscriber


async def queued_confirmation_and_sent_digest(
    session: AsyncSession, subscriber_id: int | None
) -> tuple[int, int]:
    queued = Delivery(kind=DeliveryKind.confirmation, subscriber_id=subscriber_id)
    sent = Delivery(
        kind=DeliveryKind.confirmation,
        subscriber_id=subscriber_id,
        status=DeliveryStatus.sent,
        sent_at=utcnow(),
    )
    session.add_all([queued, sent])
    await session.commit()
    assert queued.id is not None
    assert sent.id is not None
    return queued.id, sent.id


async def test_hard_bounce_with_an_editor_key(
    client: httpx.AsyncClient, app: FastAPI, session: AsyncSession
) -> None:
    subscriber = await make_subscriber(session, app.state.tokens, email="aminata@orange.fr")
    queued_id, sent_id = await queued_confirmation_and_sent_digest(session, subscriber.id)
    headers = await editor_headers(session)

    response = await client.post(
        "/api/v1/bounces",
        json={
            "email": "Aminata@Orange.fr",
            "type": "hard",
            "reason": "550 5.1.1 <aminata@orange.fr>: Recipient address rejected: User unknown",
        },
        headers=headers,
    )
    assert response.status_code == 202
    assert response.json() == {"status": "accepted"}

    subscriber = await fresh(session, subscriber.id)
    assert subscriber.status == SubscriberStatus.bounced
    assert subscriber.bounced_at is not None
    [event] = (await session.exec(select(BounceEvent))).all()
    assert (event.type, event.source) == ("hard", "api")
    assert event.reason
    assert "User unknown" in event.reason
    history = (
        await session.exec(select(SubscriberEvent.event).order_by(col(SubscriberEvent.id)))
    ).all()
    assert history == ["hard_bounce", "bounced"]
    queued = await session.get(Delivery, queued_id)
    sent = await session.get(Delivery, sent_id)
    assert queued is not None
    assert sent is not None
    assert queued.status == DeliveryStatus.skipped  # never sent now
    assert sent.status == DeliveryStatus.sent  # history is not rewritten


@pytest.mark.parametrize(
    "auth",
    [
        {"Authorization": f"Bearer {WEBHOOK_SECRET}"},
        {"X-Webhook-Secret": WEBHOOK_SECRET},
    ],
    ids=["bearer", "x-webhook-secret"],
)
async def test_complaint_through_the_webhook_secret(
    client: httpx.AsyncClient, app: FastAPI, session: AsyncSession, auth: dict[str, str]
) -> None:
    subscriber = await make_subscriber(session, app.state.tokens, email="fatou@hotmail.fr")
    response = await client.post(
        "/api/v1/bounces", json={"email": "fatou@hotmail.fr", "type": "complaint"}, headers=auth
    )
    assert response.status_code == 202
    subscriber = await fresh(session, subscriber.id)
    assert subscriber.status == SubscriberStatus.complained
    [event] = (await session.exec(select(BounceEvent))).all()
    assert (event.type, event.source) == ("complaint", "webhook")


async def test_third_soft_bounce_within_30_days_bounces(
    client: httpx.AsyncClient, app: FastAPI, session: AsyncSession
) -> None:
    subscriber = await make_subscriber(session, app.state.tokens, email="kofi@busylink.com.gh")
    # An old soft bounce (two months ago) does not count.
    session.add(
        BounceEvent(
            subscriber_id=subscriber.id or 0,
            type=BounceType.soft,
            reason="452 4.2.2 mailbox full",
            created_at=utcnow() - timedelta(days=60),
        )
    )
    await session.commit()
    headers = {"X-Webhook-Secret": WEBHOOK_SECRET}
    body = {"email": "kofi@busylink.com.gh", "type": "soft", "reason": "452 4.2.2 Mailbox full"}
    for _ in range(2):
        assert (await client.post("/api/v1/bounces", json=body, headers=headers)).status_code == 202
    assert (await fresh(session, subscriber.id)).status == SubscriberStatus.confirmed

    assert (await client.post("/api/v1/bounces", json=body, headers=headers)).status_code == 202
    subscriber = await fresh(session, subscriber.id)
    assert subscriber.status == SubscriberStatus.bounced
    count = (await session.exec(select(func.count()).select_from(BounceEvent))).one()
    assert count == 4
    bounced = (
        await session.exec(select(SubscriberEvent).where(SubscriberEvent.event == "bounced"))
    ).one()
    assert bounced.detail is not None
    assert "3 soft bounces within 30 days" in bounced.detail


async def test_unknown_address_is_accepted_and_nothing_stored(
    client: httpx.AsyncClient, session: AsyncSession
) -> None:
    response = await client.post(
        "/api/v1/bounces",
        json={"email": "nobody@example.org", "type": "hard"},
        headers={"X-Webhook-Secret": WEBHOOK_SECRET},
    )
    assert response.status_code == 202
    assert response.json() == {"status": "accepted"}
    assert (await session.exec(select(func.count()).select_from(BounceEvent))).one() == 0
    assert (await session.exec(select(func.count()).select_from(Subscriber))).one() == 0


async def test_bounce_api_refuses_strangers_and_bad_input(
    client: httpx.AsyncClient, session: AsyncSession
) -> None:
    body = {"email": "reader@example.org", "type": "hard"}
    assert (await client.post("/api/v1/bounces", json=body)).status_code == 401
    for headers in (
        {"X-Webhook-Secret": WEBHOOK_SECRET[:-1] + "x"},
        {"Authorization": "Bearer nl_not-a-key"},
        {"Authorization": f"Basic {WEBHOOK_SECRET}"},
    ):
        response = await client.post("/api/v1/bounces", json=body, headers=headers)
        assert response.status_code == 401, headers
    headers = await editor_headers(session)
    bad_type = await client.post(
        "/api/v1/bounces", json={"email": "a@example.org", "type": "bounce"}, headers=headers
    )
    assert bad_type.status_code == 422
    assert bad_type.json()["detail"][0]["loc"] == ["body", "type"]
    missing = await client.post("/api/v1/bounces", json={"type": "hard"}, headers=headers)
    assert missing.status_code == 422
    assert missing.json()["detail"][0]["loc"] == ["body", "email"]


async def test_without_a_webhook_secret_only_editor_keys_work(
    database_url: str, tmp_path: Path
) -> None:
    application = create_app(make_settings(database_url, None, tmp_path))
    async with application.router.lifespan_context(application):
        transport = httpx.ASGITransport(app=application)
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as c:
            body = {"email": "reader@example.org", "type": "hard"}
            for headers in ({"X-Webhook-Secret": ""}, {"Authorization": "Bearer "}):
                assert (
                    await c.post("/api/v1/bounces", json=body, headers=headers)
                ).status_code == 401
            async with application.state.sessionmaker() as session:
                headers = await editor_headers(session)
            assert (await c.post("/api/v1/bounces", json=body, headers=headers)).status_code == 202


def test_verp_sender_round_trip(settings: Settings) -> None:
    tokens = Tokens.from_settings(settings)
    sender = verp_sender(settings, 12345)
    assert re.fullmatch(r"newsletter\+12345\.[0-9a-f]{10}@dzaleu\.test", sender)
    assert verp_delivery_id(settings, tokens, f"<{sender.upper()}>") == 12345
    assert verp_delivery_id(settings, tokens, "newsletter@dzaleu.test") is None
    assert verp_delivery_id(settings, tokens, sender.replace("newsletter+", "other+")) is None
    assert verp_delivery_id(settings, tokens, sender.replace("@dzaleu.test", "@evil.test")) is None
    # Forged: the plain sequential id, or a tag made without our key, names nothing.
    assert verp_delivery_id(settings, tokens, "newsletter+12345@dzaleu.test") is None
    assert verp_delivery_id(settings, tokens, "newsletter+12345.0000000000@dzaleu.test") is None
    other_key = settings.model_copy(update={"secret_key": "another-secret-key-0123456789"})
    assert verp_delivery_id(settings, tokens, verp_sender(other_key, 12345)) is None
    # After a key rotation, bounces to addresses made with the former key still name theirs.
    rotated = settings.model_copy(
        update={"secret_key": "the-new-secret-key-0123456789", "secret_key_fallbacks": SECRET}
    )
    assert verp_delivery_id(rotated, Tokens.from_settings(rotated), sender) == 12345
    plain = settings.model_copy(update={"verp": False})
    assert verp_sender(plain, 12345) == "newsletter@dzaleu.test"


def test_parse_real_reports() -> None:
    hard = parse_report((DATA / "postfix-hard-5.1.1.eml").read_bytes())
    assert hard.type == BounceType.hard
    assert hard.reason.startswith("failed 5.1.1: smtp; 550 5.1.1")
    assert "newsletter+1042@dzaleu.test" in hard.envelope_addresses
    assert hard.message_ids == ["<nl.1042.7f0edcf799@dzaleu.test>"]
    assert hard.recipients[0] == "aminata.diallo@orange.fr"

    delayed = parse_report((DATA / "postfix-delayed-4.4.1.eml").read_bytes())
    assert delayed.type == BounceType.soft
    assert delayed.message_ids == ["<nl.1043.0ca3f39336@dzaleu.test>"]

    yahoo = parse_report((DATA / "yahoo-arf-complaint.eml").read_bytes())
    assert yahoo.type == BounceType.complaint
    assert "Yahoo" in yahoo.reason
    assert yahoo.message_ids == ["<nl.2071.63048d5026@dzaleu.test>"]
    assert "newsletter+2071@dzaleu.test" in yahoo.envelope_addresses  # Original-Mail-From

    microsoft = parse_report((DATA / "microsoft-jmrp-complaint.eml").read_bytes())
    assert microsoft.type == BounceType.complaint
    assert microsoft.recipients == ["fatou.ndiaye@hotmail.fr"]

    with pytest.raises(UnreadableReport, match="not a delivery status or feedback report"):
        parse_report((DATA / "out-of-office.eml").read_bytes())

    policy = (
        (DATA / "postfix-hard-5.1.1.eml").read_bytes().replace(b"Status: 5.1.1", b"Status: 5.7.1")
    )
    assert parse_report(policy).type == BounceType.soft  # spam policy: not the reader's mailbox


def make_maildir(path: Path, files: list[Path], extra: list[bytes] = ()) -> Path:  # type: ignore[assignment]
    box = mailbox.Maildir(path, create=True)
    for file in files:
        box.add(file.read_bytes())
    for raw in extra:
        box.add(raw)
    box.flush()
    return path


async def test_process_maildir_of_returned_mail(
    app: FastAPI, session: AsyncSession, settings: Settings, tmp_path: Path
) -> None:
    tokens = app.state.tokens
    aminata = await make_subscriber(session, tokens, email="aminata.diallo@orange.fr")
    kofi = await make_subscriber(session, tokens, email="kofi.mensah@busylink.com.gh")
    yahoo_reader = await make_subscriber(session, tokens, email="awa.sow@yahoo.fr")
    fatou = await make_subscriber(session, tokens, email="fatou.ndiaye@hotmail.fr")
    # Deliveries as the sender left them: 1042 is found through its Message-ID (its VERP address
    # is unsigned, so it names nothing), 1043 (a copy of the first digest; Kofi has had the
    # second since) through the recorded Message-ID, 2071 through its Message-ID's keyed tag
    # (outcome never recorded), and Fatou's report through the original To (delivery 2072 is
    # gone). 3000 is queued for the reader who complains: it is skipped.
    first, second = Digest(status=DigestStatus.sent), Digest(status=DigestStatus.sent)
    session.add_all([first, second])
    await session.flush()
    kofi_id, first_id = kofi.id, first.id
    session.add_all(
        [
            Delivery(
                id=1044,
                kind=DeliveryKind.digest,
                digest_id=second.id,
                subscriber_id=kofi.id,
                status=DeliveryStatus.sent,
            ),
            Delivery(
                id=1042,
                kind=DeliveryKind.confirmation,
                subscriber_id=aminata.id,
                status=DeliveryStatus.sent,
            ),
            Delivery(
                id=1043,
                kind=DeliveryKind.digest,
                digest_id=first.id,
                subscriber_id=kofi.id,
                status=DeliveryStatus.sent,
                message_id="<nl.1043.0ca3f39336@dzaleu.test>",
            ),
            Delivery(
                id=2071,
                kind=DeliveryKind.confirmation,
                subscriber_id=yahoo_reader.id,
                status=DeliveryStatus.sending,
            ),
            Delivery(id=3000, kind=DeliveryKind.confirmation, subscriber_id=yahoo_reader.id),
        ]
    )
    await session.commit()
    ids = [aminata.id, kofi.id, yahoo_reader.id, fatou.id]
    maildir = make_maildir(
        tmp_path / "bounces",
        sorted(DATA.glob("*.eml")),
        extra=[b"\x00\x01 garbage that is not mail"],
    )

    result = await run_cli(["bounces", "process", str(maildir)], cli_env(settings))
    assert result.exit_code == 0, result.output
    out = result.stdout
    for column in ("processed", "hard", "soft", "complaints", "unmatched", "unreadable"):
        assert column in out
    numbers = [
        [int(n) for n in line.replace("│", " ").split()]
        for line in out.splitlines()
        if line.startswith("│") and line.replace("│", " ").split()[0].isdigit()
    ]
    # Fatou's complaint names her address and no Message-ID of ours: anyone could have written
    # it, so it counts as a soft bounce.
    assert numbers == [[6, 1, 2, 1, 0, 2, 0]]
    assert "not a delivery status or feedback report (text/plain)" in out
    assert "unverified: " in out

    statuses = [(await fresh(session, i)).status for i in ids]
    # Kofi: one soft bounce, still subscribed; Fatou: an unverified complaint, still subscribed.
    assert statuses == ["bounced", "confirmed", "complained", "confirmed"]
    queued = await session.get(Delivery, 3000)
    assert queued is not None
    assert queued.status == DeliveryStatus.skipped
    sources = (await session.exec(select(BounceEvent.source).distinct())).all()
    assert sources == ["mailbox"]
    assert (await session.exec(select(func.count()).select_from(BounceEvent))).one() == 4
    # The report names the first digest's copy: it counts for that digest, not the latest.
    kofi_bounce = (
        await session.exec(
            select(BounceEvent.digest_id).where(BounceEvent.subscriber_id == kofi_id)
        )
    ).all()
    assert kofi_bounce == [first_id]


async def test_process_mbox_unmatched_without_verp(
    app: FastAPI, session: AsyncSession, settings: Settings, tmp_path: Path
) -> None:
    box = mailbox.mbox(tmp_path / "returned.mbox")
    box.add((DATA / "postfix-hard-5.1.1.eml").read_bytes())
    box.add((DATA / "postfix-delayed-4.4.1.eml").read_bytes())
    box.flush()
    box.close()
    await make_subscriber(session, app.state.tokens, email="kofi.mensah@busylink.com.gh")
    env = cli_env(settings, VERP="false")
    result = await run_cli(["bounces", "process", str(tmp_path / "returned.mbox")], env)
    assert result.exit_code == 0, result.output
    assert "unmatched: returned.mbox#1" in result.stdout  # Aminata is not a subscriber here
    assert (await session.exec(select(func.count()).select_from(BounceEvent))).one() == 1


async def test_forged_reports_suppress_nobody(
    app: FastAPI, session: AsyncSession, settings: Settings, tmp_path: Path
) -> None:
    """Anyone can email the bounce mailbox. A report that names a reader's address, with a VERP
    address of sequential id and no Message-ID of ours, must not suppress them."""
    tokens = app.state.tokens
    aminata = await make_subscriber(session, tokens, email="aminata.diallo@orange.fr")
    other = await make_subscriber(session, tokens, email="other@example.org")
    aminata_id, other_id = aminata.id, other.id
    # The other reader's real delivery, id 7: a forger guesses VERP ids.
    session.add(Delivery(id=7, kind=DeliveryKind.confirmation, subscriber_id=other_id))
    await session.commit()
    real = (DATA / "postfix-hard-5.1.1.eml").read_bytes()
    forged_by_address = real.replace(
        b"Message-ID: <nl.1042.7f0edcf799@dzaleu.test>", b"Message-ID: <forged@evil.test>"
    ).replace(b"Message-Id: <4XnR7q0TmDz1xBk", b"Message-Id: <forged1")
    forged_by_verp = forged_by_address.replace(b"newsletter+1042@", b"newsletter+7@").replace(
        b"Message-Id: <forged1", b"Message-Id: <forged2"
    )
    maildir = make_maildir(tmp_path / "bounces", [], extra=[forged_by_address, forged_by_verp])
    result = await run_cli(["bounces", "process", str(maildir)], cli_env(settings))
    assert result.exit_code == 0, result.output
    assert (await fresh(session, aminata_id)).status == SubscriberStatus.confirmed
    assert (await fresh(session, other_id)).status == SubscriberStatus.confirmed
    assert result.stdout.count("unverified: ") == 2
    types = (await session.exec(select(BounceEvent.type))).all()
    assert types == [BounceType.soft, BounceType.soft]


def summary_numbers(out: str) -> list[int]:
    """The numbers row of the summary table: processed, hard, soft, complaints, unmatched,
    unreadable, already processed."""
    [row] = [
        [int(n) for n in line.replace("│", " ").split()]
        for line in out.splitlines()
        if line.startswith("│") and line.replace("│", " ").split()[0].isdigit()
    ]
    return row


def test_report_id_is_the_message_id_else_a_hash_of_the_bytes() -> None:
    raw = (DATA / "postfix-delayed-4.4.1.eml").read_bytes()
    assert parse_report(raw).report_id == "<4XnS1b6WvLz1xCq.1762857137@mx1.dzaleu.test>"
    anonymous = raw.replace(b"Message-Id: <4XnS1b6WvLz1xCq.1762857137@mx1.dzaleu.test>\n", b"")
    assert anonymous != raw
    report_id = parse_report(anonymous).report_id
    assert report_id == "sha256:" + hashlib.sha256(anonymous).hexdigest()
    assert parse_report(anonymous).report_id == report_id


async def soft_bounces(session: AsyncSession) -> int:
    await session.rollback()
    return (
        await session.exec(select(func.count()).where(col(BounceEvent.type) == BounceType.soft))
    ).one()


async def test_processing_a_maildir_again_applies_nothing_twice(
    app: FastAPI, session: AsyncSession, settings: Settings, tmp_path: Path
) -> None:
    # From cron, every few minutes: one "delayed" warning must stay one soft bounce, not become
    # the third that bounces a good reader.
    kofi = await make_subscriber(session, app.state.tokens, email="kofi.mensah@busylink.com.gh")
    kofi_id = kofi.id
    maildir = make_maildir(tmp_path / "bounces", [DATA / "postfix-delayed-4.4.1.eml"])
    command = ["bounces", "process", str(maildir)]

    first = await run_cli(command, cli_env(settings))
    assert first.exit_code == 0, first.output
    assert summary_numbers(first.stdout) == [1, 0, 1, 0, 0, 0, 0]
    assert list((maildir / "new").iterdir()) == []
    [seen] = (maildir / "cur").iterdir()
    assert seen.name.endswith(":2,S")
    assert (
        mailbox.Maildir(maildir, create=False).get_message(seen.name.split(":")[0]).get_flags()
        == "S"
    )
    assert seen.read_bytes() == (DATA / "postfix-delayed-4.4.1.eml").read_bytes()

    second = await run_cli(command, cli_env(settings))
    assert second.exit_code == 0, second.output
    assert summary_numbers(second.stdout) == [0, 0, 0, 0, 0, 0, 0]  # seen: not read again

    everything = await run_cli([*command, "--all"], cli_env(settings))
    assert everything.exit_code == 0, everything.output
    assert summary_numbers(everything.stdout) == [1, 0, 0, 0, 0, 0, 1]
    assert "1 report(s) already processed, not applied again" in everything.stdout

    assert await soft_bounces(session) == 1
    assert (await fresh(session, kofi_id)).status == SubscriberStatus.confirmed
    assert [p.name for p in (maildir / "cur").iterdir()] == [seen.name]


async def test_processing_an_mbox_again_applies_nothing_twice(
    app: FastAPI, session: AsyncSession, settings: Settings, tmp_path: Path
) -> None:
    kofi = await make_subscriber(session, app.state.tokens, email="kofi.mensah@busylink.com.gh")
    kofi_id = kofi.id
    delayed = (DATA / "postfix-delayed-4.4.1.eml").read_bytes()
    anonymous = delayed.replace(b"Message-Id: <4XnS1b6WvLz1xCq.1762857137@mx1.dzaleu.test>\n", b"")
    box = mailbox.mbox(tmp_path / "returned.mbox")
    box.add(delayed)
    box.add(delayed)  # the same report twice in one mailbox
    box.add(anonymous)  # no Message-ID: known by the SHA-256 of its bytes
    box.flush()
    box.close()
    command = ["bounces", "process", str(tmp_path / "returned.mbox")]

    first = await run_cli(command, cli_env(settings))
    assert first.exit_code == 0, first.output
    assert summary_numbers(first.stdout) == [3, 0, 2, 0, 0, 0, 1]
    for _ in range(2):
        again = await run_cli(command, cli_env(settings))
        assert again.exit_code == 0, again.output
        assert summary_numbers(again.stdout) == [3, 0, 0, 0, 0, 0, 3]

    assert await soft_bounces(session) == 2  # two distinct reports, each once
    assert (await fresh(session, kofi_id)).status == SubscriberStatus.confirmed
    ids = (await session.exec(select(BounceEvent.report_id))).all()
    assert sorted(i or "" for i in ids) == [
        "<4XnS1b6WvLz1xCq.1762857137@mx1.dzaleu.test>",
        "sha256:" + hashlib.sha256(anonymous).hexdigest(),
    ]


async def test_process_refuses_a_path_that_is_no_mailbox(
    settings: Settings, tmp_path: Path
) -> None:
    (tmp_path / "plain").mkdir()
    result = await run_cli(["bounces", "process", str(tmp_path / "plain")], cli_env(settings))
    assert result.exit_code == 1
    assert result.stderr.startswith("error: ")
    assert "not a Maildir" in result.stderr
    shutil.rmtree(tmp_path / "plain")
    missing = await run_cli(["bounces", "process", str(tmp_path / "nope")], cli_env(settings))
    assert missing.exit_code == 1
    assert "no such file or directory" in missing.stderr


async def test_unbounce_restores_readers_a_broken_relay_bounced(
    app: FastAPI,
    client: httpx.AsyncClient,
    session: AsyncSession,
    settings: Settings,
) -> None:
    """Before this service could tell a relay that refuses everyone, it bounced whole lists.
    `subscribers unbounce` (and the API) bring those readers back, dry run first."""
    tokens = app.state.tokens
    digest = Digest(subject="Semaine", status=DigestStatus.paused, recipients=3)
    session.add(digest)
    await session.commit()
    digest_id = digest.id
    readers = [
        await make_subscriber(session, tokens, email=f"victim{i}@example.org") for i in range(3)
    ]
    ids = [r.id for r in readers]
    gone_id = (await make_subscriber(session, tokens, email="gone@example.org")).id
    for reader_id in ids:
        session.add(
            Delivery(
                kind=DeliveryKind.digest,
                digest_id=digest_id,
                subscriber_id=reader_id,
                status=DeliveryStatus.failed,
                attempts=1,
                last_error="550 5.1.1 User unknown in virtual mailbox table",
            )
        )
    await session.commit()
    long_ago = utcnow() - timedelta(days=40)
    gone = await fresh(session, gone_id)
    await apply_bounce(session, subscriber=gone, type=BounceType.hard, reason="old", source="smtp")
    gone.bounced_at = long_ago
    session.add(gone)
    await session.commit()
    before = utcnow()
    for reader_id in ids:
        subscriber = await fresh(session, reader_id)
        await apply_bounce(
            session, subscriber=subscriber, type=BounceType.hard, reason="550", source="smtp"
        )
        await session.commit()

    since = (before - timedelta(seconds=1)).isoformat()
    dry = await run_cli(
        ["subscribers", "unbounce", "--since", since, "--digest", str(digest_id), "--dry-run"],
        cli_env(settings),
    )
    assert dry.exit_code == 0, dry.output
    assert "would restore 3 subscriber(s)" in dry.stdout
    assert "victim0@example.org" in dry.stdout
    assert (await fresh(session, ids[0])).status == SubscriberStatus.bounced

    bad = await run_cli(["subscribers", "unbounce", "--since", "yesterday"], cli_env(settings))
    assert bad.exit_code != 0
    assert "--since" in bad.stderr

    done = await run_cli(
        ["subscribers", "unbounce", "--since", since, "--digest", str(digest_id)],
        cli_env(settings),
    )
    assert done.exit_code == 0, done.output
    assert "restored 3 subscriber(s)" in done.stdout
    for reader_id in ids:
        assert (await fresh(session, reader_id)).status == SubscriberStatus.confirmed
    assert (await fresh(session, gone_id)).status == SubscriberStatus.bounced
    events = (
        await session.exec(
            select(SubscriberEvent.event).where(SubscriberEvent.subscriber_id == ids[0])
        )
    ).all()
    assert events[-1] == SubscriberEventType.unbounced
    copies = (await session.exec(select(Delivery).where(Delivery.digest_id == digest_id))).all()
    assert {(c.status, c.attempts) for c in copies} == {(DeliveryStatus.queued, 0)}

    # The API does the same; nothing is left to restore now.
    headers = await editor_headers(session)
    response = await client.post(
        "/api/v1/bounces/undo",
        json={"since": since, "dry_run": True},
        headers=headers,
    )
    assert response.status_code == 200, response.text
    assert response.json() == {"dry_run": True, "count": 0, "subscribers": []}
    response = await client.post(
        "/api/v1/bounces/undo",
        json={"since": long_ago.isoformat(), "dry_run": True},
        headers=headers,
    )
    assert [s["email"] for s in response.json()["subscribers"]] == ["gone@example.org"]
    unknown = await client.post(
        "/api/v1/bounces/undo", json={"since": since, "when": 1}, headers=headers
    )
    assert unknown.status_code == 422
