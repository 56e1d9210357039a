"""Send throughput and worker memory, measured against Postfix's smtp-sink on loopback.

Workload: N confirmed subscribers on PostgreSQL, one digest of 15 articles built from
../shared/samples/wordpress-feed-fr.xml (its 5 items and 10 variants of them), sent by real
`newsletter worker` processes to `smtp-sink`. Anchor, in the same run: Postfix's `smtp-source`
sending as many messages of the same size to the same sink (`-d -s 8`).

Figures: messages/s with 1 and with 2 workers, their ratio to smtp-source, and the peak RSS
(VmHWM) of a worker at 10,000 and at 100,000 subscribers (with --memory). With --dkim, the
same runs again with every copy DKIM-signed, and the ratio of the two.

    python bench/send_throughput.py                     # 20,000 subscribers, 1 and 2 workers
    python bench/send_throughput.py --dkim              # ... and again signed (RSA-2048)
    python bench/send_throughput.py --dkim both         # ... signed RSA-2048 + Ed25519
    python bench/send_throughput.py --subscribers 100000
    python bench/send_throughput.py --memory            # peak RSS at 10k and 100k
    python bench/send_throughput.py --subscribers 1000000  # queue + send at 100k and 1M
    python bench/send_throughput.py --topic-sets 8      # ... then readers over 8 topic sets, 3 rounds

With --topic-sets N, the same digest is sent again with the readers spread over N sets of topics
(each set picks other articles of the digest: one rendering per set and language), and the rate
is compared with the single-set runs of the same process.

Not a test: it prints figures. Loopback only; every loop is bounded in count and time.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import timedelta
from pathlib import Path
from typing import Any

import psycopg
import sqlalchemy as sa
from sqlalchemy.engine import make_url

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from app.articles.feeds import parse_feed  # noqa: E402
from app.articles.service import upsert_articles  # noqa: E402
from app.db import make_engine, make_sessionmaker  # noqa: E402
from app.digests.service import create_digest, send_digest  # noqa: E402
from app.keys import load_hashing_key  # noqa: E402
from app.models import Delivery, Digest, Subscriber, utcnow  # noqa: E402
from app.security import Tokens  # noqa: E402
from bench.scratch_db import scratch_database  # noqa: E402

SAMPLE = next(
    path
    for path in (
        ROOT.parent / "shared" / "samples" / "wordpress-feed-fr.xml",
        ROOT / "tests" / "data" / "wordpress-feed-fr.xml",  # the same file, in a worktree
    )
    if path.exists()
)
SECRET = "bench-secret-key-0123456789abcdef"
MAIL_FROM = "Dzaleu <newsletter@dzaleu.test>"
TIME_LIMIT = 1800.0  # seconds: no single phase runs longer
STALL_LIMIT = 60.0  # seconds without a single message recorded: give up


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


def ensure_postfix_tools() -> None:
    if shutil.which("smtp-sink") and shutil.which("smtp-source"):
        return
    log("installing Debian's postfix for smtp-sink and smtp-source")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    subprocess.run(["apt-get", "update", "-qq"], check=True, env=env)
    subprocess.run(["apt-get", "install", "-y", "-qq", "postfix"], check=True, env=env)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Sink:
    port: int
    process: subprocess.Popen[bytes]

    @classmethod
    def start(cls, *, pipelining: bool = True) -> Sink:
        port = free_port()
        process = subprocess.Popen(
            [
                "smtp-sink",
                "-u",
                "nobody",
                *([] if pipelining else ["-p"]),
                f"127.0.0.1:{port}",
                "1024",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        for _ in range(100):
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                return cls(port, process)
            except OSError:
                time.sleep(0.05)
        raise RuntimeError("smtp-sink did not start")

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(timeout=10)


# --- The database -------------------------------------------------------------------------


def admin_url(database_url: str) -> str:
    return make_url(database_url).set(drivername="postgresql").render_as_string(False)


async def load_workload(database_url: str, subscribers: int, articles: int = 15) -> int:
    """The subscribers, 15 articles and a digest queued to everyone; the digest's id."""
    digest_id, _ = await load_and_queue(database_url, subscribers, articles)
    return digest_id


async def load_and_queue(
    database_url: str, subscribers: int, articles: int = 15
) -> tuple[int, float]:
    """As `load_workload`, and the seconds queueing the digest took (create + send: the
    INSERT ... SELECT of every copy and the statistics refresh), as an editor's send does."""
    engine = make_engine(database_url)
    sessionmaker = make_sessionmaker(engine)
    tokens = Tokens(
        SECRET, confirm_max_age_seconds=86400, hashing_key=await load_hashing_key(engine)
    )
    parsed = parse_feed(SAMPLE.read_bytes(), url="https://www.dzaleu.com/feed/")
    entries = list(parsed.entries)
    for round_ in (1, 2):  # the sample's 5 items and 10 variants of them: 15 articles
        entries += [
            replace(
                entry,
                guid=f"{entry.guid or entry.url}#v{round_}",
                url=f"{entry.url}?v={round_}",
                title=f"{entry.title} ({round_ + 1})",
            )
            for entry in parsed.entries
        ]
    async with sessionmaker() as session:
        await upsert_articles(session, entries=entries[:15])
        await session.commit()
    now = utcnow()
    chunk = 10_000
    for start in range(0, subscribers, chunk):
        rows = []
        for i in range(start, min(subscribers, start + chunk)):
            email = f"reader{i}@bench.example.org"
            rows.append(
                {
                    "email": email,
                    "email_hash": tokens.email_hash(email),
                    "name": f"Lecteur {i}" if i % 3 else None,
                    "language": "en" if i % 5 == 0 else "fr",
                    "status": "confirmed",
                    "created_at": now,
                    "updated_at": now,
                    "confirmed_at": now,
                }
            )
        async with engine.begin() as conn:
            await conn.execute(sa.insert(Subscriber), rows)
    async with engine.begin() as conn:
        # Each reader's history, as signing up leaves it: a real list's events table is the
        # biggest one after the outbox, and a digest's figures read it.
        await conn.execute(
            sa.text(
                "INSERT INTO subscriber_event (subscriber_id, created_at, event) "
                "SELECT id, created_at, kind FROM subscriber, "
                "(VALUES ('subscribed'), ('confirmed')) AS events(kind)"
            )
        )
    started = time.monotonic()
    async with sessionmaker() as session:
        digest = await create_digest(session, max_articles=articles)
        assert digest.id is not None
        await send_digest(session, digest_id=digest.id)
        await session.commit()
        digest_id = digest.id
    queued_in = time.monotonic() - started
    await engine.dispose()
    return digest_id, queued_in


# Sets of the sample's categories: each picks another part of the digest's 15 articles (12, 9
# or 6 of them; "Non classé" is nobody's topic), as readers' choices would.
_CATEGORIES = ("International", "Vie du site", "Culture", "Économie")
TOPIC_SETS = (
    list(_CATEGORIES),
    *([c for c in _CATEGORIES if c != left_out] for left_out in _CATEGORIES),
    ["International", "Économie"],
    ["Culture", "Vie du site"],
    ["International", "Culture"],
)


async def spread_topics(database_url: str, sets: int) -> None:
    """Reader i gets TOPIC_SETS[i % sets] (one UPDATE per set); 0 sets: every reader has no
    topics (the whole digest, one rendering per language)."""
    engine = make_engine(database_url)
    async with engine.begin() as conn:
        if not sets:
            await conn.execute(sa.update(Subscriber).values(topics=[]))
        for index in range(sets):
            await conn.execute(
                sa.update(Subscriber)
                .where(sa.text("id % :sets = :index").bindparams(sets=sets, index=index))
                .values(topics=TOPIC_SETS[index])
            )
    await engine.dispose()


async def reset_send(database_url: str, digest_id: int) -> None:
    engine = make_engine(database_url)
    async with engine.begin() as conn:
        await conn.execute(
            sa.update(Delivery)
            .where(Delivery.digest_id == digest_id)  # type: ignore[arg-type]
            .values(
                status="queued",
                attempts=0,
                sent_at=None,
                lease_until=None,
                leased_by=None,
                next_attempt_at=utcnow() - timedelta(seconds=1),
                last_error=None,
            )
        )
        await conn.execute(
            sa.update(Digest).where(Digest.id == digest_id).values(status="sending")  # type: ignore[arg-type]
        )
    await engine.dispose()


class Progress:
    """One plain connection, polled twice a second: the measuring must not eat the CPU."""

    def __init__(self, database_url: str, digest_id: int) -> None:
        self._conn = psycopg.connect(admin_url(database_url), autocommit=True)
        self._digest_id = digest_id

    def decided(self) -> int:
        row = self._conn.execute(
            "SELECT coalesce(sum(n), 0) FROM digest_tally WHERE digest_id = %s"
            " AND status IN ('sent', 'failed', 'skipped')",
            (self._digest_id,),
        ).fetchone()
        return int(row[0]) if row else 0

    def sustained_rate(self) -> float:
        """Messages/s between the first and the last recorded send (no process start-up)."""
        row = self._conn.execute(
            "SELECT count(*), extract(epoch FROM max(sent_at) - min(sent_at))"
            " FROM delivery WHERE digest_id = %s AND status = 'sent'",
            (self._digest_id,),
        ).fetchone()
        if not row or not row[1]:
            return 0.0
        return float(row[0]) / float(row[1])

    def close(self) -> None:
        self._conn.close()


# --- Runs -----------------------------------------------------------------------------------


def peak_rss_mb(pid: int) -> float:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (fields 14 and 15 of /proc/PID/stat)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return 0.0


@dataclass
class Run:
    workers: int
    messages: int
    seconds: float
    rate: float
    peak_rss_mb: float
    sustained: float = 0.0
    dkim: bool = False
    cpu_per_message: float = 0.0  # the workers' CPU seconds per message sent


def run_workers(
    database_url: str,
    digest_id: int,
    total: int,
    sink: Sink,
    workers: int,
    concurrency: int,
    dkim_env: dict[str, str] | None = None,
    *,
    reset: bool = True,
    on_poll: Callable[[], None] | None = None,
) -> Run:
    if reset:
        asyncio.run(reset_send(database_url, digest_id))
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("SMTP_", "SEND_", "DKIM_"))},
        "DATABASE_URL": database_url,
        "SECRET_KEY": SECRET,
        "MAIL_FROM": MAIL_FROM,
        "PUBLIC_URL": "https://www.dzaleu.com/newsletter",
        "SMTP_HOST": "127.0.0.1",
        "SMTP_PORT": str(sink.port),
        "SEND_CONCURRENCY": str(concurrency),
        "SEND_BATCH_SIZE": "500",
        "SMTP_MESSAGES_PER_CONNECTION": "1000",
        "WORKER_POLL_SECONDS": "0.2",
        "LOG_LEVEL": "WARNING",
        "APP_ENV": "development",
        **(dkim_env or {}),
    }
    command = [str(Path(sys.executable).parent / "newsletter"), "worker"]
    started = time.monotonic()
    processes = [
        subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        for _ in range(workers)
    ]
    peak = 0.0
    done = 0
    # CPU time and count at the first progress seen: start-up (imports) is not per message.
    first: tuple[float, int] | None = None
    last_progress = time.monotonic()
    progress = Progress(database_url, digest_id)
    try:
        while time.monotonic() - started < TIME_LIMIT:
            time.sleep(0.5)
            if on_poll is not None:
                on_poll()
            peak = max([peak, *(peak_rss_mb(p.pid) for p in processes)])
            decided = progress.decided()
            if decided > done:
                last_progress = time.monotonic()
                if first is None:
                    first = (sum(cpu_seconds(p.pid) for p in processes), decided)
            done = decided
            if done >= total:
                break
            if time.monotonic() - last_progress > STALL_LIMIT:
                raise RuntimeError(f"no progress for {STALL_LIMIT:.0f}s at {done:,}/{total:,}")
            if any(p.poll() is not None for p in processes):
                err = b"".join(
                    p.stderr.read() for p in processes if p.stderr and p.poll() is not None
                )
                raise RuntimeError(f"a worker exited: {err.decode(errors='replace')[-2000:]}")
        seconds = time.monotonic() - started
        sustained = progress.sustained_rate()
    finally:
        progress.close()
        cpu = 0.0
        for p in processes:
            peak = max(peak, peak_rss_mb(p.pid))
            cpu += cpu_seconds(p.pid)
            p.terminate()
        for p in processes:
            p.wait(timeout=30)
    cpu_start, done_start = first or (0.0, 0)
    measured = done - done_start
    return Run(
        workers,
        done,
        seconds,
        done / seconds,
        peak,
        sustained,
        dkim=bool(dkim_env),
        cpu_per_message=(cpu - cpu_start) / measured if measured > 0 else 0.0,
    )


def message_size(database_url: str, digest_id: int) -> int:
    """The size of one real copy, composed the way the worker does."""

    async def compose() -> int:
        from app.config import Settings
        from app.digests.compose import compose_copy
        from app.digests.delivery import RenderCache
        from app.subscribers.service import Recipient

        settings = Settings(
            _env_file=None,  # type: ignore[call-arg]
            database_url=database_url,
            secret_key=SECRET,
            mail_from=MAIL_FROM,
            public_url="https://www.dzaleu.com/newsletter",
        )
        engine = make_engine(database_url)
        async with make_sessionmaker(engine)() as session:
            rendering = await RenderCache(settings).get(session, digest_id, "fr")
        await engine.dispose()
        tokens = Tokens(SECRET, confirm_max_age_seconds=86400)
        recipient = Recipient(
            1, "reader1@bench.example.org", "Lecteur 1", "fr", "confirmed", "a" * 64
        )
        message, _ = compose_copy(
            settings,
            tokens,
            template=rendering.template,
            delivery_id=1,
            digest_id=digest_id,
            links=rendering.links,
            recipient=recipient,
        )
        return len(message)

    return asyncio.run(compose())


def run_smtp_source(sink: Sink, messages: int, size: int, *, runs: int = 3) -> Run:
    """The median of `runs` runs: smtp-source swings 2-3x from one run to the next here."""
    results = sorted(
        (_smtp_source_once(sink, messages, size) for _ in range(runs)), key=lambda r: r.rate
    )
    return results[len(results) // 2]


def _smtp_source_once(sink: Sink, messages: int, size: int) -> Run:
    started = time.monotonic()
    subprocess.run(
        [
            "smtp-source",
            "-d",
            "-s",
            "8",
            "-m",
            str(messages),
            "-l",
            str(size),
            "-f",
            "newsletter@dzaleu.test",
            "-t",
            "reader@bench.example.org",
            f"127.0.0.1:{sink.port}",
        ],
        check=True,
        timeout=TIME_LIMIT,
    )
    seconds = time.monotonic() - started
    return Run(0, messages, seconds, messages / seconds, 0.0)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--subscribers", type=int, default=20_000)
    parser.add_argument("--concurrency", type=int, default=16, help="SEND_CONCURRENCY per worker")
    parser.add_argument(
        "--database-url",
        default=os.environ.get(
            "TEST_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/postgres"
        ),
        help="a PostgreSQL server where the benchmark may create and drop a database",
    )
    parser.add_argument("--memory", action="store_true", help="peak RSS at 10,000 and 100,000")
    parser.add_argument(
        "--articles",
        type=int,
        default=15,
        choices=range(1, 16),
        metavar="1-15",
        help="articles in the digest (15: 26.5 KiB copies; 4: about 8.8 KB)",
    )
    parser.add_argument(
        "--scale",
        action="store_true",
        help="queue + send with 2 workers at 100,000 and at --subscribers, first/last 10%% "
        "rates, progress reads (the default at 1,000,000)",
    )
    parser.add_argument(
        "--topic-sets",
        type=int,
        default=0,
        help="also send with the readers spread over this many topic sets (1-8)",
    )
    parser.add_argument("--rounds", type=int, default=3, help="rounds of --topic-sets")
    parser.add_argument(
        "--no-pipelining",
        action="store_true",
        help="smtp-sink without PIPELINING (-p): what a relay that does not offer it costs",
    )
    parser.add_argument(
        "--dkim",
        nargs="?",
        const="rsa",
        choices=["rsa", "both"],
        help="also send with DKIM signing (rsa: RSA-2048, the default; both: RSA-2048 and "
        "Ed25519, two signatures a message) and compare with DKIM off",
    )
    args = parser.parse_args()
    if not 1 <= args.subscribers <= 1_000_000:
        parser.error("--subscribers must be between 1 and 1,000,000")
    if not 0 <= args.topic_sets <= len(TOPIC_SETS):
        parser.error(f"--topic-sets must be between 0 and {len(TOPIC_SETS)}")
    ensure_postfix_tools()
    sink = Sink.start(pipelining=not args.no_pipelining)
    try:
        if args.memory:
            memory(args, sink)
        elif args.subscribers >= 1_000_000 or args.scale:
            scale(args, sink)
        else:
            throughput(args, sink)
    finally:
        sink.stop()


def throughput(args: argparse.Namespace, sink: Sink) -> None:
    with scratch_database(args.database_url) as database_url:
        log(f"loading {args.subscribers:,} subscribers and a {args.articles}-article digest")
        digest_id = asyncio.run(load_workload(database_url, args.subscribers, args.articles))
        size = message_size(database_url, digest_id)
        log(f"one copy is {size / 1024:.1f} KiB")
        anchor = run_smtp_source(sink, args.subscribers, size)
        log(f"smtp-source: {anchor.rate:,.0f} msg/s")
        runs = []
        with tempfile.TemporaryDirectory() as keys:
            variants = [None] + ([dkim_keys(Path(keys), args.dkim)] if args.dkim else [])
            for dkim_env in variants:
                for workers in (1, 2):
                    run = run_workers(
                        database_url,
                        digest_id,
                        args.subscribers,
                        sink,
                        workers,
                        args.concurrency,
                        dkim_env,
                    )
                    runs.append(run)
                    log(
                        f"{workers} worker(s){', DKIM ' + args.dkim if dkim_env else ''}: "
                        f"{run.rate:,.0f} msg/s, peak RSS {run.peak_rss_mb:.0f} MB"
                    )
        if args.topic_sets:
            topic_comparison(args, sink, database_url, digest_id)
    print()
    print(
        f"send throughput: {args.subscribers:,} messages of {size / 1024:.1f} KiB to smtp-sink on loopback"
    )
    print("msg/s: wall clock from process start; sustained: first to last recorded send;")
    print("CPU/msg: the workers' CPU time (user + system) per message, in µs")
    print(
        f"{'sender':<28}{'msg/s':>9}{'sustained':>11}{'seconds':>9}"
        f"{'vs smtp-source':>16}{'peak RSS':>10}{'CPU/msg':>9}"
    )
    print(
        f"{'smtp-source -d -s 8, med. 3':<28}{anchor.rate:>9,.0f}{'':>11}{anchor.seconds:>9.1f}"
        f"{1:>16.2f}{'-':>10}{'-':>9}"
    )
    for run in runs:
        label = f"newsletter x{run.workers} (c={args.concurrency})"
        if run.dkim:
            label = f"{label[:-1]}, DKIM)"
        print(
            f"{label:<28}{run.rate:>9,.0f}{run.sustained:>11,.0f}{run.seconds:>9.1f}"
            f"{run.rate / anchor.rate:>16.2f}{run.peak_rss_mb:>8.0f}MB"
            f"{run.cpu_per_message * 1e6:>9,.0f}"
        )
    off = [r for r in runs if not r.dkim]
    target = 0.35 * anchor.rate
    verdict = "meets" if off[-1].rate >= target else "misses"
    print(f"target: 2 workers >= 0.35 x smtp-source = {target:,.0f} msg/s -> {verdict}")
    on = [r for r in runs if r.dkim]
    if on:
        ratio = on[-1].rate / off[-1].rate
        print(
            f"DKIM ({DKIM_LABELS[args.dkim]}): 2 workers at {on[-1].rate:,.0f} msg/s, "
            f"{ratio:.2f} of the {off[-1].rate:,.0f} with DKIM off "
            f"(target >= 0.80 -> {'meets' if ratio >= 0.8 else 'misses'})"
        )
        print(
            f"DKIM: one worker signs and sends {on[0].rate:,.0f} msg/s "
            f"(target >= 1,500 -> {'meets' if on[0].rate >= 1500 else 'misses'})"
        )


def topic_comparison(
    args: argparse.Namespace, sink: Sink, database_url: str, digest_id: int
) -> None:
    """The same send with every reader on the whole digest, then with the readers over
    --topic-sets sets, alternately for --rounds rounds; medians and their ratio."""
    rates: dict[tuple[int, int], list[float]] = {}
    cpu: dict[tuple[int, int], list[float]] = {}
    for round_ in range(args.rounds):
        for sets in (0, args.topic_sets):
            asyncio.run(spread_topics(database_url, sets))
            for workers in (1, 2):
                run = run_workers(
                    database_url, digest_id, args.subscribers, sink, workers, args.concurrency
                )
                rates.setdefault((sets, workers), []).append(run.sustained)
                cpu.setdefault((sets, workers), []).append(run.cpu_per_message)
                log(
                    f"round {round_ + 1}, {workers} worker(s), {sets or 'no'} topic sets: "
                    f"{run.sustained:,.0f} msg/s sustained"
                )
    print()
    print(
        f"topics: {args.subscribers:,} readers, whole digest vs over {args.topic_sets} topic "
        f"sets; medians of {args.rounds} alternating rounds (sustained msg/s, CPU µs/msg)"
    )
    for workers in (1, 2):
        single = statistics.median(rates[(0, workers)])
        spread = statistics.median(rates[(args.topic_sets, workers)])
        print(
            f"x{workers}: one set {single:,.0f} msg/s "
            f"({statistics.median(cpu[(0, workers)]) * 1e6:,.0f} µs), "
            f"{args.topic_sets} sets {spread:,.0f} msg/s "
            f"({statistics.median(cpu[(args.topic_sets, workers)]) * 1e6:,.0f} µs): "
            f"{spread / single:.2f} (target >= 0.80 -> {'meets' if spread >= 0.8 * single else 'misses'})"
        )


DKIM_LABELS = {"rsa": "RSA-2048", "both": "RSA-2048 + Ed25519"}


# --- Scale: 100,000 and 1,000,000 readers in one run (issue 11) ------------------------------


def worker_env(database_url: str) -> dict[str, str]:
    keep = {k: v for k, v in os.environ.items() if not k.startswith(("SMTP_", "SEND_", "DKIM_"))}
    return {
        **keep,
        "DATABASE_URL": database_url,
        "SECRET_KEY": SECRET,
        "MAIL_FROM": MAIL_FROM,
        "PUBLIC_URL": "https://www.dzaleu.com/newsletter",
        "LOG_LEVEL": "WARNING",
        "APP_ENV": "development",
    }


@dataclass
class ApiPoller:
    """`newsletter serve --no-worker` on a free port, and GET /api/v1/digests/{id} timed every
    POLL_EVERY seconds while the workers send: what an editor's screen or `digests status
    --follow` costs, measured from outside."""

    process: subprocess.Popen[bytes]
    url: str
    headers: dict[str, str]
    client: Any = None  # one httpx.Client: a new one per request builds an SSL context
    timings: list[float] = field(default_factory=list)
    last: float = 0.0

    POLL_EVERY = 2.0

    @classmethod
    def start(cls, database_url: str, digest_id: int) -> ApiPoller:
        import httpx

        env = worker_env(database_url)
        newsletter = str(Path(sys.executable).parent / "newsletter")
        made = subprocess.run(
            [newsletter, "create-api-key", f"bench-{uuid.uuid4().hex[:6]}"],
            env=env,
            capture_output=True,
            text=True,
            check=True,
        )
        key = made.stdout.strip().splitlines()[-1].strip()
        port = free_port()
        process = subprocess.Popen(
            [newsletter, "serve", "--no-worker", "--port", str(port)],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        poller = cls(
            process,
            f"http://127.0.0.1:{port}/api/v1/digests/{digest_id}",
            {"Authorization": f"Bearer {key}"},
            httpx.Client(timeout=10),
        )
        for _ in range(200):
            try:
                if poller.client.get(poller.url, headers=poller.headers).status_code == 200:
                    return poller
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        poller.stop()
        raise RuntimeError("newsletter serve did not answer")

    def poll(self) -> None:
        if time.monotonic() - self.last < self.POLL_EVERY:
            return
        self.last = time.monotonic()
        started = time.perf_counter()
        response = self.client.get(self.url, headers=self.headers)
        self.timings.append(time.perf_counter() - started)
        response.raise_for_status()

    def idle(self, times: int = 10) -> list[float]:
        """The same GET with the workers stopped: the read's own cost, not the CPU's queue."""
        self.last = 0.0
        before = len(self.timings)
        for _ in range(times):
            self.last = 0.0
            self.poll()
        idle, self.timings = self.timings[before:], self.timings[:before]
        return idle

    def stop(self) -> None:
        self.client.close()
        self.process.terminate()
        self.process.wait(timeout=10)


LOOKUPS = {
    # The subscriber look-ups of the API and the desk, as the indexes of 0004_scale serve them.
    "by address": "SELECT * FROM subscriber WHERE email_hash = %s",
    "name prefix": "SELECT * FROM subscriber WHERE lower(name) LIKE %s"
    " ORDER BY lower(name) LIMIT 50",
    "status, newest first": "SELECT * FROM subscriber WHERE status = %s AND erased_at IS NULL"
    " ORDER BY created_at DESC, id DESC LIMIT 50",
}


def lookup_ms(database_url: str, readers: int) -> dict[str, float]:
    """Median of five runs of each look-up, in ms (server execution time, EXPLAIN ANALYZE)."""
    with psycopg.connect(admin_url(database_url), autocommit=True) as conn:
        conn.execute("ANALYZE subscriber")
        row = conn.execute(
            "SELECT email_hash FROM subscriber ORDER BY id OFFSET %s LIMIT 1", (readers // 2,)
        ).fetchone()
        assert row is not None
        params = {
            "by address": (row[0],),
            "name prefix": (f"lecteur {readers // 3}%",),
            "status, newest first": ("confirmed",),
        }
        timings = {}
        for name, sql in LOOKUPS.items():
            runs = []
            for _ in range(5):
                plan = conn.execute(
                    f"EXPLAIN (ANALYZE, FORMAT JSON) {sql}",  # type: ignore[arg-type]
                    params[name],
                ).fetchone()
                assert plan is not None
                runs.append(float(plan[0][0]["Execution Time"]))
            timings[name] = statistics.median(runs)
    return timings


@dataclass
class ScaleRun:
    readers: int
    size: int
    queue_seconds: float
    run: Run
    first_rate: float
    last_rate: float
    get_ms: list[float]
    idle_get_ms: list[float]
    lookups: dict[str, float]

    @property
    def total_seconds(self) -> float:
        return self.queue_seconds + self.run.seconds


def tenth_rates(database_url: str, digest_id: int, readers: int) -> tuple[float, float]:
    """Messages/s over the first and over the last 10% of the send, from the recorded times."""
    with psycopg.connect(admin_url(database_url), autocommit=True) as conn:
        row = conn.execute(
            "SELECT extract(epoch FROM (percentile_disc(ARRAY[0, 0.1, 0.9, 1])"
            " WITHIN GROUP (ORDER BY sent_at))[2] - (percentile_disc(ARRAY[0, 0.1, 0.9, 1])"
            " WITHIN GROUP (ORDER BY sent_at))[1]),"
            " extract(epoch FROM (percentile_disc(ARRAY[0, 0.1, 0.9, 1])"
            " WITHIN GROUP (ORDER BY sent_at))[4] - (percentile_disc(ARRAY[0, 0.1, 0.9, 1])"
            " WITHIN GROUP (ORDER BY sent_at))[3])"
            " FROM delivery WHERE digest_id = %s AND status = 'sent'",
            (digest_id,),
        ).fetchone()
    assert row is not None
    tenth = readers / 10
    return tenth / max(float(row[0]), 1e-3), tenth / max(float(row[1]), 1e-3)


def scale_run(args: argparse.Namespace, sink: Sink, readers: int) -> ScaleRun:
    with scratch_database(args.database_url) as database_url:
        log(f"scale: loading {readers:,} subscribers, then queueing a digest to all")
        digest_id, queued_in = asyncio.run(load_and_queue(database_url, readers, args.articles))
        log(f"scale: queued {readers:,} copies in {queued_in:.1f} s")
        size = message_size(database_url, digest_id)
        poller = ApiPoller.start(database_url, digest_id)
        try:
            run = run_workers(
                database_url,
                digest_id,
                readers,
                sink,
                2,
                args.concurrency,
                reset=False,
                on_poll=poller.poll,
            )
            idle = poller.idle()
        finally:
            poller.stop()
        first, last = tenth_rates(database_url, digest_id, readers)
        lookups = lookup_ms(database_url, readers)
        log(
            f"scale: {readers:,} sent in {run.seconds:.1f} s ({run.rate:,.0f} msg/s; first 10% "
            f"{first:,.0f}, last 10% {last:,.0f}), peak RSS {run.peak_rss_mb:.0f} MB"
        )
        return ScaleRun(readers, size, queued_in, run, first, last, poller.timings, idle, lookups)


def scale(args: argparse.Namespace, sink: Sink) -> None:
    sizes = sorted({min(100_000, args.subscribers), args.subscribers})
    runs = [scale_run(args, sink, readers) for readers in sizes]
    size = runs[-1].size
    anchors = []
    for _ in range(3):  # it swings 2-3x from run to run here: the median of three
        anchors.append(run_smtp_source(sink, min(args.subscribers, 100_000), size, runs=1).rate)
        log(f"smtp-source: {anchors[-1]:,.0f} msg/s")
    anchor = statistics.median(anchors)
    print()
    print(
        f"scale: one digest queued and sent by 2 workers (c={args.concurrency}) to smtp-sink, "
        f"copies of {size / 1024:.1f} KiB"
    )
    print("queue: create + send (INSERT ... SELECT, ANALYZE); send: worker start to last copy;")
    print("first/last 10%: msg/s between recorded sends; GET: /api/v1/digests/{id} over HTTP,")
    print("p50 and max while sending (the CPUs saturated), median after (idle)")
    print(
        f"{'readers':>10}{'queue s':>9}{'send s':>8}{'total s':>9}{'msg/s':>8}"
        f"{'first10%':>10}{'last10%':>9}{'last/first':>11}{'peak RSS':>10}"
        f"{'GET p50':>9}{'GET max':>9}{'GET idle':>10}"
    )
    for r in runs:
        get_ms = sorted(t * 1000 for t in r.get_ms) or [0.0]
        idle_ms = statistics.median([t * 1000 for t in r.idle_get_ms] or [0.0])
        print(
            f"{r.readers:>10,}{r.queue_seconds:>9.1f}{r.run.seconds:>8.1f}"
            f"{r.total_seconds:>9.1f}{r.run.rate:>8,.0f}{r.first_rate:>10,.0f}"
            f"{r.last_rate:>9,.0f}{r.last_rate / r.first_rate:>11.2f}"
            f"{r.run.peak_rss_mb:>8.0f}MB{statistics.median(get_ms):>7.1f}ms"
            f"{get_ms[-1]:>7.1f}ms{idle_ms:>8.1f}ms"
        )
    print("subscriber look-ups (PostgreSQL execution time, median of 5):")
    for r in runs:
        print(
            f"{r.readers:>10,}: "
            + ", ".join(f"{name} {ms:.2f} ms" for name, ms in r.lookups.items())
        )
    big = runs[-1]
    print(
        f"smtp-source -d -s 8 (median of {', '.join(f'{a:,.0f}' for a in anchors)}): "
        f"{anchor:,.0f} msg/s; 2 workers at {big.readers:,}: {big.run.rate / anchor:.2f} of it"
    )
    checks = [
        (f"queue + send under 600 s at {big.readers:,}", big.total_seconds < 600),
        ("last 10% within 20% of the first 10%", big.last_rate >= 0.8 * big.first_rate),
        ("GET progress under 50 ms (idle median)", statistics.median(big.idle_get_ms) < 0.050),
        ("GET progress under 50 ms (p50 while sending)", statistics.median(big.get_ms) < 0.050),
        ("subscriber look-ups under 50 ms", max(big.lookups.values()) < 50),
        ("worker peak RSS under 150 MB", big.run.peak_rss_mb < 150),
        ("2 workers >= 0.35 x smtp-source", big.run.rate >= 0.35 * anchor),
    ]
    for label, ok in checks:
        print(f"target: {label} -> {'meets' if ok else 'misses'}")


def dkim_keys(directory: Path, kind: str) -> dict[str, str]:
    """Fresh keys, and the worker settings that sign every copy with them."""
    from app.mail.dkim import KeyAlgorithm, generate_key

    rsa = generate_key(domain="dzaleu.test", selector="bench", out_dir=directory)
    env = {
        "DKIM_DOMAIN": "dzaleu.test",
        "DKIM_SELECTOR": "bench",
        "DKIM_PRIVATE_KEY_PATH": str(rsa.private_key_path),
    }
    if kind == "both":
        ed = generate_key(
            domain="dzaleu.test",
            selector="bench-ed25519",
            out_dir=directory,
            algorithm=KeyAlgorithm.ed25519,
        )
        env["DKIM_ED25519_PRIVATE_KEY_PATH"] = str(ed.private_key_path)
    return env


def memory(args: argparse.Namespace, sink: Sink) -> None:
    peaks = {}
    for subscribers in (10_000, 100_000):
        with scratch_database(args.database_url) as database_url:
            log(f"memory run: {subscribers:,} subscribers")
            digest_id = asyncio.run(load_workload(database_url, subscribers))
            run = run_workers(database_url, digest_id, subscribers, sink, 1, args.concurrency)
            peaks[subscribers] = run
            log(f"{subscribers:,}: peak RSS {run.peak_rss_mb:.1f} MB, {run.rate:,.0f} msg/s")
    small, large = peaks[10_000].peak_rss_mb, peaks[100_000].peak_rss_mb
    growth = (large - small) / small if small else 0.0
    print()
    print("worker peak RSS (VmHWM), one worker")
    for subscribers, run in peaks.items():
        print(
            f"  {subscribers:>7,} subscribers: {run.peak_rss_mb:6.1f} MB  ({run.rate:,.0f} msg/s)"
        )
    print(f"  growth 10k -> 100k: {growth:+.1%}")
    ok = large < 150 and abs(growth) <= 0.20
    print(f"target: under 150 MB and within 20% -> {'meets' if ok else 'misses'}")


if __name__ == "__main__":
    main()
