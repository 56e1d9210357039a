"""Real `newsletter worker` processes killed mid-send: nothing lost, duplicates bounded."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest
from fastapi import FastAPI
from sqlmodel.ext.asyncio.session import AsyncSession

from app.worker.recorder import RECORD_GROUP
from tests.conftest import SECRET
from tests.factories import queue_confirmations
from tests.smtp_server import SmtpServer

pytestmark = pytest.mark.slow

CONCURRENCY = 4
TOTAL = 300


def worker_env(database_url: str, smtp_server: SmtpServer, tmp_path: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SMTP_", "SEND_"))}
    env.update(
        DATABASE_URL=database_url,
        SECRET_KEY=SECRET,
        SMTP_HOST=smtp_server.host,
        SMTP_PORT=str(smtp_server.port),
        MAIL_FROM="Dzaleu <newsletter@dzaleu.test>",
        PUBLIC_URL="http://testserver",
        SEND_CONCURRENCY=str(CONCURRENCY),
        SEND_BATCH_SIZE="20",
        SEND_LEASE_SECONDS="2",
        WORKER_POLL_SECONDS="0.1",
        LOG_LEVEL="WARNING",
    )
    return env


def start_worker(env: dict[str, str], tmp_path: Path, name: str) -> subprocess.Popen[bytes]:
    log = (tmp_path / f"{name}.log").open("wb")
    return subprocess.Popen(
        [sys.executable, "-m", "app.cli", "worker"], env=env, stdout=log, stderr=subprocess.STDOUT
    )


def received(smtp_server: SmtpServer) -> Counter[str]:
    with smtp_server.lock:
        return Counter(r.rcpt_tos[0] for r in smtp_server.received)


def wait_until(predicate, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return predicate()


async def _run_interrupted(
    sig: signal.Signals,
    app: FastAPI,
    session: AsyncSession,
    smtp_server: SmtpServer,
    database_url: str,
    tmp_path: Path,
) -> tuple[Counter[str], int]:
    await queue_confirmations(session, app.state.tokens, TOTAL)
    smtp_server.faults.delay_seconds = 0.01  # slow enough to interrupt mid-send
    env = worker_env(database_url, smtp_server, tmp_path)
    first = start_worker(env, tmp_path, "first")
    try:
        assert wait_until(lambda: received(smtp_server).total() >= TOTAL // 3, 60), (
            tmp_path / "first.log"
        ).read_text()
        first.send_signal(sig)
        first.wait(timeout=30)
    finally:
        if first.poll() is None:
            first.kill()
    at_interrupt = received(smtp_server).total()
    assert at_interrupt < TOTAL, "the worker finished before it could be interrupted"
    second = start_worker(env, tmp_path, "second")
    try:
        assert wait_until(lambda: len(received(smtp_server)) >= TOTAL, 90), (
            tmp_path / "second.log"
        ).read_text()
        await asyncio.sleep(0.5)  # anything still to come would be a duplicate
    finally:
        second.terminate()
        second.wait(timeout=30)
    return received(smtp_server), first.returncode


async def test_sigkill_mid_digest_loses_nothing(
    app: FastAPI, session: AsyncSession, smtp_server: SmtpServer, database_url: str, tmp_path: Path
) -> None:
    counts, code = await _run_interrupted(
        signal.SIGKILL, app, session, smtp_server, database_url, tmp_path
    )
    assert code == -signal.SIGKILL
    assert len(counts) == TOTAL  # every reader got it
    duplicates = sum(n - 1 for n in counts.values())
    print(f"SIGKILL: {duplicates} duplicate(s) of {TOTAL}")
    # At most what was on the wire or accepted but not yet recorded.
    assert duplicates <= CONCURRENCY + RECORD_GROUP


async def test_sigterm_mid_digest_duplicates_nothing(
    app: FastAPI, session: AsyncSession, smtp_server: SmtpServer, database_url: str, tmp_path: Path
) -> None:
    counts, code = await _run_interrupted(
        signal.SIGTERM, app, session, smtp_server, database_url, tmp_path
    )
    assert code == 0
    assert len(counts) == TOTAL
    assert set(counts.values()) == {1}


async def test_two_worker_processes_send_each_message_once(
    app: FastAPI,
    session: AsyncSession,
    smtp_server: SmtpServer,
    database_url: str,
    tmp_path: Path,
    backend: str,
) -> None:
    if backend != "postgresql":
        pytest.skip("several workers need PostgreSQL (SKIP LOCKED); SQLite runs one worker")
    await queue_confirmations(session, app.state.tokens, TOTAL)
    env = worker_env(database_url, smtp_server, tmp_path)
    workers = [start_worker(env, tmp_path, f"w{i}") for i in range(2)]
    try:
        assert wait_until(lambda: len(received(smtp_server)) >= TOTAL, 90)
        await asyncio.sleep(0.5)
    finally:
        for w in workers:
            w.terminate()
        for w in workers:
            w.wait(timeout=30)
    counts = received(smtp_server)
    assert len(counts) == TOTAL
    assert set(counts.values()) == {1}
