"""`newsletter backup` while a real worker sends, `newsletter restore` into a fresh database, and
the restored service finishing the send without a second copy to anyone already marked sent."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
import sqlalchemy as sa
from fastapi import FastAPI
from sqlmodel.ext.asyncio.session import AsyncSession

from app.articles import service as articles
from app.config import Settings
from app.db import sync_url
from app.models import Subscriber, SubscriberEvent, utcnow
from tests.conftest import SECRET, make_settings
from tests.factories import cli_env, drain_outbox, editor_headers, run_cli
from tests.smtp_server import SmtpServer

pytestmark = pytest.mark.slow

SAMPLE = Path(__file__).parent / "data" / "wordpress-feed-fr.xml"
READERS = 240
# Tables the send does not touch: they must come back exactly as they were.
UNCHANGED_BY_A_SEND = [
    "subscriber",
    "subscriber_event",
    "bounce_event",
    "api_key",
    "article",
    "digest_article",
    "stored_secret",
]


def process_env(database_url: str, smtp_server: SmtpServer) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SMTP_", "SEND_", "PG"))}
    env.update(
        APP_ENV="test",
        DATABASE_URL=database_url,
        SECRET_KEY=SECRET,
        SMTP_HOST=smtp_server.host,
        SMTP_PORT=str(smtp_server.port),
        MAIL_FROM="Dzaleu <newsletter@dzaleu.test>",
        PUBLIC_URL="http://testserver",
        SEND_CONCURRENCY="2",
        SEND_BATCH_SIZE="20",
        SEND_LEASE_SECONDS="2",
        WORKER_POLL_SECONDS="0.1",
        LOG_LEVEL="WARNING",
    )
    return env


def newsletter(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "app.cli", *args], env=env, capture_output=True, text=True
    )


def start_worker(env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "app.cli", "worker"],
        env=env,
        stdout=log.open("wb"),
        stderr=subprocess.STDOUT,
    )


def stop(process: subprocess.Popen[bytes]) -> None:
    process.terminate()
    try:
        process.wait(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()


def wait_until(predicate: Callable[[], bool], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return predicate()


def received(smtp_server: SmtpServer) -> Counter[str]:
    with smtp_server.lock:
        return Counter(r.rcpt_tos[0] for r in smtp_server.received)


def query(database_url: str, sql: str, **params: Any) -> list[tuple[Any, ...]]:
    engine = sa.create_engine(sync_url(database_url), poolclass=sa.pool.NullPool)
    try:
        with engine.connect() as connection:
            return [tuple(row) for row in connection.execute(sa.text(sql), params)]
    finally:
        engine.dispose()


def digest_state(database_url: str) -> tuple[str, int, dict[str, int]]:
    [(status, recipients)] = query(database_url, "SELECT status, recipients FROM digest")
    counts = query(
        database_url, "SELECT status, count(*) FROM delivery WHERE kind = 'digest' GROUP BY status"
    )
    return status, recipients, {s: n for s, n in counts}


def sent_in(database_url: str) -> set[str]:
    rows = query(
        database_url,
        "SELECT s.email FROM delivery d JOIN subscriber s ON s.id = d.subscriber_id "
        "WHERE d.kind = 'digest' AND d.status = 'sent'",
    )
    return {email for (email,) in rows}


async def make_list(app: FastAPI, session: AsyncSession, client: httpx.AsyncClient) -> int:
    """Readers with consent and history, every kind of suppression, and a digest being sent to
    the confirmed ones; the digest's id."""
    tokens = app.state.tokens
    headers = await editor_headers(session)
    now = utcnow()
    readers = [
        Subscriber(
            email=f"lecteur{i}@example.org",
            email_hash=tokens.email_hash(f"lecteur{i}@example.org"),
            name=f"Lecteur {i}",
            status="confirmed",
            confirmed_at=now,
            consent_at=now,
            consent_ip=f"198.51.100.{i % 250}",
            consent_user_agent="Mozilla/5.0",
            consent_source="form",
        )
        for i in range(READERS)
    ]
    session.add_all(readers)
    await session.flush()
    session.add_all(
        SubscriberEvent(subscriber_id=r.id or 0, event=event)
        for r in readers
        for event in ("signup", "confirmed")
    )
    await session.commit()
    # Suppressions of every kind, through the API as they happen.
    for email in ("rebond@example.org", "efface@example.org", "attente@example.org"):
        answer = await client.post("/api/v1/subscriptions", json={"email": email})
        assert answer.status_code == 202
    await drain_outbox(app)  # the confirmation emails go before the digest
    left = await client.delete("/api/v1/subscribers/efface@example.org", headers=headers)
    assert left.status_code == 204
    bounced = await client.post(
        "/api/v1/bounces",
        json={"email": "rebond@example.org", "type": "hard", "reason": "550 5.1.1 unknown"},
        headers=headers,
    )
    assert bounced.status_code == 202, bounced.text
    parti = await session.get(Subscriber, readers[-1].id)  # the last reader unsubscribes
    assert parti is not None
    token = tokens.unsubscribe_token(parti.id, parti.email_hash)
    assert (await client.post(f"/unsubscribe/{token}")).status_code == 200

    await articles.import_feed_document(session, data=SAMPLE.read_bytes())
    await session.commit()
    digest = await client.post("/api/v1/digests", json={}, headers=headers)
    assert digest.status_code == 201
    digest_id: int = digest.json()["id"]
    sent = await client.post(f"/api/v1/digests/{digest_id}/send", headers=headers)
    assert sent.status_code == 202
    assert sent.json()["recipients"] == READERS - 1
    return digest_id


async def test_backup_during_a_send_and_restore_into_a_fresh_database(
    app: FastAPI,
    session: AsyncSession,
    client: httpx.AsyncClient,
    smtp_server: SmtpServer,
    database_url: str,
    empty_database_url: str,
    tmp_path: Path,
) -> None:
    await make_list(app, session, client)
    smtp_server.clear()
    smtp_server.faults.delay_seconds = 0.02  # a send that lasts a few seconds
    env = process_env(database_url, smtp_server)
    backup = tmp_path / "newsletter.backup"

    worker = start_worker(env, tmp_path / "worker.log")
    try:
        assert wait_until(lambda: received(smtp_server).total() >= 40, 60), (
            tmp_path / "worker.log"
        ).read_text()
        started = time.monotonic()
        made = newsletter("backup", str(backup), env=env)
        took = time.monotonic() - started
        at_backup = set(received(smtp_server))
    finally:
        stop(worker)
    assert made.returncode == 0, made.stderr
    assert f"backed up to {backup}" in made.stdout
    assert backup.stat().st_mode & 0o777 == 0o600  # addresses and the hashing key: owner only
    print(f"backup of a sending database: {took:.2f} s, {backup.stat().st_size:,} bytes")

    # What the backup holds: the send half done.
    restored_env = process_env(empty_database_url, smtp_server)
    restored = newsletter("restore", str(backup), env=restored_env)
    assert restored.returncode == 0, restored.stderr
    assert "restored" in restored.stdout
    for table in UNCHANGED_BY_A_SEND:
        order = "name" if table == "stored_secret" else "id"
        original = query(database_url, f"SELECT * FROM {table} ORDER BY {order}")
        assert query(empty_database_url, f"SELECT * FROM {table} ORDER BY {order}") == original, (
            table
        )
    status, recipients, counts = digest_state(empty_database_url)
    assert (status, recipients) == ("sending", READERS - 1)
    assert sum(counts.values()) == recipients
    sent_before = sent_in(empty_database_url)
    assert 0 < len(sent_before) < recipients, counts
    print(f"in the backup: {counts} of {recipients}")
    assert sent_before <= at_backup  # marked sent only once it was sent

    # The restored service finishes the send: only readers not marked sent get a copy.
    smtp_server.clear()
    smtp_server.faults.delay_seconds = 0
    worker = start_worker(restored_env, tmp_path / "restored-worker.log")
    try:
        assert wait_until(lambda: digest_state(empty_database_url)[0] == "sent", 90), (
            tmp_path / "restored-worker.log"
        ).read_text()
    finally:
        stop(worker)
    second = received(smtp_server)
    assert not set(second) & sent_before
    assert set(second.values()) == {1}
    everyone = {f"lecteur{i}@example.org" for i in range(READERS - 1)}
    assert set(second) == everyone - sent_before
    assert digest_state(empty_database_url)[2] == {"sent": recipients}

    # Suppressions came back with the hashing key: the erased address signs up onto its record.
    restored_settings = make_settings(empty_database_url, smtp_server, tmp_path)
    await check_suppressions(restored_settings)


async def check_suppressions(settings: Settings) -> None:
    from app.main import create_app

    app = create_app(settings)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
            async with app.state.sessionmaker() as session:
                headers = await editor_headers(session, name="after restore")
            record = await client.get("/api/v1/subscribers/rebond@example.org", headers=headers)
            assert record.status_code == 200
            assert record.json()["subscriber"]["status"] == "bounced"
            assert record.json()["bounces"][0]["type"] == "hard"
            assert record.json()["consent"]["source"] == "api"
            count = "SELECT count(*) FROM subscriber"
            before = query(settings.database_url, count)
            again = await client.post("/api/v1/subscriptions", json={"email": "efface@example.org"})
            assert again.status_code == 202
            assert query(settings.database_url, count) == before


async def test_restore_refuses_a_database_that_is_not_empty(
    settings: Settings, database_url: str, tmp_path: Path
) -> None:
    backup = tmp_path / "copy.backup"
    env = cli_env(settings)
    made = await run_cli(["backup", str(backup)], env)
    assert made.exit_code == 0, made.output
    before = backup.read_bytes()

    again = await run_cli(["backup", str(backup)], env)
    assert again.exit_code == 1
    assert "already exists: a backup never overwrites" in again.stderr
    assert backup.read_bytes() == before

    onto_itself = await run_cli(["restore", str(backup)], env)
    assert onto_itself.exit_code == 1
    assert "is not empty" in onto_itself.stderr
    assert "restore only into an empty database" in onto_itself.stderr

    junk = tmp_path / "notes.txt"
    junk.write_text("not a database")
    refused = await run_cli(["restore", str(junk)], env)
    assert refused.exit_code == 1
    assert "is not a backup made by `newsletter backup`" in refused.stderr
    missing = await run_cli(["restore", str(tmp_path / "nowhere.backup")], env)
    assert missing.exit_code == 1
    assert "no such file" in missing.stderr


async def test_a_backup_restores_only_into_its_own_kind_of_database(
    settings: Settings, backend: str, tmp_path: Path, empty_database_url: str
) -> None:
    if backend != "postgresql":
        pytest.skip("needs PostgreSQL as the other kind")
    dump = tmp_path / "pg.backup"
    assert (await run_cli(["backup", str(dump)], cli_env(settings))).exit_code == 0
    sqlite_env = {**cli_env(settings), "DATABASE_URL": f"sqlite:///{tmp_path / 'x.db'}"}
    refused = await run_cli(["restore", str(dump)], sqlite_env)
    assert refused.exit_code == 1
    assert "is a PostgreSQL backup (pg_dump) and DATABASE_URL is SQLite" in refused.stderr
    copy = tmp_path / "lite.backup"
    template = make_settings(f"sqlite:///{tmp_path / 'lite.db'}", None, tmp_path)
    from app import migrations

    migrations.upgrade(template.database_url)
    assert (await run_cli(["backup", str(copy)], cli_env(template))).exit_code == 0
    refused = await run_cli(
        ["restore", str(copy)], {**cli_env(settings), "DATABASE_URL": empty_database_url}
    )
    assert refused.exit_code == 1
    assert "is a SQLite backup and DATABASE_URL is PostgreSQL" in refused.stderr


async def test_pg_dump_missing_or_too_old_is_a_clear_error(
    settings: Settings, backend: str, tmp_path: Path
) -> None:
    if backend != "postgresql":
        pytest.skip("pg_dump is for PostgreSQL")
    [(version,)] = query(settings.database_url, "SHOW server_version_num")
    major = int(version) // 10000
    backup = tmp_path / "pg.backup"
    empty = tmp_path / "empty-bin"
    empty.mkdir()
    missing = await run_cli(["backup", str(backup)], cli_env(settings, PG_BIN_DIR=str(empty)))
    assert missing.exit_code == 1
    assert f"pg_dump not found (looked in PG_BIN_DIR={empty})" in missing.stderr
    assert f"apt-get install postgresql-client-{major}" in missing.stderr

    old = tmp_path / "old-bin"
    old.mkdir()
    # An old client as an older distribution would have it (pg_dump 9.6 refuses newer servers).
    (old / "pg_dump").write_text('#!/bin/sh\necho "pg_dump (PostgreSQL) 9.6.24"\n')
    (old / "pg_dump").chmod(0o755)
    too_old = await run_cli(["backup", str(backup)], cli_env(settings, PG_BIN_DIR=str(old)))
    assert too_old.exit_code == 1
    assert f"is version 9 and the server is PostgreSQL {major}" in too_old.stderr
    assert not backup.exists()
    assert not backup.with_name(backup.name + ".partial").exists()
