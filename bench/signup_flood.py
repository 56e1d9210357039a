"""Signup flood on loopback: does the service hold, and what does it cost next to a bare endpoint?

Starts the real service (`newsletter serve`, worker inside, mail to a Maildir) on a free port
with TRUST_FORWARDED_FOR=true, and a bare FastAPI endpoint on another port, then drives load with
httpx.AsyncClient. Every phase is bounded in requests and seconds, and the run stops by itself.

  A. flood: many requests a second from ONE client address (distinct mailboxes): the per-IP
     rate limit must hold (count the 429s).
  B. one mailbox, many addresses: each request from its own X-Forwarded-For, all for the same
     mailbox: no inbox may get more than the configured confirmation emails (counted in the
     database's outbox).
  C. legitimate readers during a flood: distinct addresses and mailboxes, while A runs again:
     they must all be accepted.
  Everywhere: no 5xx.

    python bench/signup_flood.py                      # SQLite in a temporary directory
    python bench/signup_flood.py --database-url postgresql://postgres@127.0.0.1:5432/bench

Exit status 1 if a check fails.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import httpx
import sqlalchemy as sa
from fastapi import FastAPI
from pydantic import BaseModel, ConfigDict, Field

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from app import migrations  # noqa: E402
from app.config import Settings  # noqa: E402
from app.db import sync_url  # noqa: E402
from bench.scratch_db import scratch_database  # noqa: E402

Request = tuple[dict[str, str], dict[str, str]]  # (headers, json body)


@dataclass
class PhaseResult:
    name: str
    target: str
    requests: int = 0
    seconds: float = 0.0
    statuses: Counter[int] = field(default_factory=Counter)
    latencies_ms: list[float] = field(default_factory=list)
    errors: Counter[str] = field(default_factory=Counter)

    @property
    def rps(self) -> float:
        return self.requests / self.seconds if self.seconds else 0.0

    def percentile(self, p: float) -> float:
        if not self.latencies_ms:
            return 0.0
        ordered = sorted(self.latencies_ms)
        return ordered[min(len(ordered) - 1, int(round(p / 100 * (len(ordered) - 1))))]

    @property
    def server_errors(self) -> int:
        return sum(n for status, n in self.statuses.items() if status >= 500)

    def row(self) -> str:
        statuses = " ".join(f"{s}:{n}" for s, n in sorted(self.statuses.items()))
        errors = f"  transport errors: {dict(self.errors)}" if self.errors else ""
        return (
            f"{self.name:<34} {self.target:<8} {self.requests:>6} {self.rps:>8.0f} "
            f"{self.percentile(50):>8.1f} {self.percentile(99):>8.1f}  {statuses}{errors}"
        )

    def as_dict(self) -> dict[str, object]:
        return {
            "name": self.name,
            "target": self.target,
            "requests": self.requests,
            "seconds": round(self.seconds, 3),
            "requests_per_second": round(self.rps, 1),
            "p50_ms": round(self.percentile(50), 2),
            "p99_ms": round(self.percentile(99), 2),
            "statuses": dict(self.statuses),
            "transport_errors": dict(self.errors),
        }


async def drive(
    name: str,
    target: str,
    base_url: str,
    requests: Iterator[Request],
    *,
    count: int,
    concurrency: int,
    max_seconds: float,
) -> PhaseResult:
    """Send up to `count` requests with `concurrency` in flight, stopping at `max_seconds`."""
    result = PhaseResult(name, target)
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    started = time.perf_counter()
    deadline = started + max_seconds
    issued = itertools.count()
    async with httpx.AsyncClient(base_url=base_url, limits=limits, timeout=30) as client:

        async def worker() -> None:
            while next(issued) < count and time.perf_counter() < deadline:
                headers, body = next(requests)
                sent = time.perf_counter()
                try:
                    response = await client.post(
                        "/api/v1/subscriptions", json=body, headers=headers
                    )
                except httpx.HTTPError as exc:
                    result.errors[type(exc).__name__] += 1
                    continue
                result.latencies_ms.append((time.perf_counter() - sent) * 1000)
                result.statuses[response.status_code] += 1

        await asyncio.gather(*(worker() for _ in range(concurrency)))
    result.seconds = time.perf_counter() - started
    result.requests = sum(result.statuses.values()) + sum(result.errors.values())
    return result


def from_one_address(run: str) -> Iterator[Request]:
    for i in itertools.count():
        yield {"x-forwarded-for": "198.51.100.7"}, {"email": f"flood-{run}-{i}@example.org"}


def one_mailbox_from_many_addresses(mailbox: str) -> Iterator[Request]:
    for i in itertools.count():
        ip = f"10.{(i >> 16) & 255}.{(i >> 8) & 255}.{i & 255}"
        yield {"x-forwarded-for": ip}, {"email": mailbox, "name": "Victim"}


def legitimate_readers(run: str) -> Iterator[Request]:
    for i in itertools.count():
        ip = f"172.16.{(i >> 8) & 255}.{i & 255}"
        yield {"x-forwarded-for": ip}, {"email": f"reader-{run}-{i}@example.org", "language": "en"}


# --- Servers -----------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class BareBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    email: str = Field(max_length=320)
    name: str | None = Field(default=None, max_length=200)
    language: Literal["fr", "en"] = "fr"


def bare_app() -> FastAPI:
    """The floor: FastAPI parsing the same body and answering 202, with no database at all."""
    app = FastAPI()

    @app.post("/api/v1/subscriptions", status_code=202)
    async def subscribe(body: BareBody) -> dict[str, str]:
        return {"status": "pending"}

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    return app


def serve_bare(port: int) -> None:
    import uvicorn

    uvicorn.run(bare_app(), host="127.0.0.1", port=port, log_level="warning")


def start(command: list[str], env: dict[str, str], url: str) -> subprocess.Popen[bytes]:
    process = subprocess.Popen(command, env=env, cwd=ROOT)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"error: {command[0]} exited with {process.returncode} at startup")
        try:
            if httpx.get(f"{url}/healthz", timeout=1).status_code == 200:
                return process
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    process.kill()
    raise SystemExit(f"error: {url} did not answer /healthz within 30 s")


def stop(process: subprocess.Popen[bytes]) -> None:
    process.terminate()
    try:
        process.wait(timeout=15)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


# --- The run -----------------------------------------------------------------------------------


def confirmation_counts(database_url: str, run: str) -> dict[str, int]:
    engine = sa.create_engine(sync_url(database_url))
    try:
        with engine.connect() as conn:
            rows = conn.execute(
                sa.text(
                    "SELECT s.email, count(d.id) FROM delivery d "
                    "JOIN subscriber s ON s.id = d.subscriber_id "
                    "WHERE d.kind = 'confirmation' AND s.email LIKE :run "
                    "GROUP BY s.email"
                ),
                {"run": f"%{run}%"},
            ).all()
    finally:
        engine.dispose()
    return {str(email): int(n) for email, n in rows}


async def run_phases(
    app_url: str, bare_url: str, run: str, args: argparse.Namespace
) -> list[PhaseResult]:
    n, c, t = args.requests, args.concurrency, args.max_seconds
    results: list[PhaseResult] = []
    for url, target in ((bare_url, "bare"), (app_url, "service")):
        results.append(
            await drive(
                "A. flood from one address",
                target,
                url,
                from_one_address(run + target),
                count=n,
                concurrency=c,
                max_seconds=t,
            )
        )
    results.append(
        await drive(
            "B. one mailbox, many addresses",
            "service",
            app_url,
            one_mailbox_from_many_addresses(f"victim-{run}@example.org"),
            count=n,
            concurrency=c,
            max_seconds=t,
        )
    )
    flood, legit = await asyncio.gather(
        drive(
            "C. flood (again, from one address)",
            "service",
            app_url,
            from_one_address(run + "again"),
            count=n,
            concurrency=c,
            max_seconds=t,
        ),
        drive(
            "C. legitimate readers meanwhile",
            "service",
            app_url,
            legitimate_readers(run),
            count=args.legitimate,
            concurrency=max(1, c // 5),
            max_seconds=t,
        ),
    )
    results += [flood, legit]
    return results


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument(
        "--database-url",
        help="a PostgreSQL server to create (and drop) a scratch database on; "
        "default: a SQLite file in a temporary directory",
    )
    parser.add_argument("--requests", type=int, default=3000, help="per phase (default 3000)")
    parser.add_argument("--legitimate", type=int, default=300, help="readers in phase C")
    parser.add_argument("--concurrency", type=int, default=20)
    parser.add_argument("--max-seconds", type=float, default=30.0, help="per phase")
    parser.add_argument("--json", type=Path, help="also write the figures to this file")
    parser.add_argument("--serve-bare", type=int, metavar="PORT", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve_bare:
        serve_bare(args.serve_bare)
        return 0

    run = uuid.uuid4().hex[:8]
    with contextlib.ExitStack() as stack:
        tmp = stack.enter_context(tempfile.TemporaryDirectory(prefix="signup-flood-"))
        if args.database_url:  # a scratch database on that server, dropped afterwards
            database_url = stack.enter_context(scratch_database(args.database_url))
        else:
            database_url = f"sqlite:///{tmp}/bench.db"
            migrations.upgrade(database_url)
        app_port, bare_port = free_port(), free_port()
        app_url, bare_url = f"http://127.0.0.1:{app_port}", f"http://127.0.0.1:{bare_port}"
        env = {
            **os.environ,
            "APP_ENV": "production",
            "SECRET_KEY": "bench-" + uuid.uuid4().hex,
            "DATABASE_URL": database_url,
            "PUBLIC_URL": app_url,
            "TRUST_FORWARDED_FOR": "true",
            "MAILDIR_PATH": f"{tmp}/mail",
            "LOG_LEVEL": "WARNING",
        }
        env.pop("SMTP_HOST", None)
        # The limits the service runs with: the defaults, as nothing above overrides them.
        settings = Settings(_env_file=None, database_url=database_url)  # type: ignore[call-arg]
        newsletter = str(Path(sys.executable).parent / "newsletter")
        service = start(
            [newsletter, "serve", "--host", "127.0.0.1", "--port", str(app_port)], env, app_url
        )
        bare = start([sys.executable, __file__, "--serve-bare", str(bare_port)], env, bare_url)
        try:
            results = asyncio.run(run_phases(app_url, bare_url, run, args))
        finally:
            stop(service)
            stop(bare)
        counts = confirmation_counts(database_url, run)
        delivered = len(list(Path(tmp, "mail", "new").iterdir()))

    return report(results, counts, delivered, settings, run, args)


def report(
    results: list[PhaseResult],
    counts: dict[str, int],
    delivered: int,
    settings: Settings,
    run: str,
    args: argparse.Namespace,
) -> int:
    backend = "postgresql" if (args.database_url or "").startswith("postgres") else "sqlite"
    print(
        f"\nsignup flood on loopback: {backend}, {os.cpu_count()} CPUs, concurrency "
        f"{args.concurrency}, rate limit {settings.rate_limit_signup!r} per address, at most "
        f"{settings.confirmation_max_per_day} confirmations/day and 1 per "
        f"{settings.confirmation_min_interval_minutes} min per mailbox\n"
    )
    print(
        f"{'phase':<34} {'target':<8} {'reqs':>6} {'req/s':>8} {'p50 ms':>8} {'p99 ms':>8}  statuses"
    )
    for result in results:
        print(result.row())

    by_name = {(r.name, r.target): r for r in results}
    flood = by_name[("A. flood from one address", "service")]
    one_mailbox = by_name[("B. one mailbox, many addresses", "service")]
    legit = by_name[("C. legitimate readers meanwhile", "service")]
    victim = counts.get(f"victim-{run}@example.org", 0)
    per_mailbox_max = max(counts.values(), default=0)
    limit_per_minute = int(settings.rate_limit_signup.split("/")[0])
    checks: list[tuple[str, Callable[[], bool]]] = [
        ("no 5xx anywhere", lambda: all(r.server_errors == 0 for r in results)),
        ("no transport errors", lambda: all(not r.errors for r in results)),
        (
            f"one address: at most {limit_per_minute} accepted, the rest 429",
            lambda: (
                flood.statuses[202] <= limit_per_minute
                and flood.statuses[429] == flood.requests - flood.statuses[202]
            ),
        ),
        (
            f"one mailbox: at most {settings.confirmation_max_per_day} confirmation emails "
            f"(got {victim})",
            lambda: (
                1 <= victim <= settings.confirmation_max_per_day
                and one_mailbox.statuses[202] == one_mailbox.requests
            ),
        ),
        (
            f"no mailbox got more than one confirmation in the run (max {per_mailbox_max})",
            lambda: per_mailbox_max <= 1,
        ),
        (
            "legitimate readers all accepted during the flood",
            lambda: legit.statuses[202] == legit.requests > 0,
        ),
    ]
    print()
    failed = False
    for label, check in checks:
        ok = check()
        failed |= not ok
        print(f"  [{'ok' if ok else 'FAIL'}] {label}")
    print(
        f"\n  rejections (429) in the floods: {flood.statuses[429]} + "
        f"{by_name[('C. flood (again, from one address)', 'service')].statuses[429]}"
    )
    print(f"  confirmation emails queued for the flooded mailbox: {victim}")
    print(f"  confirmation emails the in-process worker wrote to the Maildir: {delivered}")

    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(
            json.dumps(
                {
                    "backend": backend,
                    "phases": [r.as_dict() for r in results],
                    "confirmations_for_flooded_mailbox": victim,
                    "max_confirmations_per_mailbox": per_mailbox_max,
                    "confirmations_delivered": delivered,
                    "checks": {label: check() for label, check in checks},
                },
                indent=2,
            )
        )
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
