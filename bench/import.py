"""CSV import time and peak memory at 100,000 and 1,000,000 rows (issue 11).

Each size: a fresh PostgreSQL database, a generated CSV (email,name,language; one row in 200
repeats an address from far earlier in the file, so the database finds it), imported by a real
`newsletter subscribers import` process (pending subscribers, one confirmation email queued
each, as by default). Prints wall time, rows/s and the process's peak RSS (ru_maxrss).

    python bench/import.py                      # 100,000 and 1,000,000
    python bench/import.py --rows 100000        # one size

Not a test: it prints figures.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.scratch_db import scratch_database  # noqa: E402

SECRET = "bench-secret-key-0123456789abcdef"
REPEAT_EVERY = 200


def write_csv(path: Path, rows: int) -> int:
    """The file; returns how many of its rows repeat an earlier address."""
    repeats = 0
    with path.open("w", encoding="utf-8") as out:
        out.write("email,name,language\n")
        for i in range(rows):
            if i % REPEAT_EVERY == REPEAT_EVERY - 1 and i > 20_000:
                n, repeats = i - 20_001, repeats + 1  # far enough to leave any window
            else:
                n = i
            language = "en" if n % 5 == 0 else "fr"
            out.write(f"lecteur.{n}@import.example.org,Lecteur Numéro {n},{language}\n")
    return repeats


def run_import(database_url: str, path: Path) -> tuple[float, float, str]:
    """Seconds, peak RSS in MB, and the command's summary line."""
    env = {
        **os.environ,
        "DATABASE_URL": database_url,
        "SECRET_KEY": SECRET,
        "MAIL_FROM": "Bench <bench@example.org>",
        "LOG_LEVEL": "WARNING",
        "APP_ENV": "development",
    }
    command = [str(Path(sys.executable).parent / "newsletter"), "subscribers", "import", str(path)]
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        started = time.monotonic()
        process = subprocess.Popen(command, env=env, stdout=out, stderr=err)
        _, status, usage = os.wait4(process.pid, 0)  # the child's own rusage: its peak RSS
        seconds = time.monotonic() - started
        process.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        if process.returncode != 0:
            raise RuntimeError(err.read().decode(errors="replace")[-2000:])
        summary = out.read().decode(errors="replace").strip().splitlines()[-1]
    return seconds, usage.ru_maxrss / 1024, summary


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rows", type=int, action="append", help="default: 100000 and 1000000")
    parser.add_argument(
        "--database-url",
        default=os.environ.get(
            "TEST_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/postgres"
        ),
        help="a PostgreSQL server where the benchmark may create and drop a database",
    )
    args = parser.parse_args()
    results = []
    for rows in args.rows or [100_000, 1_000_000]:
        with (
            tempfile.TemporaryDirectory() as directory,
            scratch_database(args.database_url, prefix="nl_import") as database_url,
        ):
            path = Path(directory) / "subscribers.csv"
            repeats = write_csv(path, rows)
            size = path.stat().st_size
            print(f"[{time.strftime('%H:%M:%S')}] importing {rows:,} rows ({size / 1e6:.0f} MB)")
            seconds, peak, summary = run_import(database_url, path)
            print(f"  {summary}")
            results.append((rows, repeats, seconds, peak))
    print()
    print("CSV import (newsletter subscribers import, pending + confirmation queued), PostgreSQL")
    print(f"{'rows':>10}{'repeats':>9}{'seconds':>9}{'rows/s':>9}{'peak RSS':>10}")
    for rows, repeats, seconds, peak in results:
        print(f"{rows:>10,}{repeats:>9,}{seconds:>9.1f}{rows / seconds:>9,.0f}{peak:>8.0f}MB")
    big = results[-1]
    print(
        f"target at {big[0]:,}: under 120 s and 150 MB -> "
        f"{'meets' if big[2] < 120 and big[3] < 150 else 'misses'}"
    )


if __name__ == "__main__":
    main()
