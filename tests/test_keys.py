"""Keys that can change: SECRET_KEY rotation with fallbacks, and address hashes keyed by a key
stored in the database (migration 0003_hashing_key), on SQLite and PostgreSQL."""

from __future__ import annotations

import contextlib
import mailbox
import re
from collections.abc import AsyncIterator
from email.message import EmailMessage
from pathlib import Path

import httpx
import pytest
import sqlalchemy as sa
from fastapi import FastAPI
from pydantic import ValidationError
from sqlmodel import func, select

from app import migrations
from app.config import DEFAULT_SECRET_KEY, Settings
from app.db import sync_url
from app.main import create_app
from app.models import Delivery, DeliveryKind, DeliveryStatus, Subscriber, SubscriberEvent
from app.security import HashingKeyMissing, TokenError, Tokens, legacy_hashing_key
from tests.conftest import SECRET, make_settings
from tests.factories import cli_env, drain_outbox, editor_headers, link_in, run_cli
from tests.smtp_server import SmtpServer

SAMPLE = Path(__file__).parent / "data" / "wordpress-feed-fr.xml"
BOUNCES = Path(__file__).parent / "data" / "bounces"
NEW_SECRET = "the-new-secret-key-0123456789abcdef"


@contextlib.asynccontextmanager
async def serving(settings: Settings) -> AsyncIterator[tuple[FastAPI, httpx.AsyncClient]]:
    """A fresh app, started as `newsletter serve` starts it: a restart with these settings."""
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app, client=("203.0.113.7", 50000))
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
            yield app, client


async def subscribers_named(app: FastAPI) -> dict[str | None, Subscriber]:
    async with app.state.sessionmaker() as session:
        rows = (await session.exec(select(Subscriber))).all()
    return {row.email: row for row in rows}


async def subscriber(app: FastAPI, subscriber_id: int | None) -> Subscriber:
    async with app.state.sessionmaker() as session:
        row = await session.get(Subscriber, subscriber_id)
    assert row is not None
    return row


async def events_of(app: FastAPI, subscriber_id: int | None) -> list[str]:
    async with app.state.sessionmaker() as session:
        rows = await session.exec(
            select(SubscriberEvent.event)
            .where(SubscriberEvent.subscriber_id == subscriber_id)
            .order_by(SubscriberEvent.id)  # type: ignore[arg-type]
        )
        return list(rows.all())


def last_message_to(smtp_server: SmtpServer, address: str) -> EmailMessage:
    messages = smtp_server.messages_to(address)
    assert messages, f"nothing was sent to {address}"
    return messages[-1]


def tag_of(message_id: str) -> tuple[int, str]:
    """The delivery id and keyed tag of one of our Message-IDs."""
    shape = re.fullmatch(r"<nl\.(\d+)\.([0-9a-f]{10})@.+>", message_id)
    assert shape, message_id
    return int(shape[1]), shape[2]


def token_of(link: str) -> str:
    return link.rsplit("/", 1)[1]


def stored_hashing_key(database_url: str) -> bytes:
    engine = sa.create_engine(sync_url(database_url), poolclass=sa.pool.NullPool)
    try:
        with engine.connect() as connection:
            value = connection.execute(
                sa.text("SELECT value FROM stored_secret WHERE name = 'email_hash_key'")
            ).scalar_one()
    finally:
        engine.dispose()
    return bytes.fromhex(value)


async def send_digest(
    app: FastAPI, client: httpx.AsyncClient, headers: dict[str, str], **body: object
) -> None:
    created = await client.post("/api/v1/digests", json=body, headers=headers)
    assert created.status_code == 201, created.text
    sent = await client.post(f"/api/v1/digests/{created.json()['id']}/send", headers=headers)
    assert sent.status_code == 202, sent.text
    await drain_outbox(app)


def rotation_settings(output: str) -> dict[str, str]:
    """The NAME=value lines of the first three steps `newsletter keys rotate` prints."""
    found = dict(re.findall(r"^\d\. (SECRET_KEY(?:_FALLBACKS)?)=(\S*)$", output, re.MULTILINE))
    return found


async def test_rotation_keeps_old_links_and_every_suppression(
    database_url: str, smtp_server: SmtpServer, tmp_path: Path, settings: Settings
) -> None:
    # --- Before: readers sign up, confirm, receive a digest; one leaves, one is erased. ---------
    async with serving(settings) as (app, client):
        async with app.state.sessionmaker() as session:
            headers = await editor_headers(session)
        for email, name in [
            ("amelie@example.org", "Amélie"),
            ("john@example.com", "John"),
            ("marc@example.fr", "Marc"),
            ("ibrahim@example.sn", "Ibrahim"),
            ("paul@example.org", "Paul"),
        ]:
            answer = await client.post("/api/v1/subscriptions", json={"email": email, "name": name})
            assert answer.status_code == 202
        await drain_outbox(app)
        for email in ("amelie@example.org", "john@example.com", "marc@example.fr"):
            link = link_in(last_message_to(smtp_server, email), "confirm")
            assert (await client.post(link)).status_code == 200
        ibrahim_confirm = link_in(last_message_to(smtp_server, "ibrahim@example.sn"), "confirm")
        assert (await client.post(ibrahim_confirm)).status_code == 200
        # Paul has not clicked yet: his confirmation link waits in his mailbox.
        paul_confirm = link_in(last_message_to(smtp_server, "paul@example.org"), "confirm")

        async with app.state.sessionmaker() as session:
            from app.articles import service as articles

            await articles.import_feed_document(session, data=SAMPLE.read_bytes())
            await session.commit()
        await send_digest(app, client, headers)
        old_unsubscribe = {
            email: link_in(last_message_to(smtp_server, email), "unsubscribe")
            for email in (
                "amelie@example.org",
                "john@example.com",
                "marc@example.fr",
                "ibrahim@example.sn",
            )
        }
        old_message_id = last_message_to(smtp_server, "amelie@example.org")["Message-ID"]

        left = await client.post(old_unsubscribe["marc@example.fr"])
        assert left.status_code == 200
        erased = await client.delete("/api/v1/subscribers/ibrahim@example.sn", headers=headers)
        assert erased.status_code == 204
        before = await subscribers_named(app)
    marc_id, amelie_id, john_id = (
        before[e].id for e in ("marc@example.fr", "amelie@example.org", "john@example.com")
    )
    [ibrahim_id] = [s.id for s in before.values() if s.erased_at is not None]
    assert None not in (marc_id, amelie_id, john_id, ibrahim_id)
    assert len(before) == 5

    # --- Rotate: the command prints the settings to apply, in order. ---------------------------
    rotated = await run_cli(["keys", "rotate", "--keep-days", "30"], cli_env(settings))
    assert rotated.exit_code == 0, rotated.output
    plan = rotated.stdout
    applied = rotation_settings(plan)
    new_key = applied["SECRET_KEY"]
    assert len(new_key) >= 48
    assert new_key != SECRET
    assert applied["SECRET_KEY_FALLBACKS"] == SECRET
    assert [int(n) for n in re.findall(r"^(\d)\. ", plan, re.MULTILINE)] == [1, 2, 3, 4]
    assert "restart every process" in plan
    assert "after 30 days" in plan
    assert re.search(
        r"^4\. after 30 days \(on \d{4}-\d\d-\d\d\): SECRET_KEY_FALLBACKS=$", plan, re.M
    )

    # --- Restart with the new settings. ----------------------------------------------------------
    rotated_settings = make_settings(
        database_url, smtp_server, tmp_path, secret_key=new_key, secret_key_fallbacks=SECRET
    )
    async with serving(rotated_settings) as (app, client):
        # Links already in mailboxes still work, for every purpose.
        page = await client.get(old_unsubscribe["amelie@example.org"])
        assert page.status_code == 200
        assert 'method="post"' in page.text.lower()
        john_left = await client.post(old_unsubscribe["john@example.com"])
        assert john_left.status_code == 200
        assert (await subscriber(app, john_id)).status == "unsubscribed"
        paul = await client.post(
            paul_confirm
        )  # a person confirms (POST); a GET only shows the form
        assert paul.status_code == 200
        assert "Inscription confirmée" in paul.text
        # ... including the erased reader's: unsubscribing stays possible, nothing revives.
        assert (await client.post(old_unsubscribe["ibrahim@example.sn"])).status_code == 200
        assert (await subscriber(app, ibrahim_id)).status == "unsubscribed"

        # Suppressions hold. An import does not bring the erased or unsubscribed address back.
        csv_file = tmp_path / "again.csv"
        csv_file.write_text(
            "email\nibrahim@example.sn\nMARC@example.fr\namelie@example.org\n", encoding="utf-8"
        )
        env = cli_env(rotated_settings, SECRET_KEY_FALLBACKS=SECRET)
        imported = await run_cli(["subscribers", "import", str(csv_file)], env)
        assert imported.exit_code == 0, imported.output
        assert "imported 0 " in imported.stdout
        assert "already subscribed 1" in imported.stdout
        assert "suppressed, not revived 2" in imported.stdout
        # Signing up again finds the same record (a fresh double opt-in), not a second one.
        for email in ("ibrahim@example.sn", "marc@example.fr"):
            answer = await client.post("/api/v1/subscriptions", json={"email": email})
            assert answer.status_code == 202
        after = await subscribers_named(app)
        assert len(after) == 5
        assert after["ibrahim@example.sn"].id == ibrahim_id
        assert after["ibrahim@example.sn"].status == "pending"
        assert (await events_of(app, ibrahim_id))[-1] == "resignup"
        assert after["marc@example.fr"].id == marc_id
        assert (await events_of(app, marc_id))[-1] == "resignup"

        # A bounce report that quotes a Message-ID made with the former key is still ours.
        tokens: Tokens = app.state.tokens
        assert tokens.is_our_message_id_tag(*tag_of(old_message_id))

        # New links are signed with the new key only.
        async with app.state.sessionmaker() as session:
            headers = await editor_headers(session, name="after rotation")
        smtp_server.clear()
        await send_digest(app, client, headers, article_ids=[1, 2])
        new_link = link_in(last_message_to(smtp_server, "amelie@example.org"), "unsubscribe")
        assert new_link != old_unsubscribe["amelie@example.org"]
        only_new = Tokens(new_key, confirm_max_age_seconds=3600)
        only_old = Tokens(SECRET, confirm_max_age_seconds=3600)
        assert only_new.read_unsubscribe_token(token_of(new_link))[0] == amelie_id
        with pytest.raises(TokenError):
            only_old.read_unsubscribe_token(token_of(new_link))
        new_message_id = last_message_to(smtp_server, "amelie@example.org")["Message-ID"]
        assert not only_old.is_our_message_id_tag(*tag_of(new_message_id))
        assert tokens.is_our_message_id_tag(*tag_of(new_message_id))

    # --- N days later: the fallback is removed; old links get the clear "invalid link" page. ----
    final_settings = make_settings(database_url, smtp_server, tmp_path, secret_key=new_key)
    async with serving(final_settings) as (app, client):
        for response in (
            await client.get(old_unsubscribe["amelie@example.org"]),
            await client.post(old_unsubscribe["amelie@example.org"]),
            await client.get(paul_confirm),
        ):
            assert response.status_code == 400
            assert "Lien invalide ou expiré" in response.text
            assert "/subscribe" in response.text
        assert (await subscriber(app, amelie_id)).status == "confirmed"
        assert (await client.get(new_link)).status_code == 200
        assert not app.state.tokens.is_our_message_id_tag(*tag_of(old_message_id))


async def test_bounce_report_quoting_a_message_id_of_the_former_key(
    database_url: str, smtp_server: SmtpServer, tmp_path: Path
) -> None:
    """Yahoo's complaint redacts the reader: only our Message-ID's keyed tag (made with the test
    SECRET) names the delivery. It still does after a rotation, until the fallback goes."""
    rotated = make_settings(
        database_url, smtp_server, tmp_path, secret_key=NEW_SECRET, secret_key_fallbacks=SECRET
    )
    async with serving(rotated) as (app, _):
        async with app.state.sessionmaker() as session:
            reader = Subscriber(
                email="awa.sow@yahoo.fr",
                email_hash=app.state.tokens.email_hash("awa.sow@yahoo.fr"),
                status="confirmed",
            )
            session.add(reader)
            await session.flush()
            session.add(
                Delivery(
                    id=2071,
                    kind=DeliveryKind.confirmation,
                    subscriber_id=reader.id,
                    status=DeliveryStatus.sending,
                )
            )
            await session.commit()
            reader_id = reader.id
    box = mailbox.Maildir(tmp_path / "fbl", create=True)
    box.add((BOUNCES / "yahoo-arf-complaint.eml").read_bytes())
    box.flush()

    without = await run_cli(
        ["bounces", "process", "--all", str(tmp_path / "fbl")], cli_env(rotated)
    )
    assert without.exit_code == 0, without.output
    assert "2071" not in without.stdout
    async with serving(rotated) as (app, _):
        assert (await subscriber(app, reader_id or 0)).status == "confirmed"

    with_fallback = await run_cli(
        ["bounces", "process", "--all", str(tmp_path / "fbl")],
        cli_env(rotated, SECRET_KEY_FALLBACKS=SECRET),
    )
    assert with_fallback.exit_code == 0, with_fallback.output
    async with serving(rotated) as (app, _):
        assert (await subscriber(app, reader_id or 0)).status == "complained"


# --- The stored hashing key ----------------------------------------------------------------------


def insert_legacy_subscribers(database_url: str, secret_key: str) -> None:
    """Subscribers as a release before 0003_hashing_key stored them: hashes keyed by SECRET_KEY."""
    tokens = Tokens(
        secret_key, confirm_max_age_seconds=3600, hashing_key=legacy_hashing_key(secret_key)
    )
    now = "2026-01-05 10:00:00"
    rows = [
        ("awa@example.sn", "awa@example.sn", "confirmed", None),
        ("marc@example.fr", "marc@example.fr", "unsubscribed", None),
        (None, "ibrahim@example.sn", "unsubscribed", now),  # erased: only the hash is left
    ]
    engine = sa.create_engine(sync_url(database_url), poolclass=sa.pool.NullPool)
    try:
        with engine.begin() as connection:
            for email, hashed, status, erased_at in rows:
                connection.execute(
                    sa.text(
                        "INSERT INTO subscriber (email, email_hash, language, status, created_at,"
                        " updated_at, erased_at) VALUES (:email, :hash, 'fr', :status, :now, :now,"
                        " :erased_at)"
                    ),
                    {
                        "email": email,
                        "hash": tokens.email_hash(hashed),
                        "status": status,
                        "now": now,
                        "erased_at": erased_at,
                    },
                )
    finally:
        engine.dispose()


def revision_and_tables(database_url: str) -> tuple[str, bool]:
    engine = sa.create_engine(sync_url(database_url), poolclass=sa.pool.NullPool)
    try:
        with engine.connect() as connection:
            revision = connection.execute(sa.text("SELECT version_num FROM alembic_version"))
            return revision.scalar_one(), sa.inspect(connection).has_table("stored_secret")
    finally:
        engine.dispose()


async def test_migration_adopts_the_key_the_addresses_were_hashed_with(
    empty_database_url: str, smtp_server: SmtpServer, tmp_path: Path
) -> None:
    url = empty_database_url
    migrations.upgrade(url, "0002")
    insert_legacy_subscribers(url, SECRET)
    env = {"APP_ENV": "test", "DATABASE_URL": url, "LOG_LEVEL": "WARNING"}

    # Migrating with another SECRET_KEY would lose every suppression: refused, nothing changed.
    wrong = await run_cli(["migrate"], {**env, "SECRET_KEY": NEW_SECRET})
    assert wrong.exit_code == 1
    assert "error: the address hashes in this database were not made with SECRET_KEY" in (
        wrong.stderr
    )
    assert revision_and_tables(url) == ("0002", False)

    # The operator rotated at the same time: the former key, a fallback now, is the one adopted.
    migrated = await run_cli(
        ["migrate"], {**env, "SECRET_KEY": NEW_SECRET, "SECRET_KEY_FALLBACKS": SECRET}
    )
    assert migrated.exit_code == 0, migrated.output
    assert revision_and_tables(url) == (migrations.head_revision(), True)
    assert stored_hashing_key(url) == legacy_hashing_key(SECRET)

    # A service with yet another SECRET_KEY and no fallback: hashes no longer depend on it.
    other = make_settings(url, smtp_server, tmp_path, secret_key="a-third-key-0123456789abcdef")
    async with serving(other) as (app, client):
        async with app.state.sessionmaker() as session:
            headers = await editor_headers(session)
        found = await client.get("/api/v1/subscribers/AWA@example.sn", headers=headers)
        assert found.status_code == 200
        assert found.json()["subscriber"]["status"] == "confirmed"
        csv_file = tmp_path / "old.csv"
        csv_file.write_text("email\nibrahim@example.sn\nmarc@example.fr\n", encoding="utf-8")
        imported = await run_cli(["subscribers", "import", str(csv_file)], cli_env(other))
        assert imported.exit_code == 0, imported.output
        assert "imported 0 " in imported.stdout
        assert "suppressed, not revived 2" in imported.stdout
        answer = await client.post("/api/v1/subscriptions", json={"email": "ibrahim@example.sn"})
        assert answer.status_code == 202
        async with app.state.sessionmaker() as session:
            count = (await session.exec(select(func.count()).select_from(Subscriber))).one()
        assert count == 3  # the erased record took the sign-up: still one row per address


async def test_only_erased_subscribers_adopt_secret_key_unchecked(empty_database_url: str) -> None:
    url = empty_database_url
    migrations.upgrade(url, "0002")
    insert_legacy_subscribers(url, SECRET)
    engine = sa.create_engine(sync_url(url), poolclass=sa.pool.NullPool)
    with engine.begin() as connection:
        connection.execute(sa.text("DELETE FROM subscriber WHERE email IS NOT NULL"))
    engine.dispose()
    migrations.upgrade(url, secret_keys=[SECRET])
    assert stored_hashing_key(url) == legacy_hashing_key(SECRET)


def test_a_new_database_gets_a_random_hashing_key(
    database_url: str, empty_database_url: str
) -> None:
    """No subscriber yet: nothing to adopt, so the key owes nothing to any SECRET_KEY."""
    migrations.upgrade(empty_database_url, secret_keys=[SECRET])
    first, second = stored_hashing_key(database_url), stored_hashing_key(empty_database_url)
    assert len(first) == len(second) == 32
    assert first != second
    assert legacy_hashing_key(SECRET) not in (first, second)
    assert legacy_hashing_key(DEFAULT_SECRET_KEY) not in (first, second)


async def test_a_database_without_the_key_is_refused_clearly(
    empty_database_url: str, tmp_path: Path
) -> None:
    migrations.upgrade(empty_database_url, "0002")
    settings = make_settings(empty_database_url, None, tmp_path)
    app = create_app(settings)
    with pytest.raises(HashingKeyMissing, match="run `newsletter migrate`"):
        async with app.router.lifespan_context(app):
            pass
    csv_file = tmp_path / "one.csv"
    csv_file.write_text("email\nawa@example.sn\n", encoding="utf-8")
    result = await run_cli(["subscribers", "import", str(csv_file)], cli_env(settings))
    assert result.exit_code == 1
    assert "no address-hashing key" in result.stderr
    rotate = await run_cli(["keys", "rotate"], cli_env(settings))
    assert rotate.exit_code == 1
    assert "run `newsletter migrate`" in rotate.stderr


def test_fallback_keys_are_checked() -> None:
    base = {"_env_file": None, "secret_key": SECRET}
    with pytest.raises(ValidationError, match="at least 16 characters"):
        Settings(**base, secret_key_fallbacks=f"{NEW_SECRET},short")  # type: ignore[arg-type]
    with pytest.raises(ValidationError, match="SECRET_KEY_FALLBACKS holds the default"):
        Settings(**base, app_env="production", secret_key_fallbacks=DEFAULT_SECRET_KEY)  # type: ignore[arg-type]
    settings = Settings(**base, secret_key_fallbacks=f" {NEW_SECRET} ,, {SECRET}x ")  # type: ignore[arg-type]
    assert settings.secret_key_fallback_list == [NEW_SECRET, f"{SECRET}x"]


def test_rotating_away_from_the_default_key_keeps_no_fallback() -> None:
    from datetime import date

    from app.keys import rotation_plan

    settings = Settings(_env_file=None)
    steps = rotation_plan(settings, new_key=NEW_SECRET, keep_days=0, today=date(2026, 12, 2))
    assert steps[1].action == "SECRET_KEY_FALLBACKS="
    assert "public default" in steps[1].effect
    assert steps[3].action.startswith("after 0 days (on 2026-12-02)")


async def test_a_service_started_before_its_database_loads_the_key_when_it_comes(
    backend: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    """Orchestrators start the API and the database together: the API answers /healthz with 503
    meanwhile, and the first request that hashes an address loads the key."""
    if backend != "postgresql":
        pytest.skip("a SQLite file is created on first use: it cannot be missing")
    import uuid

    from tests.conftest import _pg_execute, _pg_url_for

    template = request.getfixturevalue("pg_template")
    name = f"nl_late_{uuid.uuid4().hex[:10]}"
    settings = make_settings(_pg_url_for(name), None, tmp_path)
    try:
        async with serving(settings) as (app, client):
            assert app.state.tokens.hashing_key is None
            assert (await client.get("/healthz")).status_code == 503
            _pg_execute(f'CREATE DATABASE "{name}" TEMPLATE "{template}"')
            answer = await client.post("/api/v1/subscriptions", json={"email": "awa@example.sn"})
            assert answer.status_code == 202
            assert app.state.tokens.hashing_key == stored_hashing_key(settings.database_url)
    finally:
        _pg_execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
