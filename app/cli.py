"""The `newsletter` command."""

from __future__ import annotations

import asyncio
import logging
import signal
import sys
from collections.abc import Awaitable, Callable
from typing import TypeVar

import typer
from pydantic import ValidationError
from sqlmodel.ext.asyncio.session import AsyncSession

from app.config import Settings

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


def fail(message: str, code: int = 1) -> None:
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(code)


@cli.command()
def migrate() -> None:
    """Apply database migrations (creates the SQLite file under var/ if needed)."""
    from app import migrations

    settings = load_settings()
    migrations.upgrade(settings.database_url)
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

    settings = load_settings()
    app = create_app(settings, run_worker=not no_worker)
    uvicorn.run(
        app, host=host, port=port, log_config=None, proxy_headers=settings.trust_forwarded_for
    )


async def _run_worker(settings: Settings) -> None:
    from app.db import make_engine, make_sessionmaker
    from app.mail.transport import make_mailer
    from app.security import Tokens
    from app.worker.scheduler import poll_feeds_forever
    from app.worker.sender import Sender

    engine = make_engine(settings.database_url)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    tokens = Tokens(
        settings.secret_key, confirm_max_age_seconds=settings.confirm_token_max_age_days * 86400
    )
    sessionmaker = make_sessionmaker(engine)
    sender = Sender(settings, sessionmaker, make_mailer(settings), tokens)
    try:
        await asyncio.gather(sender.run(stop), poll_feeds_forever(settings, sessionmaker, stop))
    finally:
        await engine.dispose()
    log.info("worker stopped")


@cli.command()
def worker() -> None:
    """Run the sender alone (any number of these may run against PostgreSQL)."""
    settings = load_settings()
    asyncio.run(_run_worker(settings))


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


@cli.command("create-api-key")
def create_api_key(name: str = typer.Argument(..., help="Who or what the key is for.")) -> None:
    """Create an editor API key. The key is printed once, on the last line; only a hash is kept."""
    from app import editors

    settings = load_settings()
    try:
        _, key = asyncio.run(
            _in_transaction(settings, lambda s: editors.create_api_key(s, name=name))
        )
    except ValueError as exc:
        fail(str(exc))
    typer.echo(f"API key for {name!r} (shown once, store it now):", err=True)
    typer.echo(key)


@cli.command("revoke-api-key")
def revoke_api_key(name: str = typer.Argument(..., help="The key's name.")) -> None:
    """Revoke an editor API key: requests with it get 401 from now on."""
    from app import editors

    settings = load_settings()
    revoked = asyncio.run(_in_transaction(settings, lambda s: editors.revoke_api_key(s, name=name)))
    if revoked is None:
        fail(f"no active API key named {name!r}")
    typer.echo(f"revoked API key {name!r}")


@cli.command("import-feed")
def import_feed(
    source: str = typer.Argument(..., help="The feed's http(s) URL, or a path to a feed file."),
) -> None:
    """Import an RSS/Atom feed: new articles are created, changed ones updated, none deleted."""
    from app.articles import service
    from app.articles.feeds import MalformedFeed

    settings = load_settings()
    try:
        result = asyncio.run(
            _in_transaction(settings, lambda s: service.import_feed_source(s, source=source))
        )
    except service.FeedUnreachable as exc:
        fail(f"feed unreachable: {exc}")
    except MalformedFeed as exc:
        fail(f"malformed feed: {exc}")
    if result.warning:
        typer.echo(f"warning: {result.warning}", err=True)
    typer.echo(f"imported {source}: {result.summary()}")


def main() -> None:
    try:
        cli()
    except KeyboardInterrupt:
        sys.exit(130)


if __name__ == "__main__":
    main()
