"""Click redirects under load, the archive at 500 digests, and a digest copy's cost with tracked
links; figures printed, nothing asserted.

- redirect: `newsletter serve` on the embedded default (SQLite, the worker inside) answers
  GET /r/{token} at a fixed rate (1,000/s for 10 s by default), each request on its schedule
  whatever the answers before it (open loop: latency counts from the moment a request was due,
  so a stall shows). Then the server is stopped (SIGTERM) and the counted clicks are compared
  with the redirects answered: the batched counting must lose none.
- archive: GET /archive, /archive/{id}-{slug} and /archive/feed.xml with 500 sent digests of 10
  articles, sequentially (medians and p99, on loopback).
- copy: microseconds to compose one reader's copy of a 10-article digest, links tracked
  (TRACK_CLICKS=aggregate, a signed token per link) and not (off).

    python bench/clicks.py                      # 1,000 clicks/s for 10 s
    python bench/clicks.py --rate 500 --seconds 5
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import sqlalchemy as sa

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from app import migrations  # noqa: E402
from app.config import Settings  # noqa: E402
from app.models import (  # noqa: E402
    ClickCount,
    Delivery,
    Digest,
    DigestArticle,
    Subscriber,
)
from app.security import Tokens  # noqa: E402
from bench.send_throughput import MAIL_FROM, SECRET, free_port, log  # noqa: E402

DIGESTS = 500
ARTICLES = 10
READERS = 12000
COPIES = 2000
BROWSER = "Mozilla/5.0 (X11; Linux x86_64; rv:132.0) Gecko/20100101 Firefox/132.0"


def seed(database_url: str) -> tuple[int, list[int]]:
    """500 sent digests of 10 articles; the newest delivered an hour ago to READERS readers.
    Returns that digest's id and its delivery ids."""
    engine = sa.create_engine(database_url)
    now = datetime.now(UTC)
    with engine.begin() as conn:
        conn.execute(
            sa.insert(Digest.__table__),  # type: ignore[attr-defined]
            [
                {
                    "id": i + 1,
                    "subject": f"Les articles de la semaine n° {i + 1}",
                    "status": "sent",
                    "created_at": now - timedelta(days=DIGESTS - i),
                    "send_started_at": now - timedelta(days=DIGESTS - i),
                    "sent_at": now - timedelta(days=DIGESTS - i, hours=-1),
                    "recipients": READERS,
                    "archived": True,
                    "paused_reason": None,
                    "cancelled_at": None,
                }
                for i in range(DIGESTS)
            ],
        )
        conn.execute(
            sa.insert(DigestArticle.__table__),  # type: ignore[attr-defined]
            [
                {
                    "digest_id": d + 1,
                    "article_id": None,
                    "position": p,
                    "title": f"Un titre d'article assez long, numéro {p} du numéro {d + 1}",
                    "url": f"https://www.example.org/{d + 1}/article-{p}/",
                    "summary": "Un résumé de quelques lignes, comme en donne WordPress. " * 3,
                    "author": "Rédaction",
                    "categories": ["Société"],
                    "image_url": None,
                    "published_at": now - timedelta(days=DIGESTS - d),
                }
                for d in range(DIGESTS)
                for p in range(ARTICLES)
            ],
        )
        conn.execute(
            sa.insert(Subscriber.__table__),  # type: ignore[attr-defined]
            [
                {
                    "id": i + 1,
                    "email": f"reader{i}@bench.example.org",
                    "email_hash": f"{i:064x}",
                    "status": "confirmed",
                    "language": "fr",
                    "created_at": now,
                    "updated_at": now,
                }
                for i in range(READERS)
            ],
        )
        conn.execute(
            sa.insert(Delivery.__table__),  # type: ignore[attr-defined]
            [
                {
                    "id": i + 1,
                    "kind": "digest",
                    "subscriber_id": i + 1,
                    "digest_id": DIGESTS,
                    "language": "fr",
                    "status": "sent",
                    "attempts": 1,
                    "next_attempt_at": now - timedelta(hours=1),
                    "created_at": now - timedelta(hours=1),
                    "sent_at": now - timedelta(hours=1),
                }
                for i in range(READERS)
            ],
        )
    engine.dispose()
    return DIGESTS, list(range(1, READERS + 1))


FLUSH_WAIT = 6.0  # s: the burst window (5 s) and a flush


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process, from /proc (Linux)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(share * len(ordered)))]


async def _connection(
    host: str, port: int, requests: asyncio.Queue[tuple[float, bytes] | None], out: list[float]
) -> int:
    """One keep-alive connection taking due requests from the queue; latencies from due time."""
    reader, writer = await asyncio.open_connection(host, port)
    redirects = 0
    while (item := await requests.get()) is not None:
        due, request = item
        writer.write(request)
        head = await reader.readuntil(b"\r\n\r\n")
        length = 0
        for line in head.split(b"\r\n"):
            if line.lower().startswith(b"content-length:"):
                length = int(line.split(b":")[1])
        if length:
            await reader.readexactly(length)
        out.append(time.perf_counter() - due)
        redirects += head.startswith(b"HTTP/1.1 302")
    writer.close()
    return redirects


async def load(
    port: int, paths: list[str], *, rate: int, seconds: float
) -> tuple[list[float], int]:
    """Open loop: request i is due at start + i/rate and queued then for a free connection."""
    queue: asyncio.Queue[tuple[float, bytes] | None] = asyncio.Queue()
    latencies: list[float] = []
    connections = 64
    tasks = [
        asyncio.create_task(_connection("127.0.0.1", port, queue, latencies))
        for _ in range(connections)
    ]
    total = int(rate * seconds)
    start = time.perf_counter() + 0.2
    for i in range(total):
        due = start + i / rate
        delay = due - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        path = paths[i % len(paths)]
        request = (
            f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nUser-Agent: {BROWSER}\r\n\r\n".encode()
        )
        queue.put_nowait((due, request))
    for _ in tasks:
        queue.put_nowait(None)
    redirects = sum(await asyncio.gather(*tasks))
    return latencies, redirects


def timed_gets(client: httpx.Client, path: str, times: int) -> list[float]:
    durations = []
    for _ in range(times):
        started = time.perf_counter()
        response = client.get(path)
        durations.append(time.perf_counter() - started)
        assert response.status_code == 200, (path, response.status_code)
    return durations


def copy_cost(database_url: str, digest_id: int) -> dict[str, float]:
    from app.db import make_engine, make_sessionmaker
    from app.digests.compose import compose_copy
    from app.digests.delivery import RenderCache
    from app.subscribers.service import Recipient

    figures = {}
    tokens = Tokens(SECRET, confirm_max_age_seconds=86400)
    recipient = Recipient(1, "reader1@bench.example.org", "Lecteur 1", "fr", "confirmed", "a" * 64)
    for mode in ("off", "aggregate"):
        settings = Settings(
            _env_file=None,  # type: ignore[call-arg]
            database_url=database_url,
            secret_key=SECRET,
            mail_from=MAIL_FROM,
            public_url="https://www.dzaleu.com/newsletter",
            track_clicks=mode,  # type: ignore[arg-type]
        )

        async def rendering(settings: Settings = settings) -> object:
            engine = make_engine(database_url)
            async with make_sessionmaker(engine)() as session:
                found = await RenderCache(settings).get(session, digest_id, "fr")
            await engine.dispose()
            return found

        entry = asyncio.run(rendering())
        runs = []
        for _ in range(5):
            started = time.perf_counter()
            for delivery_id in range(1, COPIES + 1):
                compose_copy(
                    settings,
                    tokens,
                    template=entry.template,  # type: ignore[attr-defined]
                    delivery_id=delivery_id,
                    digest_id=digest_id,
                    links=entry.links,  # type: ignore[attr-defined]
                    recipient=recipient,
                )
            runs.append((time.perf_counter() - started) / COPIES * 1e6)
        figures[mode] = statistics.median(runs)
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rate", type=int, default=1000, help="clicks per second")
    parser.add_argument("--seconds", type=float, default=10.0)
    args = parser.parse_args()

    workdir = Path(tempfile.mkdtemp(prefix="nl_bench_clicks_"))
    database_url = f"sqlite:///{workdir / 'bench.db'}"
    migrations.upgrade(database_url)
    log(f"seeding {DIGESTS} sent digests of {ARTICLES} articles and {READERS} delivered copies")
    digest_id, deliveries = seed(database_url)
    tokens = Tokens(SECRET, confirm_max_age_seconds=86400)
    # Each reader follows one link (a reader's clicks, not a scanner's burst).
    paths = [f"/r/{tokens.click_token(d, digest_id, d % ARTICLES)}" for d in deliveries]

    copy = copy_cost(database_url, digest_id)
    port = free_port()
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("SMTP_", "SEND_", "DKIM_"))},
        "DATABASE_URL": database_url,
        "SECRET_KEY": SECRET,
        "MAIL_FROM": MAIL_FROM,
        "PUBLIC_URL": f"http://127.0.0.1:{port}",
        "MAILDIR_PATH": str(workdir / "mail"),
        "LOG_LEVEL": "WARNING",
        "APP_ENV": "development",
    }
    newsletter = str(Path(sys.executable).parent / "newsletter")
    server = subprocess.Popen(
        [newsletter, "serve", "--port", str(port)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        client = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30)
        deadline = time.monotonic() + 30
        while True:
            try:
                if client.get("/healthz").status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError("the server did not start")
            time.sleep(0.05)
        timed_gets(client, "/archive", 5)  # warm up
        archive: dict[str, tuple[list[float], float]] = {}
        for path in (
            "/archive",
            "/archive?page=25",
            f"/archive/{digest_id}-x",
            "/archive/feed.xml",
        ):
            before = cpu_seconds(server.pid)
            durations = timed_gets(client, path, 50)
            archive[path] = (durations, (cpu_seconds(server.pid) - before) / 50)
        log(f"{args.rate} clicks/s for {args.seconds:g} s against newsletter serve (SQLite)")
        asyncio.run(load(port, paths[:200], rate=200, seconds=1))  # warm up: links cached
        cpu_before, wall_before = cpu_seconds(server.pid), time.perf_counter()
        latencies, redirects = asyncio.run(
            load(port, paths[200:], rate=args.rate, seconds=args.seconds)
        )
        time.sleep(FLUSH_WAIT)  # the last clicks' burst window and flush
        server_cpu = cpu_seconds(server.pid) - cpu_before
        wall = time.perf_counter() - wall_before
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(timeout=60)
    engine = sa.create_engine(database_url)
    with engine.connect() as conn:
        row = conn.execute(
            sa.select(ClickCount.clicks, ClickCount.machine_clicks).where(  # type: ignore[call-overload]
                ClickCount.digest_id == digest_id, ClickCount.position == -1
            )
        ).one()
    engine.dispose()
    counted = row[0] + row[1]

    print()
    print(f"redirect, {args.rate:,}/s for {args.seconds:g} s (open loop, from due time):")
    print(
        f"  p50 {percentile(latencies, 0.5) * 1000:.2f} ms   p99 "
        f"{percentile(latencies, 0.99) * 1000:.2f} ms   max {max(latencies) * 1000:.1f} ms"
    )
    print(
        f"  redirects answered {redirects + 200:,}; clicks counted after SIGTERM {counted:,} "
        f"(readers {row[0]:,}, machine {row[1]:,}); lost {redirects + 200 - counted:,}"
    )
    print(
        f"  server CPU {server_cpu / redirects * 1e6:.0f} µs per click (answer, count, write), "
        f"{server_cpu / wall * 100:.0f}% of one core; machine load average "
        f"{os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs"
    )
    print(f"archive, {DIGESTS} sent digests of {ARTICLES} articles (50 sequential GETs):")
    for path, (durations, cpu) in archive.items():
        print(
            f"  {path:<22} median {statistics.median(durations) * 1000:.1f} ms   "
            f"p99 {percentile(durations, 0.99) * 1000:.1f} ms   server CPU {cpu * 1000:.1f} ms"
        )
    print(f"digest copy, {ARTICLES} article links (median of 5 x 2,000 copies):")
    print(
        f"  TRACK_CLICKS=off {copy['off']:.1f} µs   aggregate (a signed link each) "
        f"{copy['aggregate']:.1f} µs"
    )


if __name__ == "__main__":
    main()
