"""ASGI middleware: request size limit, CORS for the public signup endpoints only, security headers."""

from __future__ import annotations

import asyncio
import json
import re
import time
from collections.abc import Callable, Sequence
from typing import Any

from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException
from starlette.middleware.cors import CORSMiddleware
from starlette.requests import ClientDisconnect
from starlette.types import ASGIApp, Message, Receive, Scope, Send


def field_error(*loc: str | int, message: str, value: object) -> RequestValidationError:
    """A 422 naming one request field, shaped like FastAPI's own validation errors, for checks
    made after parsing (an address's syntax, an unknown id)."""
    return RequestValidationError(
        [{"type": "value_error", "loc": ("body", *loc), "msg": message, "input": value}]
    )


class BodySizeLimit:
    """413 for bodies over the limit, whether announced by Content-Length or streamed."""

    def __init__(self, app: ASGIApp, *, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        for name, value in scope.get("headers", []):
            if name == b"content-length":
                try:
                    too_big = int(value) > self.max_bytes
                except ValueError:
                    too_big = True
                if too_big:
                    await _too_large(send, self.max_bytes)
                    return
        seen = 0
        response_started = False

        async def limited_receive() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_bytes:
                    raise _BodyTooLarge(self.max_bytes)
            return message

        async def tracking_send(message: Message) -> None:
            nonlocal response_started
            if message["type"] == "http.response.start":
                response_started = True
            await send(message)

        try:
            await self.app(scope, limited_receive, tracking_send)
        except _BodyTooLarge:
            if not response_started:
                await _too_large(send, self.max_bytes)


class _BodyTooLarge(HTTPException):
    # An HTTPException, so that FastAPI's body parsing re-raises it instead of turning it into
    # "400 error parsing the body", and Starlette's handler answers 413 if nothing else does.
    def __init__(self, max_bytes: int) -> None:
        super().__init__(413, f"request body too large (limit {max_bytes} bytes)")


async def _too_large(send: Send, limit: int) -> None:
    body = json.dumps({"detail": f"request body too large (limit {limit} bytes)"}).encode()
    await send(
        {
            "type": "http.response.start",
            "status": 413,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


class ScopedCORS:
    """CORS only on the public signup endpoints: the editor API stays same-origin."""

    def __init__(self, app: ASGIApp, *, paths: Sequence[str], origins: Sequence[str]) -> None:
        self.app = app
        self.paths = tuple(paths)
        self.cors = CORSMiddleware(
            app,
            allow_origins=list(origins),
            allow_methods=["GET", "POST"],
            allow_headers=["Content-Type", "Accept-Language"],
            allow_credentials=False,
            max_age=600,
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"] in self.paths:
            await self.cors(scope, receive, send)
        else:
            await self.app(scope, receive, send)


class MinimumAnswerTime:
    """Successful signups are answered no sooner than `seconds` after the request arrived.

    A new address costs an insert and an outbox row, a subscribed one almost nothing: without a
    floor, response time would tell them apart. The wait happens here, after the handler and
    its transaction are done, so no database lock is held while it lasts."""

    def __init__(self, app: ASGIApp, *, paths: Sequence[str], seconds: Callable[[], float]) -> None:
        self.app = app
        self.paths = tuple(paths)
        self.seconds = seconds

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "POST" or scope["path"] not in self.paths:
            await self.app(scope, receive, send)
            return
        started = time.monotonic()

        async def delayed_send(message: Message) -> None:
            if message["type"] == "http.response.start" and message["status"] < 300:
                remaining = self.seconds() - (time.monotonic() - started)
                if remaining > 0:
                    await asyncio.sleep(remaining)
            await send(message)

        await self.app(scope, receive, delayed_send)


# The policy of every page: our own styles and forms, no script, no framing.
PAGE_CSP = (
    "default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'none'; "
    "form-action 'self'; base-uri 'none'; frame-ancestors 'none'"
)
# A page that runs a script of ours (from /static: no inline script) sets this one itself.
PAGE_CSP_OWN_SCRIPTS = PAGE_CSP.replace("script-src 'none'", "script-src 'self'")


class SecurityHeaders:
    """CSP, nosniff, no referrer (links carry tokens) and a frame policy: only the news site may
    embed the signup form; nothing else may be framed."""

    def __init__(self, app: ASGIApp, *, frame_origins: Sequence[str]) -> None:
        self.app = app
        embed = " ".join(["'self'", *frame_origins])
        self.csp_embeddable = (
            "default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'none'; "
            f"form-action 'self'; base-uri 'none'; frame-ancestors {embed}"
        ).encode()
        self.csp = PAGE_CSP.encode()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path: str = scope["path"]
        embeddable = path == "/subscribe"
        docs = path in ("/docs", "/redoc")

        async def with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                headers.append((b"x-content-type-options", b"nosniff"))
                headers.append((b"referrer-policy", b"no-referrer"))
                # A response that sets its own policy (the digest preview) keeps it.
                own_csp = next(
                    (value for name, value in headers if name == b"content-security-policy"), None
                )
                if not docs and own_csp is None:
                    headers.append(
                        (
                            b"content-security-policy",
                            self.csp_embeddable if embeddable else self.csp,
                        )
                    )
                if own_csp is not None and b"frame-ancestors 'self'" in own_csp:
                    # The desk frames its own previews (compose, digest page); nothing else may.
                    headers.append((b"x-frame-options", b"SAMEORIGIN"))
                elif not embeddable:
                    headers.append((b"x-frame-options", b"DENY"))
                message["headers"] = headers
            await send(message)

        await self.app(scope, receive, with_headers)


HTTP_METHODS = ("get", "put", "post", "delete", "options", "head", "patch", "trace")


def methods_by_path(openapi: dict[str, Any]) -> list[tuple[re.Pattern[str], list[str]]]:
    """Each documented path as a pattern, with the methods it supports; the most specific path
    first (a literal path is a resource of its own, not one value of a `{param}`)."""
    templates = sorted(openapi.get("paths", {}).items(), key=lambda pair: pair[0].count("{"))
    table = []
    for template, item in templates:
        pattern = "".join(
            "[^/]+" if part.startswith("{") else re.escape(part)
            for part in re.split(r"(\{[^}]+\})", template)
        )
        methods = {m.upper() for m in item if m in HTTP_METHODS}
        if "GET" in methods:
            methods.add("HEAD")  # HeadAsGet answers it
        table.append((re.compile(pattern), sorted(methods)))
    return table


class FullAllowHeader:
    """A 405 lists every method the resource supports (RFC 9110, 15.5.6). The router answers
    with the methods of the first route whose path matched, and GET /x and POST /x are two
    routes: `OPTIONS /subscribe` said `Allow: GET`. The OpenAPI document knows them all."""

    def __init__(self, app: ASGIApp, *, openapi: Callable[[], dict[str, Any]]) -> None:
        self.app = app
        self.openapi = openapi
        self._table: list[tuple[re.Pattern[str], list[str]]] | None = None

    def allowed(self, path: str) -> list[str] | None:
        if self._table is None:
            self._table = methods_by_path(self.openapi())
        for pattern, methods in self._table:
            if pattern.fullmatch(path):
                return methods
        return None  # not documented (static files, /docs): the router's own answer stands

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_allow(message: Message) -> None:
            if message["type"] == "http.response.start" and message["status"] == 405:
                methods = self.allowed(scope["path"])
                if methods:
                    headers = [
                        (name, value)
                        for name, value in message.get("headers", [])
                        if name.lower() != b"allow"
                    ]
                    headers.append((b"allow", ", ".join(methods).encode()))
                    message["headers"] = headers
            await send(message)

        await self.app(scope, receive, send_with_allow)


class HeadAsGet:
    """`HEAD` of a page is its `GET` without the body (RFC 9110, 9.3.2: a server that answers
    GET answers HEAD). FastAPI routes declare GET alone, so HEAD /subscribe, /archive or an
    unsubscribe link answered 405: a link checker or a mail scanner that tries a link with HEAD
    was told it is dead. A HEAD the router refuses runs again as GET (GETs change nothing here:
    the mail-scanner rule) and only its status and headers go out. Routes with their own HEAD
    (the click redirect) are left alone."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "HEAD":
            await self.app(scope, receive, send)
            return
        refused = False

        async def unless_refused(message: Message) -> None:
            nonlocal refused
            if message["type"] == "http.response.start" and message["status"] == 405:
                refused = True
            if not refused:
                await send(message)

        await self.app(scope, receive, unless_refused)
        if not refused:
            return

        cut = False

        async def without_body(message: Message) -> None:
            nonlocal cut
            if message["type"] != "http.response.body":
                await send(message)
                return
            if cut:
                raise OSError("HEAD: the body is not sent")
            await send({"type": "http.response.body", "body": b"", "more_body": False})
            if message.get("more_body", False):
                # A streamed body (an export of the whole list): stop making it, as when a
                # client goes away (Starlette's streaming ends on the OSError of its send).
                cut = True
                raise OSError("HEAD: the body is not sent")

        try:
            await self.app({**scope, "method": "GET"}, receive, without_body)
        except (OSError, ClientDisconnect):
            if not cut:
                raise
