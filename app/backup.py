"""`newsletter backup PATH` and `newsletter restore PATH`: a consistent copy of the database
while the service runs, and its return into an empty database.

SQLite: the online backup API (`sqlite3.Connection.backup`), which copies every page inside one
read transaction, so the copy is one instant of the database whatever the writers are doing.
PostgreSQL: `pg_dump --format=custom`, which reads everything in one snapshot without blocking
the service, and `pg_restore` in a single transaction.
"""

from __future__ import annotations

import os
import re
import shutil
import sqlite3
import subprocess
from dataclasses import dataclass
from pathlib import Path

import sqlalchemy as sa
from sqlalchemy.engine import make_url

from app.config import Settings
from app.db import is_sqlite, sync_url

SQLITE_MAGIC = b"SQLite format 3\x00"
PG_DUMP_MAGIC = b"PGDMP"
_VERSION = re.compile(r"\(PostgreSQL\)\s+(\d+)")
_USER_RELATIONS = sa.text(
    "SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
    "WHERE c.relkind IN ('r', 'p', 'v', 'm', 'S', 'f') "
    "AND n.nspname NOT IN ('pg_catalog', 'information_schema') "
    "AND n.nspname NOT LIKE 'pg\\_toast%' ORDER BY c.relname"
)


class BackupError(Exception):
    """A backup or restore that cannot be done; the message says why and what to do."""


@dataclass(frozen=True, slots=True)
class Outcome:
    path: Path
    size: int
    revision: str | None  # the schema revision (Alembic) in the copy


def backup(settings: Settings, path: Path) -> Outcome:
    """Write a consistent copy of DATABASE_URL to `path` (never overwriting a file)."""
    if path.exists():
        raise BackupError(f"{path} already exists: a backup never overwrites, choose a new name")
    if not path.parent.is_dir():
        raise BackupError(f"{path.parent} is not a directory")
    partial = path.with_name(path.name + ".partial")
    partial.unlink(missing_ok=True)
    # Readable by its owner only: the copy holds every address and the address-hashing key.
    os.close(os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
    try:
        if is_sqlite(settings.database_url):
            revision = _sqlite_backup(_sqlite_file(settings.database_url), partial)
        else:
            revision = _pg_backup(settings, partial)
        partial.rename(path)  # whole or absent: an interrupted backup leaves no file at PATH
    finally:
        partial.unlink(missing_ok=True)
    return Outcome(path, path.stat().st_size, revision)


def restore(settings: Settings, path: Path) -> Outcome:
    """Load a backup made by `backup` into DATABASE_URL, which must have no table yet."""
    if not path.is_file():
        raise BackupError(f"{path}: no such file")
    with path.open("rb") as handle:
        head = handle.read(len(SQLITE_MAGIC))
    sqlite_target = is_sqlite(settings.database_url)
    if head.startswith(PG_DUMP_MAGIC):
        if sqlite_target:
            raise BackupError(
                f"{path} is a PostgreSQL backup (pg_dump) and DATABASE_URL is SQLite: restore it "
                "into a PostgreSQL database"
            )
        revision = _pg_restore(settings, path)
    elif head == SQLITE_MAGIC:
        if not sqlite_target:
            raise BackupError(
                f"{path} is a SQLite backup and DATABASE_URL is PostgreSQL: restore it into a "
                "SQLite file (DATABASE_URL=sqlite:///path)"
            )
        revision = _sqlite_restore(path, _sqlite_file(settings.database_url))
    else:
        raise BackupError(f"{path} is not a backup made by `newsletter backup`")
    return Outcome(path, path.stat().st_size, revision)


def _refuse_non_empty(tables: list[str], where: str) -> None:
    if tables:
        listed = ", ".join(tables[:5]) + (", ..." if len(tables) > 5 else "")
        raise BackupError(
            f"{where} is not empty (it has {len(tables)} table(s): {listed}): restore only "
            "into an empty database, so that nothing in it is mixed with or lost under the "
            "backup. Create a new database (or move this one away) and point DATABASE_URL at it."
        )


# --- SQLite ------------------------------------------------------------------------------------


def _sqlite_file(database_url: str) -> Path:
    database = make_url(database_url).database
    if not database or database == ":memory:":
        raise BackupError("DATABASE_URL is an in-memory SQLite database: nothing to back up")
    return Path(database)


def _sqlite_revision(connection: sqlite3.Connection) -> str | None:
    try:
        row = connection.execute("SELECT version_num FROM alembic_version").fetchone()
    except sqlite3.DatabaseError:
        return None
    return str(row[0]) if row else None


def _sqlite_tables(connection: sqlite3.Connection) -> list[str]:
    rows = connection.execute(
        "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%' "
        "ORDER BY name"
    )
    return [str(name) for (name,) in rows]


def _sqlite_backup(source_path: Path, target: Path) -> str | None:
    if not source_path.is_file():
        raise BackupError(f"the database {source_path} does not exist")
    source = sqlite3.connect(source_path, timeout=30)
    try:
        copy = sqlite3.connect(target)
        try:
            # pages=-1: every page in one step, inside one read transaction of the source (WAL:
            # writers carry on meanwhile), so the copy is one consistent instant.
            source.backup(copy, pages=-1)
            # One self-contained file, without a -wal beside it.
            copy.execute("PRAGMA journal_mode=DELETE")
            check = copy.execute("PRAGMA quick_check").fetchone()
            if not check or check[0] != "ok":
                raise BackupError(f"the copy failed its integrity check: {check}")
            revision = _sqlite_revision(copy)
        finally:
            copy.close()
    finally:
        source.close()
    _fsync(target)
    return revision


def _sqlite_restore(backup_path: Path, target_path: Path) -> str | None:
    source = sqlite3.connect(f"{backup_path.resolve().as_uri()}?mode=ro", uri=True)
    try:
        try:
            tables = _sqlite_tables(source)
        except sqlite3.DatabaseError as exc:
            raise BackupError(f"{backup_path} is not a readable SQLite database: {exc}") from exc
        if "alembic_version" not in tables:
            raise BackupError(f"{backup_path} is not a backup made by `newsletter backup`")
        target_path.parent.mkdir(parents=True, exist_ok=True)
        target = sqlite3.connect(target_path, timeout=30)
        try:
            _refuse_non_empty(_sqlite_tables(target), str(target_path))
            source.backup(target, pages=-1)
            revision = _sqlite_revision(target)
        finally:
            target.close()
    finally:
        source.close()
    return revision


def _fsync(path: Path) -> None:
    with path.open("rb") as handle:
        os.fsync(handle.fileno())


# --- PostgreSQL --------------------------------------------------------------------------------


def _pg_connection_env(settings: Settings) -> tuple[str, dict[str, str]]:
    """A libpq URI without the password, and an environment that carries it (PGPASSWORD), so
    the password never shows in the process list."""
    url = make_url(settings.database_url)
    uri = url.set(drivername="postgresql", password=None).render_as_string(hide_password=False)
    env = dict(os.environ)
    if url.password is not None:
        env["PGPASSWORD"] = str(url.password)
    return uri, env


def _pg_inspect(settings: Settings) -> tuple[int, list[str], str | None]:
    """The server's major version, its user tables and the schema revision."""
    engine = sa.create_engine(sync_url(settings.database_url), poolclass=sa.pool.NullPool)
    try:
        with engine.connect() as connection:
            version = int(connection.execute(sa.text("SHOW server_version_num")).scalar_one())
            tables = [str(t) for t in connection.execute(_USER_RELATIONS).scalars()]
            revision = None
            if "alembic_version" in tables:
                revision = connection.execute(
                    sa.text("SELECT version_num FROM alembic_version")
                ).scalar_one_or_none()
    except sa.exc.OperationalError as exc:
        raise BackupError(f"cannot reach the database: {exc.orig}") from exc
    finally:
        engine.dispose()
    return version // 10000, tables, revision


def tool_major_version(tool: Path) -> int:
    try:
        answer = subprocess.run(
            [str(tool), "--version"], capture_output=True, text=True, timeout=30, check=True
        )
    except (OSError, subprocess.SubprocessError) as exc:
        raise BackupError(f"{tool} does not run: {exc}") from exc
    match = _VERSION.search(answer.stdout)
    if not match:
        raise BackupError(f"{tool} --version said {answer.stdout.strip()!r}: not a PostgreSQL tool")
    return int(match.group(1))


def find_pg_tool(name: str, *, server_major: int, bin_dir: Path | None) -> Path:
    """`pg_dump` or `pg_restore` of the server's major version or newer (an older pg_dump
    refuses a newer server; an older pg_restore cannot read a newer archive)."""
    install = (
        f"install the PostgreSQL {server_major} client tools (Debian: apt-get install "
        f"postgresql-client-{server_major}) or point PG_BIN_DIR at their bin directory"
    )
    if bin_dir is not None:
        candidates = [bin_dir / name]
        where = f"PG_BIN_DIR={bin_dir}"
    else:
        debian = Path(f"/usr/lib/postgresql/{server_major}/bin/{name}")
        on_path = shutil.which(name)
        candidates = [debian, *([Path(on_path)] if on_path else [])]
        where = f"{debian.parent} and PATH"
    found = next((c for c in candidates if c.is_file() and os.access(c, os.X_OK)), None)
    if found is None:
        raise BackupError(f"{name} not found (looked in {where}): {install}")
    major = tool_major_version(found)
    if major < server_major:
        raise BackupError(
            f"{found} is version {major} and the server is PostgreSQL {server_major}: {install}"
        )
    return found


def _run(command: list[str], env: dict[str, str], what: str) -> None:
    answer = subprocess.run(command, env=env, capture_output=True, text=True)
    if answer.returncode != 0:
        detail = answer.stderr.strip() or f"exit status {answer.returncode}"
        raise BackupError(f"{what} failed: {detail[-2000:]}")


def _pg_backup(settings: Settings, target: Path) -> str | None:
    major, _, revision = _pg_inspect(settings)
    pg_dump = find_pg_tool("pg_dump", server_major=major, bin_dir=settings.pg_bin_dir)
    uri, env = _pg_connection_env(settings)
    # One snapshot for the whole dump (pg_dump's own transaction): consistent while the
    # service writes, and it takes no lock that the service's statements wait for.
    _run([str(pg_dump), "--format=custom", f"--file={target}", f"--dbname={uri}"], env, "pg_dump")
    _fsync(target)
    return revision


def _pg_restore(settings: Settings, path: Path) -> str | None:
    major, tables, _ = _pg_inspect(settings)
    _refuse_non_empty(tables, "the database at DATABASE_URL")
    pg_restore = find_pg_tool("pg_restore", server_major=major, bin_dir=settings.pg_bin_dir)
    uri, env = _pg_connection_env(settings)
    # One transaction: a restore that fails leaves the database as empty as it was. Owners and
    # grants are those of the user restoring, not of the database that was dumped.
    _run(
        [
            str(pg_restore),
            "--exit-on-error",
            "--single-transaction",
            "--no-owner",
            "--no-privileges",
            f"--dbname={uri}",
            str(path),
        ],
        env,
        "pg_restore",
    )
    _, _, revision = _pg_inspect(settings)
    engine = sa.create_engine(sync_url(settings.database_url), poolclass=sa.pool.NullPool)
    try:
        with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as connection:
            connection.execute(sa.text("ANALYZE"))  # pg_restore leaves the planner no statistics
    finally:
        engine.dispose()
    return revision
