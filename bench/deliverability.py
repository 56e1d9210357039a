"""What reading a digest's deliverability figures costs at 100,000 readers (PostgreSQL).

A scratch database gets a digest with one delivery per reader and the per-domain counters the
workers keep (readers spread over DOMAINS recipient domains, a few large ones as in real lists);
then the reads are timed, medians printed:

    python bench/deliverability.py [--readers 100000] [--domains 2000]

- `GET /api/v1/digests/{id}/deliverability` (service.deliverability): totals + the 50 largest
  domains, from the counters only (one row per domain): its cost follows the number of domains,
  not of readers;
- what the progress of `GET /api/v1/digests/{id}` adds for the pace and the rates (two reads of
  the counters), next to the whole progress read (whose GROUP BY over the deliveries was there
  before).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import sqlalchemy as sa

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from app.db import make_engine, make_sessionmaker  # noqa: E402
from app.digests import service  # noqa: E402
from app.models import DeliveryKind, Digest, DigestStatus  # noqa: E402
from app.outbox import tally  # noqa: E402
from bench.scratch_db import scratch_database  # noqa: E402

ROUNDS = 30


async def _median_ms(call: Callable[[], Awaitable[object]]) -> float:
    await call()  # warm: plans cached, pages in memory
    times = []
    for _ in range(ROUNDS):
        started = time.perf_counter()
        await call()
        times.append((time.perf_counter() - started) * 1000)
    return statistics.median(times)


async def run(database_url: str, readers: int, domains: int) -> None:
    engine = make_engine(database_url)
    sessionmaker = make_sessionmaker(engine)
    async with sessionmaker() as session:
        digest = Digest(subject="Bench", status=DigestStatus.sending, recipients=readers)
        session.add(digest)
        await session.flush()
        digest_id = digest.id
        assert digest_id is not None
        await session.execute(
            sa.text(
                "INSERT INTO delivery (kind, digest_id, status, attempts, next_attempt_at,"
                " created_at, sent_at) SELECT 'digest', :d, CASE WHEN g % 3 = 0 THEN 'queued'"
                " ELSE 'sent' END, 1, now(), now(), now() FROM generate_series(1, :n) g"
            ),
            {"d": digest_id, "n": readers},
        )
        # Zipf-like: domain k gets about 1/k of the mail (gmail.com first).
        weights = [1 / (k + 1) for k in range(domains)]
        scale = readers / sum(weights)
        counts = {
            (DeliveryKind.digest.value, digest_id, f"domain{k}.example"): {
                "delivered": max(1, int(w * scale * 0.97)),
                "deferred": int(w * scale * 0.02),
                "bounced": int(w * scale * 0.01),
            }
            for k, w in enumerate(weights)
        }
        await tally.add(session, counts)
        await session.commit()
        await session.execute(sa.text("ANALYZE"))

    async def figures() -> object:
        async with sessionmaker() as s:
            return await service.deliverability(s, digest_id=digest_id, domains=50)

    async def added_to_progress() -> object:
        async with sessionmaker() as s:
            await tally.pace_of(s, kind=DeliveryKind.digest, send_ids=[digest_id])
            return await tally.totals_of(s, kind=DeliveryKind.digest, send_ids=[digest_id])

    async def progress() -> object:
        async with sessionmaker() as s:
            return await service.digest_with_progress(s, digest_id=digest_id)

    print(f"{readers:,} readers over {domains:,} recipient domains, median of {ROUNDS}:")
    print(f"  deliverability (totals + 50 largest domains): {await _median_ms(figures):.2f} ms")
    print(
        f"  pace and rates added to the progress:         {await _median_ms(added_to_progress):.2f} ms"
    )
    print(f"  whole progress of GET /digests/{{id}}:          {await _median_ms(progress):.2f} ms")
    await engine.dispose()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--readers", type=int, default=100_000)
    parser.add_argument("--domains", type=int, default=2_000)
    parser.add_argument(
        "--database-url",
        default=os.environ.get(
            "TEST_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/postgres"
        ),
    )
    args = parser.parse_args()
    with scratch_database(args.database_url, prefix="nl_bench_deliv") as url:
        asyncio.run(run(url, args.readers, args.domains))


if __name__ == "__main__":
    main()
