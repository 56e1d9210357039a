"""GET /r/{token}: a digest's tracked link. Counts the click (batched) and redirects to the
article URL in the digest's frozen copy, never to a URL from the token: no open redirect."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from app import metrics, openapi
from app.clicks import scanners
from app.clicks.recorder import ClickRecorder
from app.clicks.service import Click, LinkCache
from app.models import utcnow
from app.security import TokenError, Tokens
from app.web.i18n import STRINGS, request_language
from app.web.templates import render_page

router = APIRouter(tags=["public pages"])

REDIRECT: dict[int | str, dict[str, Any]] = {
    302: {
        "description": "To the article (the URL stored with the digest)",
        "headers": {"Location": {"schema": {"type": "string", "format": "uri"}}},
    },
    400: openapi.html_page("A tampered, truncated or unknown link: a page with a link to the site"),
}


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
    tokens: Tokens = request.app.state.tokens
    links: LinkCache = request.app.state.click_links
    try:
        ref = tokens.read_click_token(token)
    except TokenError:
        return _bad_link(request)
    urls = links.known(ref.digest_id)
    if urls is None:
        async with request.app.state.sessionmaker() as session:
            urls = await links.load(session, ref.digest_id)
    url = urls.get(ref.position)
    if url is None:
        return _bad_link(request)
    recorder: ClickRecorder | None = request.app.state.click_recorder
    if recorder is not None:
        reason = scanners.agent_reason(request.method, request.headers.get("user-agent"))
        recorder.add(Click(ref.delivery_id, ref.digest_id, ref.position, utcnow(), reason))
    metrics.count_click_redirect()
    # no-store: every click must reach us, not a cache on the way.
    return RedirectResponse(url, status_code=302, headers={"Cache-Control": "no-store"})


def _bad_link(request: Request) -> HTMLResponse:
    lang = request_language(request)
    t = STRINGS[lang]
    return render_page(
        request,
        "message.html",
        lang=lang,
        status_code=400,
        title=t["invalid_title"],
        body=t["click_invalid_body"],
        site_link=True,
    )
