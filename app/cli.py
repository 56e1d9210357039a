"""The `newsletter` command."""

from __future__ import annotations

import asyncio
import csv
import gc
import logging
import os
import signal
import sys
import textwrap
from collections.abc import Awaitable, Callable, Coroutine, Iterable
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn, TextIO, TypeVar

import typer
from pydantic import ValidationError
from sqlmodel.ext.asyncio.session import AsyncSession

from app.config import Settings
from app.models import ApiKey, Editor, Language, SubscriberStatus

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import async_sessionmaker

    from app.digests.service import DigestProgress
    from app.models import Digest
    from app.retention import RetentionResult
    from app.security import Tokens
    from app.subscribers.csvfile import ImportResult, ImportRow, RejectedRow

cli = typer.Typer(help="Self-hosted newsletter service.", no_args_is_help=True)
log = logging.getLogger("app.cli")
T = TypeVar("T")


def load_settings() -> Settings:
    """Settings from the environment; a bad or dangerous value is one clear line and exit 2."""
    from app.logging_setup import configure_logging

    try:
        settings = Settings()
    except ValidationError as exc:
        for error in exc.errors():
            field = ".".join(str(p) for p in error["loc"]) or "settings"
            typer.echo(f"error: {field.upper()}: {error['msg']}", err=True)
        raise typer.Exit(2) from None
    configure_logging(level=settings.log_level, json_lines=settings.app_env == "production")
    return settings


def fail(message: str, code: int = 1) -> NoReturn:
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(code)


@cli.command()
def migrate() -> None:
    """Apply database migrations (creates the SQLite file under var/ if needed)."""
    from app import migrations

    settings = load_settings()
    try:
        migrations.upgrade(
            settings.database_url,
            secret_keys=[settings.secret_key, *settings.secret_key_fallback_list],
        )
    except migrations.MigrationRefused as exc:
        fail(str(exc))
    typer.echo("database is up to date")


@cli.command()
def serve(
    host: str = typer.Option("127.0.0.1", help="Address to listen on."),
    port: int = typer.Option(8000, help="Port to listen on."),
    no_worker: bool = typer.Option(False, "--no-worker", help="Do not run the sender in-process."),
) -> None:
    """Serve the API and pages (with the sender inside, unless --no-worker)."""
    import uvicorn

    from app.main import create_app

    settings = served_settings(load_settings(), host=host, port=port)
    if not no_worker:
        check_sending_setup(settings)
    app = create_app(settings, run_worker=not no_worker)
    freeze_startup_objects()
    uvicorn.run(
        app, host=host, port=port, log_config=None, proxy_headers=settings.trust_forwarded_for
    )


def freeze_startup_objects() -> None:
    """What is loaded by now (modules, settings, the app) lives as long as the process: moved out
    of the collector's sight, it is not scanned by every full collection, which otherwise paused
    all requests for up to half a second while a big feed was imported."""
    gc.collect()
    gc.freeze()


def served_settings(settings: Settings, *, host: str, port: int) -> Settings:
    """PUBLIC_URL follows --host and --port unless it was set (environment or .env), so that
    `serve --port 8100` mails links that lead back to it."""
    if "public_url" in settings.model_fields_set:
        return settings
    if host in ("0.0.0.0", "::", ""):
        host = "127.0.0.1"  # listening everywhere: this machine, at least, reaches it there
        log.info("PUBLIC_URL is not set: links in emails point at http://%s:%s", host, port)
    netloc = f"[{host}]" if ":" in host else host
    return settings.model_copy(update={"public_url": f"http://{netloc}:{port}"})


def check_sending_setup(settings: Settings) -> None:
    """Refuse to start a sender whose DKIM setup cannot work, saying what to fix."""
    from app.mail.dkim import DkimConfigError, DkimSigner
    from app.worker.sender import default_worker_id

    try:
        DkimSigner.from_settings(settings)
    except DkimConfigError as exc:
        from sqlalchemy.engine import make_url

        from app.alerts.telling import tell_setup_broken
        from app.db import is_sqlite

        database = make_url(settings.database_url).database
        # No SQLite file yet: nobody to tell, and no file to create.
        if not is_sqlite(settings.database_url) or (database and Path(database).exists()):
            asyncio.run(tell_setup_broken(settings, process=default_worker_id(), error=str(exc)))
        fail(str(exc), code=2)


async def _run_worker(settings: Settings) -> None:
    from app.background import run_background
    from app.db import make_engine, make_sessionmaker
    from app.keys import ensure_hashing_key
    from app.mail.transport import make_mailer
    from app.security import Tokens

    engine = make_engine(settings.database_url)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    # The sender only signs links; the hashing key is loaded for uniformity (None if the
    # database is unreachable now: the sender waits for it anyway).
    tokens = await ensure_hashing_key(Tokens.from_settings(settings), engine)
    sessionmaker = make_sessionmaker(engine)
    try:
        await run_background(settings, sessionmaker, make_mailer(settings), tokens, stop)
    finally:
        await engine.dispose()
    log.info("worker stopped")


@cli.command()
def worker() -> None:
    """Run the sender alone (any number of these may run against PostgreSQL)."""
    from app.security import HashingKeyMissing

    settings = load_settings()
    check_sending_setup(settings)
    if settings.worker_nice:
        os.nice(settings.worker_nice)
    try:
        run_async(_run_worker(settings))
    except HashingKeyMissing as exc:
        fail(str(exc))


def run_async(main: Coroutine[Any, Any, T]) -> T:
    """asyncio.run on uvloop where it is installed (markedly faster sockets for the sender)."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(main)
    return uvloop.run(main)


async def _in_transaction(settings: Settings, work: Callable[[AsyncSession], Awaitable[T]]) -> T:
    """Run `work(session)` in one transaction against DATABASE_URL."""
    from app.db import make_engine, make_sessionmaker

    engine = make_engine(settings.database_url)
    try:
        async with make_sessionmaker(engine)() as session:
            result = await work(session)
            await session.commit()
            return result
    finally:
        await engine.dispose()


def _audit(
    session: AsyncSession,
    action: str,
    target_type: str | None = None,
    target_id: object = None,
    detail: str | None = None,
) -> None:
    """An editor's command in the audit log, in the command's own transaction."""
    from app.audit import service as audit_log

    audit_log.record(
        session,
        actor=audit_log.cli_actor(),
        source="cli",
        action=action,
        target_type=target_type,
        target_id=target_id,
        detail=detail,
    )


async def _audited(
    settings: Settings,
    action: str,
    target_type: str | None = None,
    target_id: object = None,
    detail: str | None = None,
) -> None:
    """The audit row of a command whose work committed in transactions of its own."""

    async def work(session: AsyncSession) -> None:
        _audit(session, action, target_type, target_id, detail)

    await _in_transaction(settings, work)


@cli.command("create-api-key")
def create_api_key(name: str = typer.Argument(..., help="Who or what the key is for.")) -> None:
    """Create an editor API key. The key is printed once, on the last line; only a hash is kept."""
    from app import editors

    settings = load_settings()

    async def work(session: AsyncSession) -> str:
        api_key, key = await editors.create_api_key(session, name=name)
        _audit(session, "create_api_key", "api_key", api_key.id, detail=api_key.name)
        return key

    try:
        key = asyncio.run(_in_transaction(settings, work))
    except ValueError as exc:
        fail(str(exc))
    typer.echo(f"API key for {name!r} (shown once, store it now):", err=True)
    typer.echo(key)


@cli.command("revoke-api-key")
def revoke_api_key(name: str = typer.Argument(..., help="The key's name.")) -> None:
    """Revoke an editor API key: requests with it get 401 from now on."""
    from app import editors

    settings = load_settings()

    async def work(session: AsyncSession) -> ApiKey | None:
        revoked = await editors.revoke_api_key(session, name=name)
        if revoked is not None:
            _audit(session, "revoke_api_key", "api_key", revoked.id, detail=revoked.name)
        return revoked

    revoked = asyncio.run(_in_transaction(settings, work))
    if revoked is None:
        fail(f"no active API key named {name!r}")
    typer.echo(f"revoked API key {name!r}")


# --- editors (desk accounts) --------------------------------------------------------------------

editors_cli = typer.Typer(help="Editor accounts of the desk (/desk).", no_args_is_help=True)
cli.add_typer(editors_cli, name="editors")


def _read_password(password_stdin: bool) -> str:
    if password_stdin:
        return sys.stdin.readline().rstrip("\r\n")
    password: str = typer.prompt("Password", hide_input=True, confirmation_prompt=True)
    return password


@editors_cli.command("add")
def editors_add(
    email: str = typer.Argument(..., help="The editor's address (their sign-in name)."),
    admin: bool = typer.Option(False, "--admin", help="May manage editors and API keys."),
    password_stdin: bool = typer.Option(
        False, "--password-stdin", help="Read the password from the first line of stdin."
    ),
) -> None:
    """Create an editor account (password at least 12 characters, stored as an Argon2 hash)."""
    from app.desk import accounts

    settings = load_settings()
    password = _read_password(password_stdin)

    async def work(session: AsyncSession) -> Editor:
        editor = await accounts.add_editor(session, email=email, password=password, is_admin=admin)
        _audit(session, "add_editor", "editor", editor.id, detail="admin" if admin else None)
        return editor

    try:
        editor = asyncio.run(_in_transaction(settings, work))
    except accounts.EditorError as exc:
        fail(str(exc))
    typer.echo(f"editor {editor.email} added" + (" (admin)" if editor.is_admin else ""))


@editors_cli.command("list")
def editors_list() -> None:
    """Every editor: address, admin or not, created."""
    from app.desk import accounts

    settings = load_settings()
    for editor in asyncio.run(_in_transaction(settings, accounts.list_editors)):
        role = "admin" if editor.is_admin else "editor"
        typer.echo(f"{editor.email}\t{role}\t{editor.created_at:%Y-%m-%d}")


@editors_cli.command("remove")
def editors_remove(email: str = typer.Argument(..., help="The editor's address.")) -> None:
    """Remove an editor: every browser they are signed in on is signed out at once."""
    from app.desk import accounts

    settings = load_settings()

    async def work(session: AsyncSession) -> Editor | None:
        removed = await accounts.remove_editor(session, email=email)
        if removed is not None:
            _audit(session, "remove_editor", "editor", removed.id)
        return removed

    removed = asyncio.run(_in_transaction(settings, work))
    if removed is None:
        fail(f"no editor with the address {email!r}")
    typer.echo(f"editor {removed.email} removed; their sessions ended")


@editors_cli.command("reset-password")
def editors_reset_password(
    email: str = typer.Argument(..., help="The editor's address."),
    password_stdin: bool = typer.Option(
        False, "--password-stdin", help="Read the new password from the first line of stdin."
    ),
) -> None:
    """Set a new password; every session of the editor ends."""
    from app.desk import accounts

    settings = load_settings()
    password = _read_password(password_stdin)

    async def work(session: AsyncSession) -> Editor | None:
        editor = await accounts.reset_password(session, email=email, password=password)
        if editor is not None:
            _audit(session, "reset_editor_password", "editor", editor.id)
        return editor

    try:
        editor = asyncio.run(_in_transaction(settings, work))
    except accounts.EditorError as exc:
        fail(str(exc))
    if editor is None:
        fail(f"no editor with the address {email!r}")
    typer.echo(f"password of {editor.email} reset; their sessions ended")


# --- bounces ------------------------------------------------------------------------------------

bounces_cli = typer.Typer(help="Bounces and complaints.", no_args_is_help=True)
cli.add_typer(bounces_cli, name="bounces")


def _tokens(settings: Settings) -> Tokens:
    """Tokens with the address-hashing key stored in the database."""
    from app.keys import tokens_for_command
    from app.security import HashingKeyMissing

    try:
        return tokens_for_command(settings)
    except HashingKeyMissing as exc:
        fail(str(exc))
        raise  # unreachable: fail() exits


@bounces_cli.command("process")
def bounces_process(
    path: Path = typer.Argument(..., help="A Maildir (with cur/ and new/) or an mbox file."),
    all_messages: bool = typer.Option(
        False, "--all", help="Also read Maildir messages already marked seen."
    ),
) -> None:
    """Read returned mail (RFC 3464 bounces, RFC 5965 ARF complaints) and apply it: hard ->
    bounced, complaint -> complained, soft counted. Unreadable reports are listed, not errors.
    Safe to run from cron: Maildir messages are marked seen once read, and a report is never
    applied twice."""
    from rich.console import Console
    from rich.table import Table

    from app.bounces import reports, service
    from app.kinds import delivery_kinds

    settings = load_settings()
    tokens = _tokens(settings)
    try:
        messages = list(reports.read_messages(path, include_seen=all_messages))
    except (ValueError, OSError) as exc:
        fail(str(exc))
    summary = asyncio.run(
        _in_transaction(
            settings,
            lambda s: service.process_returned_mail(
                s,
                settings=settings,
                tokens=tokens,
                messages=messages,
                kinds=delivery_kinds(settings, tokens),
            ),
        )
    )
    # Only once committed: a run that fails leaves its messages unseen for the next one.
    try:
        reports.mark_seen(path, [name for name, _ in messages])
    except OSError as exc:
        fail(f"applied, but could not mark the messages seen: {exc}")
    console = Console()
    table = Table(title="Returned mail")
    for column in ("processed", "hard", "soft", "complaints", "unmatched", "unreadable"):
        table.add_column(column, justify="right")
    table.add_column("already processed", justify="right")
    table.add_row(
        *(
            str(n)
            for n in (
                summary.processed,
                summary.hard,
                summary.soft,
                summary.complaints,
                len(summary.unmatched),
                len(summary.unreadable),
                summary.already_processed,
            )
        )
    )
    console.print(table)
    if summary.already_processed:
        console.print(
            f"{summary.already_processed} report(s) already processed, not applied again",
            soft_wrap=True,
        )
    # One line per message, never wrapped: easy to grep.
    console.print(f"{summary.suppressed} subscriber(s) newly suppressed", soft_wrap=True)
    for name in summary.unmatched:
        console.print(f"unmatched: {name}", markup=False, soft_wrap=True)
    for name in summary.unverified:
        console.print(
            f"unverified: {name}: matched by address only, counted as a soft bounce",
            markup=False,
            soft_wrap=True,
        )
    for name, reason in summary.unreadable:
        console.print(f"unreadable: {name}: {reason}", markup=False, soft_wrap=True)


# --- DKIM ---------------------------------------------------------------------------------------

dkim_cli = typer.Typer(help="DKIM signing keys.", no_args_is_help=True)
cli.add_typer(dkim_cli, name="dkim")


@dkim_cli.command("generate")
def dkim_generate(
    selector: str | None = typer.Option(
        None,
        help="DNS selector (default: DKIM_SELECTOR or nl<year>; "
        "for ed25519, DKIM_ED25519_SELECTOR or that with -ed25519).",
    ),
    domain: str | None = typer.Option(
        None, help="Signing domain (default: DKIM_DOMAIN or MAIL_FROM's)."
    ),
    out: Path = typer.Option(Path("var/dkim"), help="Directory for the key files."),
    algorithm: str = typer.Option(
        "rsa",
        help="rsa (2048 bits; every receiver verifies it) or ed25519 (RFC 8463, a second "
        "signature next to RSA).",
    ),
) -> None:
    """Write a key pair (RSA 2048 or Ed25519) and print the DNS TXT record to publish."""
    from datetime import date

    from app.mail.dkim import (
        DkimConfigError,
        KeyAlgorithm,
        default_ed25519_selector,
        generate_key,
        valid_dns_labels,
    )
    from app.mail.message import mail_from_domain

    if algorithm not in {"rsa", "ed25519"}:
        fail(f"--algorithm {algorithm!r}: rsa or ed25519", code=2)
    settings = load_settings()
    kind = KeyAlgorithm(algorithm)
    rsa_selector = settings.dkim_selector or f"nl{date.today().year}"
    if kind is KeyAlgorithm.rsa:
        selector = selector or rsa_selector
    else:
        selector = (
            selector or settings.dkim_ed25519_selector or default_ed25519_selector(rsa_selector)
        )
    domain = domain or settings.dkim_domain or mail_from_domain(settings.mail_from)
    if not valid_dns_labels(selector):
        fail(f"--selector {selector!r}: letters, digits and '-' only (dot-separated labels)")
    try:
        key = generate_key(domain=domain, selector=selector, out_dir=out, algorithm=kind)
    except DkimConfigError as exc:
        fail(str(exc))
    except OSError as exc:
        fail(f"key generation failed: {exc}")
    path = key.private_key_path.resolve()
    typer.echo(f"private key: {key.private_key_path} (keep it secret)", err=True)
    typer.echo(f"public key:  {key.public_key_path}", err=True)
    if kind is KeyAlgorithm.rsa:
        typer.echo("set:", err=True)
        typer.echo(
            f"  DKIM_DOMAIN={domain} DKIM_SELECTOR={selector} DKIM_PRIVATE_KEY_PATH={path}",
            err=True,
        )
    else:
        typer.echo("set (next to the RSA key's DKIM_DOMAIN, DKIM_SELECTOR, ...):", err=True)
        typer.echo(
            f"  DKIM_ED25519_SELECTOR={selector} DKIM_ED25519_PRIVATE_KEY_PATH={path}", err=True
        )
    typer.echo("publish this DNS TXT record (DNS web panels: the name, then the value):", err=True)
    typer.echo(f"  {key.record_name}", err=True)
    typer.echo(f"  {key.record_value}", err=True)
    # Zone-file form: a TXT string holds at most 255 characters, a 2048-bit key needs two.
    value = key.record_value
    strings = " ".join(f'"{value[i : i + 255]}"' for i in range(0, len(value), 255))
    typer.echo(f"{key.record_name}. IN TXT ( {strings} )")


@dkim_cli.command("check")
def dkim_check(
    nameserver: str | None = typer.Option(
        None, help="Ask this DNS server (IP or IP:port) instead of the system's resolvers."
    ),
    timeout: float = typer.Option(5.0, min=0.1, max=60, help="Seconds to wait for DNS."),
) -> None:
    """Check that each configured key's public half is published in DNS and matches."""
    from app.mail.dkim import DkimConfigError, DkimSigner
    from app.mail.dkim_dns import NoResolver, check_published_key, make_resolver

    settings = load_settings()
    try:
        signer = DkimSigner.from_settings(settings)
    except DkimConfigError as exc:
        fail(str(exc), code=2)
    if signer is None:
        fail("DKIM is off: set DKIM_DOMAIN, DKIM_SELECTOR and DKIM_PRIVATE_KEY_PATH", code=2)
    try:
        resolver = make_resolver(nameserver, timeout=timeout)
    except ValueError as exc:
        fail(f"--nameserver {nameserver!r}: {exc}", code=2)
    except NoResolver as exc:
        fail(f"DNS cannot be reached: {exc}; pass --nameserver")
    failed = 0
    for key in signer.keys:
        result = check_published_key(key, domain=signer.domain, resolver=resolver)
        line = f"{result.record_name} ({key.description}, {key.setting}): {result.message}"
        if result.ok:
            typer.echo(f"ok: {line}")
        else:
            failed += 1
            typer.echo(f"error: {line}", err=True)
            if not result.unreachable:
                typer.echo(f"  expected: {key.dns_record_value()}", err=True)
    if failed:
        raise typer.Exit(1)


# --- subscribers --------------------------------------------------------------------------------

subscribers_cli = typer.Typer(help="Import and export subscribers.", no_args_is_help=True)
cli.add_typer(subscribers_cli, name="subscribers")
IMPORT_CHUNK = 5000


async def _import(
    settings: Settings,
    rows: Iterable[ImportRow | RejectedRow],
    *,
    lines: int,
    confirmed: bool,
) -> tuple[ImportResult, int]:
    """Import chunk by chunk as the file is read (flat memory); bad rows are printed as they
    come. Returns the totals and how many rows were rejected."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeElapsedColumn

    from app.db import make_engine, make_sessionmaker
    from app.models import utcnow
    from app.subscribers.csvfile import ImportResult, RejectedRow, import_chunk

    total = ImportResult()
    rejected = 0
    engine = make_engine(settings.database_url)
    sessionmaker = make_sessionmaker(engine)

    async def insert(chunk: list[ImportRow]) -> None:
        # One transaction per chunk: an interrupted import is resumed by running it again
        # (what is already in is skipped).
        async with sessionmaker() as session:
            result = await import_chunk(
                session,
                rows=chunk,
                confirmed=confirmed,
                now=utcnow(),
                cadence=settings.default_cadence,
            )
            await session.commit()
        total.added += result.added
        total.already_subscribed += result.already_subscribed
        total.suppressed += result.suppressed

    try:
        with Progress(
            "[progress.description]{task.description}",
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            transient=False,
        ) as progress:
            task = progress.add_task("importing", total=max(0, lines - 1))
            chunk: list[ImportRow] = []
            for row in rows:
                if isinstance(row, RejectedRow):
                    rejected += 1
                    typer.echo(f"line {row.line}: {row.message}", err=True)
                    continue
                chunk.append(row)
                if len(chunk) >= IMPORT_CHUNK:
                    await insert(chunk)
                    progress.update(task, completed=row.line - 1)
                    chunk = []
            if chunk:
                await insert(chunk)
            progress.update(task, completed=max(0, lines - 1))
    finally:
        await engine.dispose()
    return total, rejected


@subscribers_cli.command("import")
def subscribers_import(
    file: Path = typer.Argument(..., help="CSV with a header row: email[,name][,language]."),
    confirmed: bool = typer.Option(
        False,
        "--confirmed",
        help="The newsroom already holds these readers' consent: no confirmation email.",
    ),
    language: Language = typer.Option(Language.fr, help="Language for rows without one."),
) -> None:
    """Import subscribers. Without --confirmed each new address gets the double opt-in email.
    Known addresses are left as they are (an unsubscribed one is never revived)."""
    from app.subscribers.csvfile import ImportFileError, check_import_file, import_rows

    settings = load_settings()
    try:
        lines = check_import_file(file)
        rows = import_rows(file, tokens=_tokens(settings), default_language=language.value)
        result, rejected = asyncio.run(_import(settings, rows, lines=lines, confirmed=confirmed))
    except ImportFileError as exc:
        fail(str(exc))
    status = "confirmed" if confirmed else "pending, confirmation email queued"
    asyncio.run(
        _audited(
            settings,
            "import_subscribers",
            detail=f"{file.name}: {result.added} added ({status}), "
            f"{result.already_subscribed} known, {result.suppressed} suppressed",
        )
    )
    typer.echo(
        f"imported {result.added} ({status}); already subscribed {result.already_subscribed}; "
        f"suppressed, not revived {result.suppressed}; rejected rows {rejected}"
    )


async def _export(settings: Settings, status: SubscriberStatus | None, out: TextIO) -> int:
    from app.subscribers.csvfile import export_rows

    writer = csv.writer(out, lineterminator="\n")

    async def work(session: AsyncSession) -> int:
        count = -1  # the header is not a subscriber
        async for row in export_rows(session, status=status):
            writer.writerow(row)
            count += 1
        return count

    return await _in_transaction(settings, work)


def parse_time(value: str, *, option: str) -> datetime:
    """An ISO 8601 date or time from the command line (UTC when it names no zone)."""
    try:
        parsed = datetime.fromisoformat(value.strip())
    except ValueError:
        fail(f"{option}: {value!r} is not a date or time (e.g. 2026-11-28 or 2026-11-28T08:00)")
    return parsed if parsed.tzinfo is not None else parsed.replace(tzinfo=UTC)


@subscribers_cli.command("unbounce")
def subscribers_unbounce(
    since: str = typer.Option(
        ..., "--since", help="Restore readers marked bounced at or after this time (ISO 8601)."
    ),
    digest: int | None = typer.Option(
        None, "--digest", min=1, help="Only readers whose copy of this digest failed."
    ),
    dry_run: bool = typer.Option(False, "--dry-run", help="List them; change nothing."),
) -> None:
    """Restore readers bounced by mistake (a relay that refused everyone, a wrong report): back
    to confirmed, with the reason in their history; failed copies of a digest still being sent
    are queued again. Try it with --dry-run first."""
    from app.bounces import service

    settings = load_settings()
    moment = parse_time(since, option="--since")

    async def work(session: AsyncSession) -> list[service.Unbounced]:
        restored = await service.unbounce(session, since=moment, digest_id=digest, dry_run=dry_run)
        if not dry_run:
            detail = f"{len(restored)} restored, bounced since {moment.isoformat()}"
            _audit(session, "unbounce", "digest" if digest else None, digest, detail)
        return restored

    restored = asyncio.run(_in_transaction(settings, work))
    for item in restored:
        bounced = item.bounced_at.isoformat(timespec="seconds") if item.bounced_at else "-"
        typer.echo(f"{item.email or '(erased)'}\tbounced {bounced}\t-> {item.restored_to}")
    verb = "would restore" if dry_run else "restored"
    typer.echo(f"{verb} {len(restored)} subscriber(s)")


@subscribers_cli.command("export")
def subscribers_export(
    status: SubscriberStatus | None = typer.Option(None, help="Only subscribers in this status."),
    output: Path | None = typer.Option(None, help="Write to this file instead of stdout."),
) -> None:
    """Write subscribers as CSV (email, name, language, status, created_at, confirmed_at);
    erased subscribers are left out."""
    settings = load_settings()
    if output is None:
        count = asyncio.run(_export(settings, status, sys.stdout))
    else:
        with output.open("w", encoding="utf-8", newline="") as handle:
            count = asyncio.run(_export(settings, status, handle))
    asyncio.run(
        _audited(settings, "export_subscribers", detail=f"{count} subscriber(s), status {status}")
    )
    typer.echo(f"exported {count} subscriber(s)", err=True)


# --- schedules ----------------------------------------------------------------------------------

schedules_cli = typer.Typer(help="Schedules: list them, run one now.", no_args_is_help=True)
cli.add_typer(schedules_cli, name="schedules")


@schedules_cli.command("list")
def schedules_list() -> None:
    """Every schedule, its next slot and its last run."""
    from rich.console import Console
    from rich.table import Table

    from app.schedules import service

    async def read(session: AsyncSession) -> list[tuple[Any, Any, Any]]:
        schedules = await service.list_schedules(session)
        runs = await service.recent_runs(
            session, schedule_ids=[s.id for s in schedules if s.id is not None], limit=1
        )
        return [
            (s, service.next_run_at(s), next(iter(runs.get(s.id or 0, [])), None))
            for s in schedules
        ]

    settings = load_settings()
    rows = asyncio.run(_in_transaction(settings, read))
    table = Table(title=f"Schedules ({len(rows)})")
    for column in ("id", "name", "cron", "timezone", "cadence", "enabled", "next run", "last run"):
        table.add_column(column, justify="right" if column == "id" else "left")
    for schedule, next_at, last in rows:
        last_run = "-"
        if last is not None:
            digest = f" (digest {last.digest_id})" if last.digest_id else ""
            last_run = f"{last.slot_at:%Y-%m-%d %H:%M} UTC {last.outcome}{digest}"
        table.add_row(
            str(schedule.id),
            schedule.name,
            schedule.cron,
            schedule.timezone,
            schedule.cadence,
            "yes" if schedule.enabled else "no",
            next_at.isoformat() if next_at else "-",
            last_run,
        )
    Console().print(table)


async def _run_schedule_now(settings: Settings, schedule_id: int) -> Any:
    from app.db import make_engine, make_sessionmaker
    from app.schedules.runner import Scheduler

    engine = make_engine(settings.database_url)
    try:
        return await Scheduler(settings, make_sessionmaker(engine)).run_now(schedule_id)
    finally:
        await engine.dispose()


@schedules_cli.command("run-now")
def schedules_run_now(schedule_id: int = typer.Argument(..., help="The schedule's id.")) -> None:
    """Run a schedule at once, as if a slot were due now (FEED_URL polled first): its digest
    is queued (the worker sends it), or the skip is recorded."""
    from app.schedules import service

    settings = load_settings()
    try:
        run = run_async(_run_schedule_now(settings, schedule_id))
    except service.ScheduleNotFound as exc:
        fail(str(exc))
    if run is None:
        fail("this schedule is being run right now by another process")
    digest = f", digest {run.digest_id} queued" if run.digest_id else ""
    detail = f" ({run.detail})" if run.detail else ""
    typer.echo(
        f"schedule {schedule_id}: {run.outcome}, {run.article_count} article(s){digest}{detail}"
    )
    if run.outcome == "failed":
        raise typer.Exit(1)


# --- digests ------------------------------------------------------------------------------------

digests_cli = typer.Typer(help="Digests: list them, follow a send.", no_args_is_help=True)
cli.add_typer(digests_cli, name="digests")
# A digest in one of these is not moving any more: --follow stops there.
SETTLED_STATUSES = ("sent", "cancelled", "paused")


def _format_rate(rate: float | None) -> str:
    if rate is None:
        return "-"
    return f"{rate:.2f}/s" if rate < 10 else f"{rate:.0f}/s"


def _format_eta(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    minutes, secs = divmod(round(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


def _custom_subject(digest: Digest) -> str | None:
    """The editor's subject: one for every language, else the first of the per-language ones
    (`{"fr": ..., "en": ...}`); None when every reader gets the dated default."""
    return digest.subject or next(iter((digest.subject_translations or {}).values()), None)


def _status_lines(digest: Digest, progress: DigestProgress) -> list[str]:
    counts = progress.counts
    custom = _custom_subject(digest)
    subject = f" {custom!r}" if custom else ""
    lines = [
        f"digest {digest.id}{subject}: {digest.status}",
        f"recipients {digest.recipients}: queued {counts.queued}, sending {counts.sending}, "
        f"sent {counts.sent}, failed {counts.failed}, skipped {counts.skipped}",
        f"progress {progress.progress:.1%}, rate {_format_rate(progress.rate_per_second)}, "
        f"ETA {_format_eta(progress.eta_seconds)}",
    ]
    if progress.pace_per_second is not None or progress.throttled_at is not None:
        pace = (
            "unlimited"
            if progress.pace_per_second is None
            else f"{progress.pace_per_second:.1f} msg/s"
        )
        throttled = ", throttled by the relay" if progress.throttled_at is not None else ""
        lines.append(f"pace {pace}{throttled}")
    if progress.bounce_rate is not None or progress.complaint_rate is not None:
        lines.append(
            f"bounce rate {_format_share(progress.bounce_rate)}, "
            f"complaint rate {_format_share(progress.complaint_rate)}"
        )
    if digest.status == "paused" and digest.paused_reason:
        lines.append(f"paused: {digest.paused_reason}")
    return lines


def _format_share(share: float | None) -> str:
    return "-" if share is None else f"{share:.2%}"


async def _read_status(
    sessionmaker: async_sessionmaker[AsyncSession], digest_id: int
) -> tuple[Digest, DigestProgress]:
    from app.digests import service

    # One short transaction per look: finishing a completed send is a write.
    async with sessionmaker() as session:
        result = await service.digest_with_progress(session, digest_id=digest_id)
        await session.commit()
        return result


def _bar_fields(digest: Digest, progress: DigestProgress) -> dict[str, Any]:
    counts = progress.counts
    return {
        "total": max(digest.recipients, 1),
        "completed": counts.sent + counts.failed + counts.skipped,
        "status": digest.status,
        "rate": _format_rate(progress.rate_per_second),
        "eta": _format_eta(progress.eta_seconds),
        "sent": counts.sent,
        "failed": counts.failed,
        "skipped": counts.skipped,
    }


async def _follow(settings: Settings, digest_id: int, interval: float) -> None:
    from rich.progress import BarColumn, Progress, TaskProgressColumn, TextColumn

    from app.db import make_engine, make_sessionmaker

    engine = make_engine(settings.database_url)
    try:
        sessionmaker = make_sessionmaker(engine)
        digest, progress = await _read_status(sessionmaker, digest_id)
        # Rate and ETA are the database's (every worker counts), not this process's guess.
        with Progress(
            TextColumn("[bold]{task.fields[status]}[/]"),
            BarColumn(bar_width=20),
            TaskProgressColumn(),
            TextColumn("{task.fields[rate]}"),
            TextColumn("ETA {task.fields[eta]}"),
            TextColumn(
                "sent {task.fields[sent]} failed {task.fields[failed]} "
                "skipped {task.fields[skipped]}"
            ),
            transient=True,
        ) as bar:
            task = bar.add_task("sending", **_bar_fields(digest, progress))
            while True:
                bar.update(task, **_bar_fields(digest, progress))
                if digest.status in SETTLED_STATUSES:
                    break
                await asyncio.sleep(interval)
                digest, progress = await _read_status(sessionmaker, digest_id)
    finally:
        await engine.dispose()
    for line in _status_lines(digest, progress):
        typer.echo(line)


@digests_cli.command("status")
def digests_status(
    digest_id: int = typer.Argument(..., help="The digest's id."),
    follow: bool = typer.Option(
        False, "--follow", help="Live progress until the send is sent, cancelled or paused."
    ),
    interval: float = typer.Option(1.0, min=0.05, help="Seconds between two looks (--follow)."),
) -> None:
    """Status, counts per delivery status, rate and ETA of a digest."""
    from app.digests import service

    settings = load_settings()
    try:
        if follow:
            run_async(_follow(settings, digest_id, interval))
            return
        digest, progress = asyncio.run(
            _in_transaction(
                settings, lambda s: service.digest_with_progress(s, digest_id=digest_id)
            )
        )
    except service.DigestNotFound as exc:
        fail(str(exc))
    except KeyboardInterrupt:
        raise typer.Exit(130) from None
    for line in _status_lines(digest, progress):
        typer.echo(line)


@digests_cli.command("domains")
def digests_domains(
    digest_id: int = typer.Argument(..., help="The digest's id."),
    limit: int = typer.Option(20, min=1, max=1000, help="How many domains, largest first."),
) -> None:
    """Deliverability of a digest: bounce and complaint rates, and per recipient domain the
    copies delivered, deferred (4xx, throttled) and bounced, and the complaints."""
    from rich.console import Console
    from rich.table import Table

    from app.digests import service

    settings = load_settings()
    try:
        figures = asyncio.run(
            _in_transaction(
                settings,
                lambda s: service.deliverability(s, digest_id=digest_id, domains=limit),
            )
        )
    except service.DigestNotFound as exc:
        fail(str(exc))
    typer.echo(
        f"digest {digest_id}: delivered {figures.delivered}, deferred {figures.deferred}, "
        f"bounced {figures.bounced}, complaints {figures.complaints}; bounce rate "
        f"{_format_share(figures.bounce_rate)}, complaint rate "
        f"{_format_share(figures.complaint_rate)}"
    )
    table = Table(title=f"Recipient domains ({len(figures.domains)} of {figures.domain_count})")
    for column in ("domain", "delivered", "deferred", "bounced", "complaints", "bounce rate"):
        table.add_column(column, justify="left" if column == "domain" else "right")
    for d in figures.domains:
        tried = d.delivered + d.bounced
        table.add_row(
            d.domain,
            str(d.delivered),
            str(d.deferred),
            str(d.bounced),
            str(d.complaints),
            _format_share(d.bounced / tried if tried else None),
        )
    Console(width=120).print(table)


@digests_cli.command("list")
def digests_list(
    limit: int = typer.Option(20, min=1, max=100, help="How many, newest first."),
) -> None:
    """The newest digests with their status and progress."""
    from rich.console import Console
    from rich.table import Table

    from app.digests import service

    settings = load_settings()
    rows, total = asyncio.run(
        _in_transaction(
            settings, lambda s: service.list_digests_with_progress(s, limit=limit, offset=0)
        )
    )
    table = Table(title=f"Digests ({len(rows)} of {total})")
    for column in ("id", "status", "recipients", "sent", "failed", "skipped", "left"):
        table.add_column(column, justify="right" if column != "status" else "left")
    table.add_column("progress", justify="right")
    table.add_column("subject")
    for digest, progress in rows:
        counts = progress.counts
        table.add_row(
            str(digest.id),
            digest.status,
            str(digest.recipients),
            str(counts.sent),
            str(counts.failed),
            str(counts.skipped),
            str(counts.queued + counts.sending),
            f"{progress.progress:.0%}",
            _custom_subject(digest) or "(default)",
        )
    Console().print(table)


@cli.command("import-feed")
def import_feed(
    source: str = typer.Argument(..., help="The feed's http(s) URL, or a path to a feed file."),
) -> None:
    """Import an RSS/Atom feed: new articles are created, changed ones updated, none deleted."""
    from app.articles import service
    from app.articles.feeds import MalformedFeed

    settings = load_settings()

    async def work(session: AsyncSession) -> service.ImportResult:
        result = await service.import_feed_source(
            session, source=source, limits=service.FeedLimits.from_settings(settings)
        )
        _audit(session, "import_feed", "feed", source, detail=result.summary())
        return result

    try:
        result = asyncio.run(_in_transaction(settings, work))
    except service.FeedUnreachable as exc:
        fail(f"feed unreachable: {exc}")
    except MalformedFeed as exc:
        fail(f"malformed feed: {exc}")
    if result.warning:
        typer.echo(f"warning: {result.warning}", err=True)
    typer.echo(f"imported {source}: {result.summary()}")


# --- keys, backups ------------------------------------------------------------------------------

keys_cli = typer.Typer(help="The signing key (SECRET_KEY) and its rotation.", no_args_is_help=True)
cli.add_typer(keys_cli, name="keys")


@keys_cli.command("rotate")
def keys_rotate(
    keep_days: int = typer.Option(
        30,
        min=0,
        help="Days the former key keeps working for links already sent (0 if it leaked).",
    ),
) -> None:
    """Print the settings that replace SECRET_KEY, in order, and what each step does. Changes
    nothing by itself: the settings are yours to apply."""
    from datetime import date

    from app.keys import new_secret_key, rotation_plan

    settings = load_settings()
    # Rotating is safe only once address hashes no longer depend on SECRET_KEY.
    _tokens(settings)
    steps = rotation_plan(
        settings, new_key=new_secret_key(), keep_days=keep_days, today=date.today()
    )
    typer.echo("Rotate SECRET_KEY in these steps (the values are secrets: keep them out of logs):")
    for number, step in enumerate(steps, start=1):
        typer.echo(f"\n{number}. {step.action}")
        typer.echo(
            textwrap.fill(step.effect, width=96, initial_indent="   ", subsequent_indent="   ")
        )


@cli.command()
def backup(path: Path = typer.Argument(..., help="The file to write (must not exist).")) -> None:
    """A consistent copy of the database while the service runs (SQLite: online backup;
    PostgreSQL: pg_dump custom format). Keep .env and the DKIM key with it."""
    from app import backup as backups

    settings = load_settings()
    try:
        outcome = backups.backup(settings, path)
    except backups.BackupError as exc:
        fail(str(exc))
    typer.echo(
        f"backed up to {outcome.path} ({outcome.size:,} bytes, schema {outcome.revision}); "
        "keep .env (SECRET_KEY) and the DKIM private key with it"
    )


@cli.command()
def restore(path: Path = typer.Argument(..., help="A file made by `newsletter backup`.")) -> None:
    """Restore a backup into DATABASE_URL, which must be empty (a new database)."""
    from app import backup as backups
    from app.migrations import head_revision

    settings = load_settings()
    try:
        outcome = backups.restore(settings, path)
    except backups.BackupError as exc:
        fail(str(exc))
    typer.echo(f"restored {outcome.path} (schema {outcome.revision})")
    if outcome.revision != head_revision():
        typer.echo("the backup comes from another version: run `newsletter migrate` now", err=True)


retention_cli = typer.Typer(help="Old delivery rows and history (DELIVERY_RETENTION_DAYS).")
cli.add_typer(retention_cli, name="retention", no_args_is_help=True)


async def _retention(settings: Settings, days: int) -> RetentionResult:
    from app.db import make_engine, make_sessionmaker
    from app.retention import run_retention

    def progress(what: str, rows: int) -> None:
        typer.echo(f"  {what}: {rows:,} rows deleted")

    engine = make_engine(settings.database_url)
    try:
        return await run_retention(make_sessionmaker(engine), days=days, progress=progress)
    finally:
        await engine.dispose()


@retention_cli.command("run")
def retention_run(
    older_than: int | None = typer.Option(
        None,
        "--older-than",
        min=1,
        help="Days; default DELIVERY_RETENTION_DAYS.",
    ),
) -> None:
    """Apply the retention now: delivery rows of digests sent (or cancelled) more than DAYS
    ago and of settled confirmation emails, soft-bounce and click history entries, counted-click
    tags of those digests; small batches, each
    its own transaction. Digests keep their figures; consent and bounce records stay."""
    settings = load_settings()
    days = older_than if older_than is not None else settings.delivery_retention_days
    typer.echo(f"deleting what is older than {days} days, in batches")
    result = run_async(_retention(settings, days))
    typer.echo(
        f"done: {result.deliveries:,} delivery rows ({result.digests} digests and "
        f"confirmations), {result.history:,} history entries, "
        f"{result.click_tags:,} counted-click tags deleted"
    )


def main() -> None:
    try:
        cli()
    except KeyboardInterrupt:
        sys.exit(130)


if __name__ == "__main__":
    main()


# --- audit --------------------------------------------------------------------------------------

audit_cli = typer.Typer(help="The audit log of editors' actions.", no_args_is_help=True)
cli.add_typer(audit_cli, name="audit")


class ExportFormat(StrEnum):
    csv = "csv"
    jsonl = "jsonl"


async def _export_audit(
    settings: Settings, since: datetime | None, fmt: ExportFormat, out: TextIO
) -> int:
    from app.audit import service as audit_log
    from app.db import make_engine, make_sessionmaker

    count = -1 if fmt == ExportFormat.csv else 0  # the CSV header is not an event
    engine = make_engine(settings.database_url)
    try:
        async with make_sessionmaker(engine)() as session:
            async for line in audit_log.export_lines(session, since=since, fmt=fmt.value):
                out.write(line)
                count += 1
    finally:
        await engine.dispose()
    return max(count, 0)


@audit_cli.command("export")
def audit_export(
    since: str | None = typer.Option(None, "--since", help="Only events at or after (ISO 8601)."),
    fmt: ExportFormat = typer.Option(ExportFormat.csv, "--format", help="csv or jsonl."),
    output: Path | None = typer.Option(None, help="Write to this file instead of stdout."),
) -> None:
    """Write the audit log, oldest first: id, created_at, actor, source, action, target_type,
    target_id, detail."""
    settings = load_settings()
    moment = parse_time(since, option="--since") if since else None
    if output is None:
        count = run_async(_export_audit(settings, moment, fmt, sys.stdout))
    else:
        with output.open("w", encoding="utf-8", newline="") as handle:
            count = run_async(_export_audit(settings, moment, fmt, handle))
    typer.echo(f"exported {count} audit event(s)", err=True)
