"""Public archive pages: GET /archive, /archive/{id}-{slug}, /archive/feed.xml (cacheable)."""

from __future__ import annotations

import re
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request
from fastapi.responses import HTMLResponse, Response

from app import openapi
from app.archive import service
from app.deps import MAX_DB_INT, SessionDep, SettingsDep
from app.digests.render import article_categories, format_date
from app.i18n import translate
from app.web.templates import render_page, request_language, site_link, templates

router = APIRouter(tags=["public pages"])

# Pages change when a digest is sent: a few minutes of caching costs nothing; `ETag` makes the
# check after that a 304. Vary: the language comes from Accept-Language when `lang` is absent.
CACHE_CONTROL = "public, max-age=300"
ATOM = "application/atom+xml"
_ISSUE = re.compile(r"^([0-9]{1,10})(?:-[a-z0-9-]*)?$")
NOT_MODIFIED: dict[str, Any] = {"description": "Not modified since the ETag in If-None-Match"}
DISABLED = openapi.html_page("ARCHIVE_ENABLED is off, or no such public issue (a page)")
PAGE: dict[int | str, dict[str, Any]] = {304: NOT_MODIFIED, 404: DISABLED}


def _cacheable(request: Request, response: Response) -> Response:
    tag = service.etag(response.body)
    headers = {"ETag": tag, "Cache-Control": CACHE_CONTROL, "Vary": "Accept-Language"}
    if tag in request.headers.get("if-none-match", ""):
        return Response(status_code=304, headers=headers)
    response.headers.update(headers)
    return response


def _not_found(request: Request, lang: str) -> HTMLResponse:
    return render_page(
        request,
        "message.html",
        lang=lang,
        status_code=404,
        title=translate(lang, "Issue not found"),
        body=translate(lang, "This issue does not exist or is not public."),
        site_link=site_link(request.app.state.settings, lang),
    )


@router.get("/archive", response_class=HTMLResponse, responses=PAGE)
async def archive(
    request: Request,
    session: SessionDep,
    settings: SettingsDep,
    page: Annotated[int, Query(ge=1, le=MAX_DB_INT // service.PAGE_SIZE)] = 1,
    lang: str | None = None,
) -> Response:
    """The sent digests, newest first, 20 a page, each with its date, subject and titles."""
    language = request_language(request, lang)
    if not settings.archive_enabled:
        return _not_found(request, language)
    issues, total = await service.archive_page(session, page=page)
    pages = max(1, -(-total // service.PAGE_SIZE))
    page_view = render_page(
        request,
        "archive.html",
        lang=language,
        issues=[
            {
                "path": issue.path,
                "subject": issue.subject(language),
                "date": format_date(issue.date, language),
                "iso_date": issue.date.date().isoformat(),
                "titles": [a.title for a in issue.articles],
            }
            for issue in issues
        ],
        page=page,
        pages=pages,
    )
    return _cacheable(request, page_view)


@router.get("/archive/feed.xml", responses={200: {"content": {ATOM: {}}}, **PAGE})
async def archive_feed(request: Request, session: SessionDep, settings: SettingsDep) -> Response:
    """An Atom feed of the last 50 issues; each entry's id is stable (its digest id)."""
    language = request_language(request)
    if not settings.archive_enabled:
        return _not_found(request, language)
    issues, _ = await service.archive_page(session, page=1, per_page=service.FEED_ENTRIES)
    base = settings.public_base
    newest = service.newest(issues)
    body = templates.get_template("archive_feed.xml").render(
        site_name=settings.brand_name,
        base=base,
        lang=language,
        feed_id=f"{base}/archive/feed.xml",
        updated=(newest.isoformat() if newest else "1970-01-01T00:00:00+00:00"),
        entries=[
            {
                "id": f"{base}/archive/{issue.id}",
                "url": f"{base}{issue.path}",
                "title": issue.subject(language),
                "updated": issue.sent_at.isoformat(),
                "articles": issue.articles,
            }
            for issue in issues
        ],
    )
    return _cacheable(request, Response(body, media_type=ATOM))


@router.get("/archive/{issue}", response_class=HTMLResponse, responses=PAGE)
async def archived_digest(
    request: Request,
    issue: str,
    session: SessionDep,
    settings: SettingsDep,
    lang: str | None = None,
) -> Response:
    """One sent digest as a web page, from its frozen copy: no reader's name, no unsubscribe
    link (a signup link instead), article links straight to the site (no click counted)."""
    language = request_language(request, lang)
    match = _ISSUE.match(issue)
    if not settings.archive_enabled or match is None or int(match.group(1)) > MAX_DB_INT:
        return _not_found(request, language)
    try:
        found = await service.archived_issue(session, digest_id=int(match.group(1)))
    except service.NotArchived:
        return _not_found(request, language)
    page_view = render_page(
        request,
        "archive_issue.html",
        lang=language,
        subject=found.subject(language),
        date=format_date(found.date, language),
        canonical=f"{settings.public_base}{found.path}",
        articles=[
            {
                "title": a.title,
                "url": a.url,
                "date": format_date(a.published_at, language) if a.published_at else "",
                "categories": article_categories(a),
                "summary": a.summary or "",
            }
            for a in found.articles
        ],
    )
    return _cacheable(request, page_view)
