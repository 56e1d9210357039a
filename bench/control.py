"""Pause, cancel and unsubscribe at full speed, measured from outside.

Real processes on PostgreSQL: `newsletter serve --no-worker` answers the editor's and the
readers' requests, two `newsletter worker` processes send (no rate limit, batches of 200) to an
SMTP server in this process that notes when each exchange began (MAIL FROM) and ended (250).

Figures:
- pause:  copies whose exchange began after the pause was answered, and copies accepted after it
          (target: none began; at most SEND_CONCURRENCY per worker finish);
- unsubscribe: of 120 readers who unsubscribe mid-send, those mailed after their answer whose
          exchange began after it (target: 0);
- cancel: as pause;
- truth:  copies the server accepted but not recorded `sent`, and `sent` rows never accepted.

    python bench/control.py                       # 30,000 readers
    python bench/control.py --subscribers 50000 --concurrency 16

Not a test: it prints figures. Loopback only; every wait is bounded.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import psycopg
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, Envelope, Session

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from app.db import make_engine, make_sessionmaker  # noqa: E402
from app.editors import create_api_key  # noqa: E402
from app.security import Tokens  # noqa: E402
from bench.scratch_db import scratch_database  # noqa: E402
from bench.send_throughput import (  # noqa: E402
    MAIL_FROM,
    SECRET,
    admin_url,
    free_port,
    load_workload,
    log,
)

HEARD_WITHIN = 0.05  # s: MAIL FROM read by the server a little after the worker wrote it
_DELIVERY = re.compile(rb"Message-ID: <nl\.(\d+)\.", re.IGNORECASE)


@dataclass
class Copy:
    recipient: str
    delivery_id: int
    started: float
    finished: float


@dataclass
class Recorder:
    copies: list[Copy] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    async def handle_MAIL(
        self, server: SMTP, session: Session, envelope: Envelope, address: str, options: list[str]
    ) -> str:
        envelope.mail_from = address
        session.started = time.monotonic()  # type: ignore[attr-defined]
        return "250 OK"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        match = _DELIVERY.search(envelope.original_content or b"")
        copy = Copy(
            str(envelope.rcpt_tos[0]),
            int(match.group(1)) if match else -1,
            getattr(session, "started", 0.0),
            time.monotonic(),
        )
        with self.lock:
            self.copies.append(copy)
        return "250 OK"

    def count(self) -> int:
        with self.lock:
            return len(self.copies)

    def after(self, moment: float) -> tuple[int, int]:
        """(exchanges begun after `moment`, copies accepted after it)."""
        with self.lock:
            began = sum(1 for c in self.copies if c.started > moment + HEARD_WITHIN)
            finished = sum(1 for c in self.copies if c.finished > moment)
        return began, finished


def wait_until(condition: object, limit: float, what: str) -> None:
    deadline = time.monotonic() + limit
    while not condition():  # type: ignore[operator]
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out waiting for {what}")
        time.sleep(0.01)


async def api_key(database_url: str) -> str:
    engine = make_engine(database_url)
    async with make_sessionmaker(engine)() as session:
        _, key = await create_api_key(session, name="bench")
        await session.commit()
    await engine.dispose()
    return key


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--subscribers", type=int, default=30_000)
    parser.add_argument("--concurrency", type=int, default=8, help="SEND_CONCURRENCY per worker")
    parser.add_argument(
        "--database-url",
        default=os.environ.get(
            "TEST_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/postgres"
        ),
    )
    args = parser.parse_args()
    with scratch_database(args.database_url) as database_url:
        run(database_url, args.subscribers, args.concurrency)


def run(database_url: str, subscribers: int, concurrency: int) -> None:
    log(f"loading {subscribers:,} readers and a digest queued to all of them")
    digest_id = asyncio.run(load_workload(database_url, subscribers))
    key = asyncio.run(api_key(database_url))
    recorder = Recorder()
    smtp_port, http_port = free_port(), free_port()
    smtp = Controller(recorder, hostname="127.0.0.1", port=smtp_port, ready_timeout=10)
    smtp.start()
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("SMTP_", "SEND_", "DKIM_"))},
        "DATABASE_URL": database_url,
        "SECRET_KEY": SECRET,
        "MAIL_FROM": MAIL_FROM,
        "PUBLIC_URL": f"http://127.0.0.1:{http_port}",
        "SMTP_HOST": "127.0.0.1",
        "SMTP_PORT": str(smtp_port),
        "SEND_CONCURRENCY": str(concurrency),
        "SEND_BATCH_SIZE": "200",
        "WORKER_POLL_SECONDS": "0.2",
        "RATE_LIMIT_SIGNUP": "100000/minute",
        "LOG_LEVEL": "WARNING",
        "APP_ENV": "development",
    }
    newsletter = str(Path(sys.executable).parent / "newsletter")
    server = subprocess.Popen(
        [newsletter, "serve", "--no-worker", "--port", str(http_port)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    workers: list[subprocess.Popen[bytes]] = []
    figures: dict[str, object] = {}
    try:
        client = httpx.Client(base_url=f"http://127.0.0.1:{http_port}", timeout=30)
        wait_until(lambda: _healthy(client), 30, "the server")
        headers = {"Authorization": f"Bearer {key}"}
        workers = [
            subprocess.Popen([newsletter, "worker"], env=env, stderr=subprocess.DEVNULL)
            for _ in range(2)
        ]
        url = f"/api/v1/digests/{digest_id}"

        # Pause at full speed, then resume.
        wait_until(lambda: recorder.count() >= subscribers // 10, 300, "the first copies")
        response = client.post(f"{url}/pause", headers=headers)
        answered = time.monotonic()
        response.raise_for_status()
        time.sleep(2)
        figures["pause"] = recorder.after(answered)
        log(f"pause: {figures['pause']} (began, accepted) after the answer")
        client.post(f"{url}/resume", headers=headers).raise_for_status()

        # 120 readers unsubscribe while the send goes on (one-click POSTs, as a mail provider).
        tokens = Tokens(SECRET, confirm_max_age_seconds=86400)
        leaving = _readers_not_yet_mailed(database_url, digest_id, 120)
        unsubscribed: dict[str, float] = {}
        for subscriber_id, email, email_hash in leaving:
            token = tokens.unsubscribe_token(subscriber_id, email_hash)
            reply = client.post(f"/unsubscribe/{token}", data={"List-Unsubscribe": "One-Click"})
            reply.raise_for_status()
            unsubscribed[email] = time.monotonic()
        with recorder.lock:
            late = [
                c
                for c in recorder.copies
                if c.recipient in unsubscribed
                and c.started > unsubscribed[c.recipient] + HEARD_WITHIN
            ]
            mailed_after = [
                c
                for c in recorder.copies
                if c.recipient in unsubscribed and c.finished > unsubscribed[c.recipient]
            ]
        figures["unsubscribe"] = (len(late), len(mailed_after))
        log(f"unsubscribe: {figures['unsubscribe']} (began, accepted) after the answer")

        # Cancel at full speed.
        wait_until(lambda: recorder.count() >= subscribers * 6 // 10, 600, "60% of the copies")
        response = client.post(f"{url}/cancel", headers=headers)
        answered = time.monotonic()
        response.raise_for_status()
        time.sleep(2)
        figures["cancel"] = recorder.after(answered)
        log(f"cancel: {figures['cancel']} (began, accepted) after the answer")
        time.sleep(1)
    finally:
        for worker in workers:
            worker.terminate()
        for worker in workers:
            worker.wait(timeout=60)
        server.terminate()
        server.wait(timeout=30)
        smtp.stop()

    accepted = {c.delivery_id for c in recorder.copies}
    sent = _sent_rows(database_url, digest_id)
    statuses = _statuses(database_url, digest_id)
    print()
    print(f"control at full speed: {subscribers:,} readers, 2 workers x {concurrency} connections")
    print("(began, accepted) = exchanges begun / copies accepted after the answer")
    print(f"  pause       {figures['pause']}   target: (0, <= {2 * concurrency})")
    print(f"  unsubscribe {figures['unsubscribe']}   target: (0, any): 120 readers")
    print(f"  cancel      {figures['cancel']}   target: (0, <= {2 * concurrency})")
    print(f"  copies accepted by the server: {len(accepted):,}; rows sent: {len(sent):,}")
    print(f"  accepted but not recorded sent: {len(accepted - sent)}")
    print(f"  recorded sent but never accepted: {len(sent - accepted)}")
    print(f"  final statuses: {statuses}")


def _healthy(client: httpx.Client) -> bool:
    try:
        return client.get("/healthz").status_code == 200
    except httpx.HTTPError:
        return False


def _readers_not_yet_mailed(
    database_url: str, digest_id: int, count: int
) -> list[tuple[int, str, str]]:
    with psycopg.connect(admin_url(database_url)) as conn:
        rows = conn.execute(
            "SELECT s.id, s.email, s.email_hash FROM delivery d JOIN subscriber s"
            " ON s.id = d.subscriber_id WHERE d.digest_id = %s AND d.status = 'queued'"
            " ORDER BY d.id LIMIT %s",
            (digest_id, count * 20),
        ).fetchall()
    return [(int(r[0]), str(r[1]), str(r[2])) for r in rows[::20][:count]]


def _sent_rows(database_url: str, digest_id: int) -> set[int]:
    with psycopg.connect(admin_url(database_url)) as conn:
        rows = conn.execute(
            "SELECT id FROM delivery WHERE digest_id = %s AND status = 'sent'", (digest_id,)
        ).fetchall()
    return {int(r[0]) for r in rows}


def _statuses(database_url: str, digest_id: int) -> dict[str, int]:
    with psycopg.connect(admin_url(database_url)) as conn:
        rows = conn.execute(
            "SELECT status, count(*) FROM delivery WHERE digest_id = %s GROUP BY status",
            (digest_id,),
        ).fetchall()
    return {str(r[0]): int(r[1]) for r in rows}


if __name__ == "__main__":
    main()
