"""create_app(): settings, database, mailer, worker, routers, middleware and error handlers."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from fastapi.staticfiles import StaticFiles

from app import keys, metrics, monitoring, openapi
from app.archive import routes as archive_routes
from app.articles import routes as article_routes
from app.audit import routes as audit_routes
from app.background import run_background
from app.bounces import routes as bounce_routes
from app.clicks import routes as click_routes
from app.clicks.recorder import ClickRecorder
from app.clicks.service import LinkCache
from app.config import ClickTracking, Settings, get_settings
from app.db import make_engine, make_sessionmaker
from app.desk import routes as desk_routes
from app.digests import routes as digest_routes
from app.health import RelayProbe
from app.http import (
    BodySizeLimit,
    FullAllowHeader,
    HeadAsGet,
    MinimumAnswerTime,
    ScopedCORS,
    SecurityHeaders,
)
from app.i18n import translate
from app.kinds import delivery_kinds
from app.mail.transport import make_mailer
from app.ratelimit import RateLimited, RateLimiter
from app.schedules import routes as schedule_routes
from app.security import Tokens
from app.subscribers import routes as subscriber_routes
from app.subscriptions import routes as subscription_routes
from app.web.templates import render_page, request_language

log = logging.getLogger("app")

PUBLIC_CORS_PATHS = ("/subscribe", "/api/v1/subscriptions")


def create_app(settings: Settings | None = None, *, run_worker: bool = False) -> FastAPI:
    settings = settings or get_settings()

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        engine = make_engine(settings.database_url)
        app.state.engine = engine
        app.state.sessionmaker = make_sessionmaker(engine)
        # Address hashes need the key stored in the database. Unreachable now: the first request
        # that needs it loads it (app.deps.get_tokens), so /healthz can say what is wrong.
        await keys.ensure_hashing_key(app.state.tokens, engine)
        app.state.mailer = make_mailer(settings)
        app.state.relay_probe = RelayProbe(
            app.state.mailer, every=settings.health_relay_probe_seconds
        )
        if not settings.uses_smtp:
            log.info(
                "SMTP_HOST is not set: mail is written to the Maildir %s", settings.maildir_path
            )
        stop = asyncio.Event()
        background: asyncio.Task[None] | None = None
        # Clicks are counted by every process that answers /r/ (not only the worker's).
        clicks: asyncio.Task[None] | None = None
        if settings.track_clicks != ClickTracking.off or settings.track_opens:
            recorder = ClickRecorder(
                settings, app.state.sessionmaker, app.state.tokens, app.state.click_links
            )
            app.state.click_recorder = recorder
            clicks = asyncio.create_task(recorder.run(stop), name="clicks")
        if run_worker:
            background = asyncio.create_task(
                run_background(
                    settings, app.state.sessionmaker, app.state.mailer, app.state.tokens, stop
                ),
                name="worker",
            )
        try:
            with metrics.recording_into(app.state.metrics):
                yield
        finally:
            stop.set()
            if background is not None:
                await background
            if clicks is not None:
                await clicks  # its last flush counts every click still held
                app.state.click_recorder = None
            await engine.dispose()

    app = FastAPI(
        title="Newsletter",
        version="0.1.0",
        description="Self-hosted newsletter service: double opt-in signup, digests of recent "
        "articles, batched SMTP delivery, one-click unsubscribe.",
        lifespan=lifespan,
        docs_url=None,  # served by openapi.install_docs, with local assets
        redoc_url=None,  # ReDoc would load from a CDN: Swagger UI is enough
    )
    app.state.settings = settings
    app.state.metrics = metrics.Metrics()
    app.state.tokens = Tokens.from_settings(settings)  # hashing key: loaded by the lifespan
    app.state.kinds = delivery_kinds(settings, app.state.tokens)
    app.state.click_links = LinkCache()
    app.state.click_recorder = None  # started by the lifespan unless TRACK_CLICKS=off
    app.state.signup_limiter = RateLimiter(
        settings.rate_limit_signup, settings.rate_limit_storage_uri
    )
    app.state.desk_login_limiter = RateLimiter(
        settings.rate_limit_desk_login, settings.rate_limit_storage_uri
    )

    app.include_router(click_routes.router)  # first: the hot path matches at once
    app.include_router(subscription_routes.pages)
    app.include_router(subscription_routes.api)
    app.include_router(subscriber_routes.router)
    app.include_router(bounce_routes.router)
    app.include_router(article_routes.router)
    app.include_router(digest_routes.router)
    app.include_router(archive_routes.router)
    app.include_router(schedule_routes.router)
    app.include_router(audit_routes.router)
    app.include_router(monitoring.router)
    desk_routes.install(app)
    openapi.install(app)
    openapi.install_docs(app)
    app.mount(
        "/static", StaticFiles(directory=Path(__file__).parent / "web" / "static"), name="static"
    )

    @app.exception_handler(RateLimited)
    async def rate_limited(request: Request, exc: RateLimited) -> Response:
        headers = {"Retry-After": str(exc.retry_after)}
        if request.url.path.startswith("/api/"):
            return JSONResponse(
                {"detail": "too many requests, retry later"}, status_code=429, headers=headers
            )
        lang = request_language(request)
        response = render_page(
            request,
            "message.html",
            lang=lang,
            status_code=429,
            title=translate(lang, "Too many requests"),
            body=translate(lang, "Please try again in a few minutes."),
        )
        response.headers.update(headers)
        return response

    @app.get("/robots.txt", include_in_schema=False)
    async def robots() -> PlainTextResponse:
        return PlainTextResponse(
            "User-agent: *\nDisallow: /confirm/\nDisallow: /unsubscribe/\nDisallow: /preferences/\n"
            "Disallow: /r/\n"
        )

    # Outermost first: size limit, HEAD as GET, then CORS (only the public signup endpoints),
    # then headers.
    app.add_middleware(click_routes.ClickFastPath, state=app.state)
    app.add_middleware(FullAllowHeader, openapi=lambda: app.openapi())
    app.add_middleware(SecurityHeaders, frame_origins=settings.site_origin_list)
    app.add_middleware(ScopedCORS, paths=PUBLIC_CORS_PATHS, origins=settings.site_origin_list)
    app.add_middleware(
        MinimumAnswerTime,
        paths=("/subscribe", "/api/v1/subscriptions"),
        seconds=lambda: app.state.settings.signup_min_answer_ms / 1000,
    )
    app.add_middleware(HeadAsGet)
    app.add_middleware(BodySizeLimit, max_bytes=settings.max_request_bytes)
    return app
