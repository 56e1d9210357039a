"""Each desk page's server time with a big list, on PostgreSQL.

A scratch database (created, migrated, dropped) gets 1,000,000 subscribers (80% confirmed,
the rest pending, unsubscribed, bounced, complained; signups spread over a year), 2,000
articles, 200 digests (the newest ones with one delivery row per confirmed reader), 20,000
bounces. Then the app answers each desk page in-process (httpx over ASGI: no network, no
browser) for a signed-in editor; the figure is the median of the runs, in milliseconds.

    python bench/desk.py                                   # TEST_DATABASE_URL's server
    python bench/desk.py --subscribers 200000 --runs 5
    python bench/desk.py --database postgresql://postgres@127.0.0.1:5432/postgres

Not a test: it prints figures (target: every page under 200 ms).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import time
from pathlib import Path

import httpx
import psycopg

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from app.config import Settings  # noqa: E402
from app.db import make_engine, make_sessionmaker  # noqa: E402
from app.desk import accounts  # noqa: E402
from app.desk.routes import SESSION_COOKIE  # noqa: E402
from app.main import create_app  # noqa: E402
from bench.scratch_db import scratch_database  # noqa: E402
from bench.send_throughput import admin_url  # noqa: E402

SECRET = "bench-secret-key-0123456789abcdef"


def seed(url: str, *, subscribers: int, digests: int, delivered_digests: int) -> None:
    """Rows made by the database itself (generate_series): a million in seconds."""
    with psycopg.connect(admin_url(url), autocommit=True) as conn:
        t0 = time.perf_counter()
        conn.execute(
            """
            INSERT INTO subscriber (email, email_hash, name, language, status, created_at,
                                    updated_at, confirmed_at, unsubscribed_at, bounced_at,
                                    consent_at, consent_source)
            SELECT 'reader' || i || '@bench.example.org',
                   md5(i::text) || md5('x' || i::text),
                   CASE WHEN i %% 3 = 0 THEN NULL ELSE 'Lecteur ' || i END,
                   CASE WHEN i %% 5 = 0 THEN 'en' ELSE 'fr' END,
                   s.status,
                   now() - (i %% 365) * interval '1 day' - (i %% 86400) * interval '1 second',
                   now(),
                   now() - (i %% 365) * interval '1 day',
                   CASE WHEN s.status = 'unsubscribed' THEN now() - (i %% 60) * interval '1 day' END,
                   CASE WHEN s.status = 'bounced' THEN now() - (i %% 60) * interval '1 day' END,
                   now() - (i %% 365) * interval '1 day',
                   'form'
            FROM generate_series(1, %(n)s) AS i,
                 LATERAL (SELECT CASE
                     WHEN i %% 100 < 80 THEN 'confirmed'
                     WHEN i %% 100 < 87 THEN 'unsubscribed'
                     WHEN i %% 100 < 93 THEN 'pending'
                     WHEN i %% 100 < 98 THEN 'bounced'
                     ELSE 'complained' END AS status) AS s
            """,
            {"n": subscribers},
        )
        conn.execute(
            """
            INSERT INTO article (url, guid, title, summary, categories, published_at,
                                 created_at, updated_at)
            SELECT 'https://news.example.org/a/' || i, 'guid-' || i,
                   'Article numéro ' || i || ' : la rédaction enquête',
                   'Résumé de l''article ' || i, '["Économie", "International"]',
                   now() - i * interval '1 hour', now(), now()
            FROM generate_series(1, 2000) AS i
            """
        )
        conn.execute(
            """
            INSERT INTO digest (subject, status, created_at, send_started_at, sent_at, recipients)
            SELECT 'Lettre ' || i, 'sent', now() - (%(d)s - i) * interval '1 day',
                   now() - (%(d)s - i) * interval '1 day',
                   now() - (%(d)s - i) * interval '1 day' + interval '1 hour',
                   (SELECT count(*) FROM subscriber WHERE status = 'confirmed')
            FROM generate_series(1, %(d)s) AS i
            """,
            {"d": digests},
        )
        conn.execute(
            """
            INSERT INTO digest_article (digest_id, article_id, position, title, url, categories)
            SELECT d.id, a.id, a.id - 1, a.title, a.url, a.categories
            FROM digest d CROSS JOIN (SELECT * FROM article ORDER BY id LIMIT 8) a
            """
        )
        # The newest digests went to everyone: one delivery row per confirmed reader.
        conn.execute(
            """
            INSERT INTO delivery (kind, subscriber_id, digest_id, language, status, attempts,
                                  next_attempt_at, created_at, sent_at)
            SELECT 'digest', s.id, d.id, s.language,
                   CASE WHEN s.id %% 200 = 0 THEN 'failed' ELSE 'sent' END, 1,
                   d.send_started_at, d.send_started_at, d.sent_at
            FROM (SELECT * FROM digest ORDER BY id DESC LIMIT %(k)s) d
            CROSS JOIN subscriber s WHERE s.status = 'confirmed'
            """,
            {"k": delivered_digests},
        )
        conn.execute(
            """
            INSERT INTO bounce_event (subscriber_id, type, reason, source, created_at)
            SELECT id, CASE WHEN id %% 10 = 0 THEN 'complaint' ELSE 'hard' END,
                   '550 5.1.1 user unknown', 'smtp', now() - (id %% 60) * interval '1 day'
            FROM subscriber WHERE status IN ('bounced', 'complained') LIMIT 20000
            """,
            {},
        )
        conn.execute("VACUUM ANALYZE")  # as autovacuum leaves a settled database
        print(f"seeded in {time.perf_counter() - t0:.0f} s", file=sys.stderr)


async def measure(url: str, *, runs: int, subscribers: int) -> list[tuple[str, float]]:
    settings = Settings(
        _env_file=None,  # type: ignore[call-arg]
        app_env="test",
        database_url=url,
        secret_key=SECRET,
        public_url="http://desk.bench",
        site_name="Dzaleu",
    )
    engine = make_engine(url)
    async with make_sessionmaker(engine)() as session:
        editor = await accounts.add_editor(
            session, email="bench@example.org", password="bench password 123", is_admin=True
        )
        token = await accounts.start_session(session, editor=editor)
        await session.commit()
    await engine.dispose()
    with psycopg.connect(admin_url(url)) as conn:
        digest_id = conn.execute("SELECT max(id) FROM digest").fetchone()[0]  # type: ignore[index]
        reader = f"reader{subscribers // 200 * 100 + 7}"  # a confirmed one, mid-list
        reader_id = conn.execute(
            "SELECT id FROM subscriber WHERE email = %s", (f"{reader}@bench.example.org",)
        ).fetchone()[0]  # type: ignore[index]
    pages = [
        "/desk",
        "/desk/articles",
        "/desk/articles?q=enquête",
        "/desk/compose",
        "/desk/digests",
        f"/desk/digests/{digest_id}",
        f"/desk/digests/{digest_id}/progress",
        f"/desk/digests/{digest_id}/preview?lang=fr",
        "/desk/subscribers",
        f"/desk/subscribers?q={reader}",
        "/desk/subscribers?status=bounced",
        f"/desk/subscribers/{reader_id}",
        "/desk/schedules",
        "/desk/bounces",
        "/desk/settings",
        "/desk/keys",
    ]
    app = create_app(settings)
    figures = []
    async with app.router.lifespan_context(app):
        # Seeded hashes are not the app's keyed ones: the reader whose page is read gets theirs.
        with psycopg.connect(admin_url(url), autocommit=True) as conn:
            conn.execute(
                "UPDATE subscriber SET email_hash = %s WHERE id = %s",
                (app.state.tokens.email_hash(f"{reader}@bench.example.org"), reader_id),
            )
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(
            transport=transport, base_url="http://desk.bench", cookies={SESSION_COOKIE: token}
        ) as client:
            for path in pages:
                times = []
                for _ in range(runs + 1):  # the first run warms caches up and is not counted
                    started = time.perf_counter()
                    answer = await client.get(path)
                    times.append((time.perf_counter() - started) * 1000)
                    assert answer.status_code == 200, (path, answer.status_code)
                figures.append((path, statistics.median(times[1:])))
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--database", default=os.environ.get("TEST_DATABASE_URL"))
    parser.add_argument("--subscribers", type=int, default=1_000_000)
    parser.add_argument("--digests", type=int, default=200)
    parser.add_argument("--delivered-digests", type=int, default=3)
    parser.add_argument("--runs", type=int, default=7)
    args = parser.parse_args()
    if not args.database:
        parser.error("give --database postgresql://... (or set TEST_DATABASE_URL)")
    with scratch_database(args.database, prefix="nl_bench_desk") as url:
        seed(
            url,
            subscribers=args.subscribers,
            digests=args.digests,
            delivered_digests=args.delivered_digests,
        )
        figures = asyncio.run(measure(url, runs=args.runs, subscribers=args.subscribers))
    print(
        f"desk pages, server time (median of {args.runs}, in-process), {args.subscribers:,} "
        f"subscribers, {args.digests} digests ({args.delivered_digests} with a delivery row per "
        "confirmed reader), PostgreSQL"
    )
    for path, ms in figures:
        flag = "" if ms < 200 else "   over 200 ms"
        print(f"  {path:<45} {ms:8.1f} ms{flag}")


if __name__ == "__main__":
    main()
