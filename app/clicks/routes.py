"""GET /r/{token}: a digest's tracked link. Counts the click (batched) and redirects to the
article URL in the digest's frozen copy, never to a URL from the token: no open redirect.

Two doors, one rule: `ClickFastPath` (pure ASGI, innermost middleware) answers a valid link of
a digest whose links are in memory without FastAPI's routing and dependencies; everything else
(the first click of a digest, a bad link) reaches `follow_link`. Both call `redirect_to` and
`count_click`; tests/clicks hold their answers equal.
"""

from __future__ import annotations

import base64
from typing import Any
from urllib.parse import quote

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from starlette.datastructures import State
from starlette.types import ASGIApp, Receive, Scope, Send

from app import metrics, openapi
from app.clicks import scanners
from app.clicks.recorder import ClickRecorder
from app.clicks.service import Click, LinkCache
from app.config import ClickTracking
from app.i18n import translate
from app.models import utcnow
from app.security import ClickRef, TokenError, Tokens
from app.web.templates import render_page, request_language, site_link

router = APIRouter(tags=["public pages"])

PREFIX = "/r/"
LOCATION_SAFE = ":/%#?=@[]!$&'()*+,;"  # starlette.responses.RedirectResponse's
# no-store: every click must reach us, not a cache on the way.
REDIRECT_HEADERS = {"Cache-Control": "no-store"}
REDIRECT: dict[int | str, dict[str, Any]] = {
    302: {
        "description": "To the article (the URL stored with the digest)",
        "headers": {"Location": {"schema": {"type": "string", "format": "uri"}}},
    },
    400: openapi.html_page("A tampered, truncated or unknown link: a page with a link to the site"),
}


def redirect_to(ref: ClickRef, urls: dict[int, str]) -> str | None:
    return urls.get(ref.position)


def count_click(state: State, ref: ClickRef, method: str, user_agent: str | None) -> None:
    recorder: ClickRecorder | None = state.click_recorder
    if recorder is not None and state.settings.track_clicks != ClickTracking.off:
        reason = scanners.agent_reason(method, user_agent)
        recorder.add(Click(ref.delivery_id, ref.digest_id, ref.position, utcnow(), reason))
    metrics.count_click_redirect()


@router.head(
    "/r/{token}",
    status_code=302,
    response_class=RedirectResponse,
    responses=REDIRECT,
    operation_id="follow_link_head",
)
@router.get(
    "/r/{token}",
    status_code=302,
    response_class=RedirectResponse,
    responses=REDIRECT,
    operation_id="follow_link",
)
async def follow_link(request: Request, token: str) -> Response:
    """A reader's click on an article of a digest. `HEAD` and scanners are counted apart."""
    state = request.app.state
    tokens: Tokens = state.tokens
    links: LinkCache = state.click_links
    try:
        ref = tokens.read_click_token(token)
    except TokenError:
        return _bad_link(request)
    urls = links.known(ref.digest_id)
    if urls is None:
        async with state.sessionmaker() as session:
            urls = await links.load(session, ref.digest_id)
    url = redirect_to(ref, urls)
    if url is None:
        return _bad_link(request)
    count_click(state, ref, request.method, request.headers.get("user-agent"))
    return RedirectResponse(url, status_code=302, headers=REDIRECT_HEADERS)


def _bad_link(request: Request) -> HTMLResponse:
    lang = request_language(request)
    return render_page(
        request,
        "message.html",
        lang=lang,
        status_code=400,
        title=translate(lang, "Invalid link"),
        body=translate(lang, "This link is not valid: it may have been cut or changed."),
        site_link=site_link(request.app.state.settings, lang),
    )


class ClickFastPath:
    """The hot path of `follow_link`, for a valid link whose digest's links are in memory."""

    def __init__(self, app: ASGIApp, *, state: State) -> None:
        self.app = app
        self.state = state

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path: str = scope.get("path", "")
        if (
            scope["type"] == "http"
            and path.startswith(PREFIX)
            and scope["method"] in ("GET", "HEAD")
        ):
            location = self._location(scope, path[len(PREFIX) :])
            if location is not None:
                await send(
                    {
                        "type": "http.response.start",
                        "status": 302,
                        "headers": [
                            (b"location", location.encode("latin-1")),
                            (b"cache-control", b"no-store"),
                            (b"content-length", b"0"),
                        ],
                    }
                )
                await send({"type": "http.response.body", "body": b""})
                return
        await self.app(scope, receive, send)

    def _location(self, scope: Scope, token: str) -> str | None:
        tokens: Tokens = self.state.tokens
        links: LinkCache = self.state.click_links
        try:
            ref = tokens.read_click_token(token)
        except TokenError:
            return None
        urls = links.known(ref.digest_id)
        url = redirect_to(ref, urls) if urls is not None else None
        if url is None:
            return None  # the route answers (and loads the digest's links)
        user_agent = next(
            (v.decode("latin-1") for k, v in scope["headers"] if k == b"user-agent"), None
        )
        count_click(self.state, ref, scope["method"], user_agent)
        return quote(url, safe=LOCATION_SAFE)  # as RedirectResponse writes it


# A transparent 1x1 GIF.
PIXEL = base64.b64decode("R0lGODlhAQABAIAAAAAAAP///yH5BAEAAAAALAAAAAABAAEAAAIBRAA7")
OPEN: dict[int | str, dict[str, Any]] = {
    200: {"content": {"image/gif": {}}, "description": "A transparent 1x1 image"},
    400: openapi.html_page("A tampered or truncated link (a page)"),
}


@router.head("/o/{token}", response_class=Response, responses=OPEN, operation_id="open_pixel_head")
@router.get("/o/{token}", response_class=Response, responses=OPEN, operation_id="open_pixel")
async def open_pixel(request: Request, token: str) -> Response:
    """TRACK_OPENS: a copy's open pixel. Counted as an open, whoever fetched it (Apple Mail
    Privacy Protection and image proxies fetch every copy's images); a HEAD counts nothing."""
    state = request.app.state
    tokens: Tokens = state.tokens
    try:
        ref = tokens.read_open_token(token)
    except TokenError:
        return _bad_link(request)
    recorder: ClickRecorder | None = state.click_recorder
    if recorder is not None and state.settings.track_opens and request.method == "GET":
        recorder.add(Click(ref.delivery_id, ref.digest_id, ref.position, utcnow(), None))
    return Response(PIXEL, media_type="image/gif", headers=REDIRECT_HEADERS)
