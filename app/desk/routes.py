"""The desk: server-rendered pages over the same services as the editor API. Signed in with a
server-side session (cookie), every state-changing form carries the session's CSRF token."""

from __future__ import annotations

import secrets
import tempfile
from collections.abc import AsyncIterator
from datetime import datetime, timedelta, tzinfo
from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, Depends, File, Form, Query, Request, UploadFile
from fastapi.encoders import jsonable_encoder
from fastapi.responses import (
    HTMLResponse,
    JSONResponse,
    RedirectResponse,
    Response,
    StreamingResponse,
)
from fastapi.templating import Jinja2Templates
from pydantic import ValidationError

from app import editors as api_keys
from app import i18n
from app.articles import service as articles
from app.articles.feeds import MalformedFeed
from app.audit import service as audit_log
from app.clicks import service as click_counts
from app.deps import MAX_DB_INT, ClientIpDep, SessionDep, SettingsDep, TokensDep
from app.desk import accounts
from app.desk import service as desk
from app.desk.i18n import DeskText, format_number, format_when
from app.digests import service as digests
from app.digests.numbers import clicks_csv, digest_numbers
from app.digests.render import digest_subject, preview_digest
from app.http import PAGE_CSP_OWN_SCRIPTS
from app.models import Cadence, Language, SubscriberStatus
from app.schedules import service as schedules
from app.schedules.schemas import ScheduleCreate, ScheduleUpdate
from app.subscribers import csvfile
from app.subscribers import service as subscribers
from app.subscriptions import service as subscriptions

router = APIRouter(prefix="/desk", include_in_schema=False)
templates = Jinja2Templates(directory=Path(__file__).parent / "templates")

SESSION_COOKIE = "desk_session"
LOGIN_CSRF_COOKIE = "desk_login_csrf"
LANG_COOKIE = "desk_lang"
PAGE_SIZE = 50
IMPORT_CHUNK = 5000
# The preview is the email itself (its inline styles and remote images show, nothing runs),
# framed by the desk's own compose and digest pages only.
PREVIEW_CSP = (
    "default-src 'none'; img-src http: https: data:; style-src 'unsafe-inline'; sandbox; "
    "frame-ancestors 'self'"
)

Offset = Annotated[int, Query(ge=0, le=MAX_DB_INT)]
DigestId = Annotated[int, Query(ge=1, le=MAX_DB_INT)]


class SignInRequired(Exception):
    pass


class Forbidden(Exception):
    def __init__(self, key: str = "forbidden_body") -> None:
        super().__init__(key)
        self.key = key


class NotFound(Exception):
    pass


# --- Language, pages -----------------------------------------------------------------------------


def desk_language(request: Request) -> str:
    """?lang= (the language links), else the editor's last choice, else their browser's
    languages (an editor's browser speaks for them, whatever LANGUAGE_FROM_BROWSER says for
    readers), else DEFAULT_LANGUAGE."""
    return i18n.choose_language(
        request.query_params.get("lang"),
        request.cookies.get(LANG_COOKIE),
        accept_language=request.headers.get("accept-language"),
        default=request.app.state.settings.default_language,
        negotiate=True,
    )


def desk_text(request: Request) -> DeskText:
    return DeskText(desk_language(request))


def _secure(request: Request) -> bool:
    return bool(request.app.state.settings.public_url.lower().startswith("https://"))


def page(
    request: Request,
    name: str,
    *,
    signed: accounts.SignedIn | None,
    status_code: int = 200,
    **context: Any,
) -> HTMLResponse:
    lang = desk_language(request)
    response = templates.TemplateResponse(
        request,
        name,
        {
            "t": DeskText(lang),
            "lang": lang,
            "site_name": request.app.state.settings.brand_name,
            "me": signed.editor if signed else None,
            "csrf": signed.session.csrf_token if signed else "",
            "num": lambda value: format_number(value, lang),
            "when": lambda value: format_when(value, lang),
            "local": lambda value: format_when(value, lang, request.app.state.settings.desk_zone),
            "zone": request.app.state.settings.desk_timezone,
            "path": request.url.path,
            **context,
        },
        status_code=status_code,
    )
    response.headers["Content-Security-Policy"] = PAGE_CSP_OWN_SCRIPTS
    response.headers["Cache-Control"] = "no-store"
    chosen = request.query_params.get("lang")
    if chosen and i18n.is_available(chosen):  # the language links remember the choice
        response.set_cookie(
            LANG_COOKIE, chosen, max_age=365 * 86400, path="/desk", samesite="lax",
            httponly=True, secure=_secure(request),
        )  # fmt: skip
    return response


def redirect(url: str) -> RedirectResponse:
    return RedirectResponse(url, status_code=303)


# --- Sign-in, CSRF -------------------------------------------------------------------------------


async def signed_in(request: Request, session: SessionDep) -> accounts.SignedIn:
    settings = request.app.state.settings
    found = await accounts.current_session(
        session,
        token=request.cookies.get(SESSION_COOKIE, ""),
        idle=timedelta(minutes=settings.desk_session_idle_minutes),
    )
    if found is None:
        raise SignInRequired
    return found


SignedInDep = Annotated[accounts.SignedIn, Depends(signed_in)]


async def checked_form(
    request: Request, session: SessionDep, signed: SignedInDep
) -> accounts.SignedIn:
    """A state-changing request: signed in, the form carries the session's CSRF token, and the
    action is in the audit log under the editor's name, in the request's own transaction (an
    action that fails leaves no row). The target: a path parameter ending in `_id`, never an
    address (personal data)."""
    form = await request.form()
    presented = form.get("csrf_token")
    if not accounts.csrf_valid(
        signed.session.csrf_token, presented if isinstance(presented, str) else None
    ):
        raise Forbidden
    route = request.scope.get("route")
    target_type = target_id = None
    for name, value in request.path_params.items():
        if name.endswith("_id"):
            target_type, target_id = name.removesuffix("_id"), value
    action = request.path_params.get("action")
    audit_log.record(
        session,
        actor=f"editor:{signed.editor.email}",
        source="desk",
        action=f"desk_{getattr(route, 'name', 'action')}" + (f"_{action}" if action else ""),
        target_type=target_type,
        target_id=target_id,
        detail=f"POST {request.url.path}",
    )
    return signed


ChangeDep = Annotated[accounts.SignedIn, Depends(checked_form)]


def require_admin(signed: accounts.SignedIn) -> None:
    if not signed.editor.is_admin:
        raise Forbidden("admin_only")


@router.get("/login")
async def login_form(request: Request) -> HTMLResponse:
    token = request.cookies.get(LOGIN_CSRF_COOKIE) or secrets.token_urlsafe(32)
    response = page(request, "login.html", signed=None, login_csrf=token)
    response.set_cookie(
        LOGIN_CSRF_COOKIE, token, path="/desk", httponly=True, samesite="lax",
        secure=_secure(request),
    )  # fmt: skip
    return response


@router.post("/login")
async def login(
    request: Request,
    session: SessionDep,
    ip: ClientIpDep,
    email: Annotated[str, Form(max_length=320)] = "",
    password: Annotated[str, Form(max_length=accounts.MAX_PASSWORD_LENGTH)] = "",
    csrf_token: Annotated[str, Form(max_length=100)] = "",
) -> Response:
    expected = request.cookies.get(LOGIN_CSRF_COOKIE, "")
    if not expected or not accounts.csrf_valid(expected, csrf_token):
        raise Forbidden
    limiter = request.app.state.desk_login_limiter
    await limiter.hit("desk-login-ip", ip)
    await limiter.hit("desk-login-account", email.strip().lower()[:320])
    editor = await accounts.authenticate(session, email=email, password=password)
    if editor is None:
        # The same answer whether the address is unknown or the password wrong.
        return page(
            request, "login.html", signed=None, login_csrf=expected,
            login_error=True, email=email,
        )  # fmt: skip
    token = await accounts.start_session(session, editor=editor)
    response = redirect("/desk")
    response.set_cookie(
        SESSION_COOKIE, token, path="/desk", httponly=True, samesite="lax",
        secure=_secure(request),
    )  # fmt: skip
    response.delete_cookie(LOGIN_CSRF_COOKIE, path="/desk")
    return response


@router.post("/logout")
async def logout(request: Request, session: SessionDep, _signed: ChangeDep) -> Response:
    await accounts.end_session(session, token=request.cookies.get(SESSION_COOKIE, ""))
    response = redirect("/desk/login?out=1")
    response.delete_cookie(SESSION_COOKIE, path="/desk")
    return response


# --- Overview ------------------------------------------------------------------------------------


@router.get("")
async def overview(
    request: Request, session: SessionDep, settings: SettingsDep, signed: SignedInDep
) -> HTMLResponse:
    rows, _ = await digests.list_digests_with_progress(session, limit=5, offset=0)
    days = await desk.signups_per_day(session)
    peak = max([1, *(max(d.signups, d.unsubscribes) for d in days)])
    return page(
        request,
        "overview.html",
        signed=signed,
        statuses=await desk.subscribers_by_status(session),
        days=days,
        peak=peak,
        digests=rows,
        clicks=await click_counts.clicks_of_digests(
            session, digest_ids=[d.id for d, _ in rows if d.id is not None]
        ),
        problems=await desk.problems(session, settings=settings),
    )


# --- Articles ------------------------------------------------------------------------------------


async def _articles_page(
    request: Request,
    session: SessionDep,
    signed: accounts.SignedIn,
    *,
    q: str | None,
    offset: int,
    message: str | None = None,
    error: str | None = None,
) -> HTMLResponse:
    items, total = await articles.list_articles(session, limit=PAGE_SIZE, offset=offset, q=q)
    return page(
        request,
        "articles.html",
        signed=signed,
        items=items,
        total=total,
        offset=offset,
        q=q or "",
        page_size=PAGE_SIZE,
        feed_url=request.app.state.settings.feed_url or "",
        message=message,
        error=error,
    )


@router.get("/articles")
async def articles_list(
    request: Request,
    session: SessionDep,
    signed: SignedInDep,
    q: Annotated[str | None, Query(max_length=200)] = None,
    offset: Offset = 0,
) -> HTMLResponse:
    return await _articles_page(request, session, signed, q=q, offset=offset)


@router.post("/articles/refresh")
async def articles_refresh(
    request: Request,
    session: SessionDep,
    settings: SettingsDep,
    signed: ChangeDep,
    url: Annotated[str, Form(max_length=2000)] = "",
) -> HTMLResponse:
    t = desk_text(request)
    url = url.strip() or (settings.feed_url or "")
    try:
        if not url.lower().startswith(("http://", "https://")):
            raise articles.FeedUnreachable("give an http:// or https:// address")
        result = await articles.import_feed_url(
            session, url=url, limits=articles.FeedLimits.from_settings(settings)
        )
    except (articles.FeedUnreachable, MalformedFeed) as exc:
        return await _articles_page(
            request, session, signed, q=None, offset=0, error=t["feed_failed"].format(error=exc)
        )
    message = t["feed_imported"].format(
        created=result.created, updated=result.updated, unchanged=result.unchanged
    )
    return await _articles_page(request, session, signed, q=None, offset=0, message=message)


@router.post("/articles/{article_id}/{action}")
async def article_action(
    request: Request, session: SessionDep, signed: ChangeDep, article_id: int, action: str
) -> Response:
    """Hide, show again or delete: the API's own operations."""
    if action not in ("hide", "unhide", "delete") or not 1 <= article_id <= MAX_DB_INT:
        raise NotFound
    t = desk_text(request)
    try:
        if action == "delete":
            await articles.delete_article(session, article_id=article_id)
        else:
            await articles.set_hidden(session, article_id=article_id, hidden=action == "hide")
    except articles.ArticleNotFound as exc:
        raise NotFound from exc
    except articles.ArticleInSentDigest as exc:
        return await _articles_page(
            request, session, signed, q=None, offset=0, error=t["conflict"].format(detail=exc)
        )
    message = t["article_deleted"] if action == "delete" else None
    return await _articles_page(request, session, signed, q=None, offset=0, message=message)


# --- Compose -------------------------------------------------------------------------------------


@router.get("/compose")
async def compose_form(
    request: Request, session: SessionDep, signed: SignedInDep, offset: Offset = 0
) -> HTMLResponse:
    items, total = await articles.list_articles(
        session, limit=PAGE_SIZE, offset=offset, include_hidden=False
    )
    return page(
        request, "compose.html", signed=signed, items=items, total=total, offset=offset,
        page_size=PAGE_SIZE,
    )  # fmt: skip


@router.post("/compose")
async def compose(request: Request, session: SessionDep, signed: ChangeDep) -> Response:
    form = await request.form()
    picked: list[tuple[int, int, int]] = []
    for index, raw in enumerate(form.getlist("article")):
        if not isinstance(raw, str) or not raw.isdigit() or int(raw) > MAX_DB_INT:
            continue
        order = form.get(f"order_{raw}")
        position = int(order) if isinstance(order, str) and order.isdigit() else 10**6
        picked.append((position, index, int(raw)))
    subject, intro = _per_language(form, "subject", 300), _per_language(form, "intro", 5000)
    t = desk_text(request)
    if picked:
        try:
            digest = await digests.create_digest(
                session,
                subject=subject or None,
                intro=intro or None,
                article_ids=[i for _, _, i in sorted(picked)],
            )
            return redirect(f"/desk/digests/{digest.id}")
        except digests.UnknownArticles as exc:
            error = t["conflict"].format(detail=exc)
    else:
        error = t["no_articles_chosen"]
    items, total = await articles.list_articles(
        session, limit=PAGE_SIZE, offset=0, include_hidden=False
    )
    return page(
        request, "compose.html", signed=signed, status_code=422, items=items, total=total,
        offset=0, page_size=PAGE_SIZE, error=error, subject=subject, intro=intro,
    )  # fmt: skip


def _per_language(form: Any, field: str, limit: int) -> dict[str, str]:
    """`subject_fr`, `subject_en`... as the API's per-language value; blank ones left out (that
    language keeps its default)."""
    values = {}
    for language in ("fr", "en"):
        raw = form.get(f"{field}_{language}")
        if isinstance(raw, str) and raw.strip():
            values[language] = raw.strip()[:limit]
    return values


@router.post("/digests/{digest_id}/edit")
async def digest_edit(
    request: Request, session: SessionDep, signed: ChangeDep, digest_id: int
) -> Response:
    """The draft's subject and introduction per language (PATCH /api/v1/digests/{id})."""
    if not 1 <= digest_id <= MAX_DB_INT:
        raise NotFound
    form = await request.form()
    subject, intro = _per_language(form, "subject", 300), _per_language(form, "intro", 5000)
    try:
        await digests.update_draft(
            session, digest_id=digest_id, subject=subject or None, intro=intro or None
        )
    except digests.DigestNotFound as exc:
        raise NotFound from exc
    except digests.DigestNotDraft as exc:
        return await _digest_page(
            request, session, signed, digest_id, status_code=409,
            error=desk_text(request)["conflict"].format(detail=exc),
        )  # fmt: skip
    return await _digest_page(
        request, session, signed, digest_id, message=desk_text(request)["draft_saved"]
    )


# --- Digests -------------------------------------------------------------------------------------


@router.get("/digests")
async def digests_list(
    request: Request, session: SessionDep, signed: SignedInDep, offset: Offset = 0
) -> HTMLResponse:
    rows, total = await digests.list_digests_with_progress(session, limit=PAGE_SIZE, offset=offset)
    subjects = await digests.articles_of_digests(
        session, digest_ids=[d.id for d, _ in rows if d.id is not None]
    )
    lang = desk_language(request)
    return page(
        request, "digests.html", signed=signed, rows=rows, total=total, offset=offset,
        page_size=PAGE_SIZE,
        subjects={d.id: digest_subject(d, subjects[d.id], lang) for d, _ in rows if d.id},
    )  # fmt: skip


async def _digest(session: SessionDep, digest_id: int) -> tuple[Any, digests.DigestProgress]:
    try:
        return await digests.digest_with_progress(session, digest_id=digest_id)
    except digests.DigestNotFound as exc:
        raise NotFound from exc


async def _digest_page(
    request: Request,
    session: SessionDep,
    signed: accounts.SignedIn,
    digest_id: int,
    *,
    status_code: int = 200,
    message: str | None = None,
    error: str | None = None,
    send_at_value: str | None = None,
) -> HTMLResponse:
    digest, progress = await _digest(session, digest_id)
    items = await digests.digest_articles(session, digest_id=digest_id)
    settings = request.app.state.settings
    return page(
        request,
        "digest.html",
        signed=signed,
        status_code=status_code,
        digest=digest,
        progress=progress,
        items=items,
        subjects={lang.value: digest_subject(digest, items, lang) for lang in Language},
        readers=await desk.confirmed_readers(session) if digest.status == "draft" else 0,
        numbers=(
            None
            if digest.status == "draft"
            else await digest_numbers(
                session, digest=digest, settings=settings, counts=progress.counts, articles=items
            )
        ),
        message=message or _notice(request),
        error=error,
        send_at_value=send_at_value,
    )


def _notice(request: Request) -> str | None:
    """A message named by a redirect (`?done=key`), from the desk's own strings only."""
    key = request.query_params.get("done")
    t = desk_text(request)
    return t.get(f"done_{key}") if key else None


@router.get("/digests/{digest_id}")
async def digest_page(
    request: Request, session: SessionDep, signed: SignedInDep, digest_id: int
) -> HTMLResponse:
    if not 1 <= digest_id <= MAX_DB_INT:
        raise NotFound
    return await _digest_page(request, session, signed, digest_id)


@router.get("/digests/{digest_id}/progress")
async def digest_progress(
    session: SessionDep, _signed: SignedInDep, digest_id: int
) -> JSONResponse:
    """What the digest page's progress bar polls: the figures of GET /api/v1/digests/{id}."""
    if not 1 <= digest_id <= MAX_DB_INT:
        raise NotFound
    digest, progress = await _digest(session, digest_id)
    figures = {
        "id": digest.id,
        "status": digest.status,
        "paused_reason": digest.paused_reason,
        "recipients": digest.recipients,
        **progress.figures(),
    }
    return JSONResponse(jsonable_encoder(figures), headers={"Cache-Control": "no-store"})


@router.get("/digests/{digest_id}/preview")
async def digest_preview(
    session: SessionDep,
    settings: SettingsDep,
    tokens: TokensDep,
    _signed: SignedInDep,
    digest_id: int,
    lang: Language = Language.fr,
) -> HTMLResponse:
    if not 1 <= digest_id <= MAX_DB_INT:
        raise NotFound
    await _digest(session, digest_id)
    rendered = await preview_digest(
        session, digest_id=digest_id, language=lang, settings=settings, tokens=tokens
    )
    return HTMLResponse(
        rendered.html,
        headers={"Content-Security-Policy": PREVIEW_CSP, "Cache-Control": "no-store"},
    )


@router.get("/digests/{digest_id}/clicks.csv")
async def digest_clicks_csv(session: SessionDep, _signed: SignedInDep, digest_id: int) -> Response:
    """The API's per-article CSV (same function), for a signed-in editor's browser."""
    if not 1 <= digest_id <= MAX_DB_INT:
        raise NotFound
    try:
        body = await clicks_csv(session, digest_id=digest_id)
    except digests.DigestNotFound as exc:
        raise NotFound from exc
    return Response(
        body,
        media_type="text/csv; charset=utf-8",
        headers={
            "Content-Disposition": f'attachment; filename="digest-{digest_id}-clicks.csv"',
            "Cache-Control": "no-store",
        },
    )


@router.post("/digests/{digest_id}/test")
async def digest_test(
    request: Request,
    session: SessionDep,
    signed: ChangeDep,
    digest_id: int,
    language: Annotated[Language, Form()] = Language.fr,
) -> HTMLResponse:
    if not 1 <= digest_id <= MAX_DB_INT:
        raise NotFound
    try:
        await digests.queue_test_sends(
            session, digest_id=digest_id, emails=[signed.editor.email], language=language
        )
    except digests.DigestNotFound as exc:
        raise NotFound from exc
    t = desk_text(request)
    message = t["test_queued"].format(email=signed.editor.email)
    return await _digest_page(request, session, signed, digest_id, message=message)


@router.post("/digests/{digest_id}/send")
async def digest_send(
    request: Request,
    session: SessionDep,
    signed: ChangeDep,
    digest_id: int,
    confirm: Annotated[str, Form(max_length=10)] = "",
) -> Response:
    if not 1 <= digest_id <= MAX_DB_INT:
        raise NotFound
    t = desk_text(request)
    if confirm != "yes":
        return await _digest_page(
            request, session, signed, digest_id, status_code=422,
            error=t["send_confirm_missing"],
        )  # fmt: skip
    try:
        await digests.send_digest(session, digest_id=digest_id)
    except digests.DigestNotFound as exc:
        raise NotFound from exc
    except digests.DigestNotDraft as exc:
        return await _digest_page(
            request, session, signed, digest_id, status_code=409,
            error=t["conflict"].format(detail=exc),
        )  # fmt: skip
    return redirect(f"/desk/digests/{digest_id}")


def _local_time(value: str, zone: tzinfo) -> datetime | None:
    """A `datetime-local` field (2026-12-01T07:00) as a time in the desk's zone; None if it is
    not one."""
    try:
        local = datetime.fromisoformat(value)
    except ValueError:
        return None
    return local if local.tzinfo is not None else local.replace(tzinfo=zone)


@router.post("/digests/{digest_id}/schedule")
async def digest_schedule(
    request: Request,
    session: SessionDep,
    settings: SettingsDep,
    signed: ChangeDep,
    digest_id: int,
    send_at: Annotated[str, Form(max_length=40)] = "",
    confirm: Annotated[str, Form(max_length=10)] = "",
) -> Response:
    """Send at a local date and time (DESK_TIMEZONE): the API's scheduled send."""
    if not 1 <= digest_id <= MAX_DB_INT:
        raise NotFound
    t = desk_text(request)
    at = _local_time(send_at, settings.desk_zone)
    error = None
    if at is None:
        error = t["send_at_invalid"]
    elif confirm != "yes":
        error = t["send_confirm_missing"]
    else:
        try:
            await digests.schedule_send(session, digest_id=digest_id, at=at)
        except digests.DigestNotFound as exc:
            raise NotFound from exc
        except digests.SendTimePassed:
            error = t["send_at_past"]
        except digests.DigestNotDraft as exc:
            return await _digest_page(
                request, session, signed, digest_id, status_code=409,
                error=t["conflict"].format(detail=exc),
            )  # fmt: skip
    if error is not None:
        return await _digest_page(
            request, session, signed, digest_id, status_code=422, error=error,
            send_at_value=send_at,
        )  # fmt: skip
    return redirect(f"/desk/digests/{digest_id}?done=scheduled")


@router.post("/digests/{digest_id}/unschedule")
async def digest_unschedule(
    request: Request, session: SessionDep, signed: ChangeDep, digest_id: int
) -> Response:
    if not 1 <= digest_id <= MAX_DB_INT:
        raise NotFound
    try:
        await digests.unschedule_send(session, digest_id=digest_id)
    except digests.DigestNotFound as exc:
        raise NotFound from exc
    except digests.DigestNotDraft as exc:
        t = desk_text(request)
        return await _digest_page(
            request, session, signed, digest_id, status_code=409,
            error=t["conflict"].format(detail=exc),
        )  # fmt: skip
    return redirect(f"/desk/digests/{digest_id}?done=unscheduled")


CONTROLS = {
    "pause": digests.pause_send,
    "resume": digests.resume_send,
    "cancel": digests.cancel_send,
}


@router.post("/digests/{digest_id}/{action}")
async def digest_control(
    request: Request, session: SessionDep, signed: ChangeDep, digest_id: int, action: str
) -> Response:
    change = CONTROLS.get(action)
    if change is None or not 1 <= digest_id <= MAX_DB_INT:
        raise NotFound
    try:
        await change(session, digest_id=digest_id)
    except digests.DigestNotFound as exc:
        raise NotFound from exc
    except digests.DigestStatusConflict as exc:
        t = desk_text(request)
        return await _digest_page(
            request, session, signed, digest_id, status_code=409,
            error=t["conflict"].format(detail=exc),
        )  # fmt: skip
    return redirect(f"/desk/digests/{digest_id}")


# --- Subscribers ---------------------------------------------------------------------------------


async def _subscribers_page(
    request: Request,
    session: SessionDep,
    signed: accounts.SignedIn,
    *,
    q: str | None = None,
    status: SubscriberStatus | None = None,
    offset: int = 0,
    status_code: int = 200,
    **context: Any,
) -> HTMLResponse:
    found = await subscribers.list_subscribers(
        session, status=status, q=q, limit=PAGE_SIZE, offset=offset
    )
    return page(
        request, "subscribers.html", signed=signed, status_code=status_code, items=found.items,
        total=found.total, q=q or "", status=status.value if status else "", offset=offset,
        page_size=PAGE_SIZE, statuses=[s.value for s in SubscriberStatus], **context,
    )  # fmt: skip


@router.get("/subscribers")
async def subscribers_list(
    request: Request,
    session: SessionDep,
    signed: SignedInDep,
    q: Annotated[str | None, Query(max_length=320)] = None,
    status: Annotated[str | None, Query(max_length=16)] = None,
    offset: Offset = 0,
) -> HTMLResponse:
    # The filter form sends `status=` for "all statuses".
    chosen = SubscriberStatus(status) if status in set(SubscriberStatus) else None
    message = desk_text(request)["erased_done"] if request.query_params.get(
        "erased"
    ) else None  # fmt: skip
    return await _subscribers_page(
        request, session, signed, q=q, status=chosen, offset=offset, message=message
    )


@router.get("/subscribers/export")
async def subscribers_export(request: Request, _signed: SignedInDep) -> StreamingResponse:
    sessionmaker = request.app.state.sessionmaker

    async def lines() -> AsyncIterator[str]:
        # Its own session: the request's closes when the handler returns, before the stream.
        import csv
        import io

        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\n")
        async with sessionmaker() as session:
            async for row in csvfile.export_rows(session):
                writer.writerow(row)
                if buffer.tell() > 64_000:
                    yield buffer.getvalue()
                    buffer.seek(0)
                    buffer.truncate()
        yield buffer.getvalue()

    return StreamingResponse(
        lines(),
        media_type="text/csv; charset=utf-8",
        headers={"Content-Disposition": 'attachment; filename="subscribers.csv"'},
    )


@router.post("/subscribers/import")
async def subscribers_import(
    request: Request,
    session: SessionDep,
    tokens: TokensDep,
    settings: SettingsDep,
    signed: ChangeDep,
    file: Annotated[UploadFile, File()],
    confirmed: Annotated[str, Form(max_length=10)] = "",
) -> HTMLResponse:
    from app.models import utcnow

    t = desk_text(request)
    with tempfile.TemporaryDirectory() as directory:
        path = Path(directory) / "import.csv"
        path.write_bytes(await file.read())
        try:
            parsed = csvfile.read_import_file(
                path, tokens=tokens, default_language=Language.fr.value
            )
        except csvfile.ImportFileError as exc:
            return await _subscribers_page(
                request, session, signed, status_code=422,
                error=t["import_failed"].format(error=exc),
            )  # fmt: skip
    total = csvfile.ImportResult()
    for start in range(0, len(parsed.rows), IMPORT_CHUNK):
        result = await csvfile.import_chunk(
            session,
            rows=parsed.rows[start : start + IMPORT_CHUNK],
            confirmed=confirmed == "yes",
            now=utcnow(),
            cadence=settings.default_cadence,
        )
        total.added += result.added
        total.already_subscribed += result.already_subscribed
        total.suppressed += result.suppressed
    message = t["import_done"].format(
        added=total.added, already=total.already_subscribed, suppressed=total.suppressed,
        rejected=len(parsed.errors),
    )  # fmt: skip
    line_errors = [t["line_error"].format(line=n, message=m) for n, m in parsed.errors[:200]]
    return await _subscribers_page(
        request, session, signed, message=message, line_errors=line_errors
    )


async def _subscriber(session: SessionDep, subscriber_id: int) -> Any:
    if not 1 <= subscriber_id <= MAX_DB_INT:
        raise NotFound
    found = await desk.subscriber_by_id(session, subscriber_id=subscriber_id)
    if found is None or found.email is None:
        raise NotFound
    return found


@router.get("/subscribers/{subscriber_id}")
async def subscriber_page(
    request: Request,
    session: SessionDep,
    tokens: TokensDep,
    signed: SignedInDep,
    subscriber_id: int,
) -> HTMLResponse:
    subscriber = await _subscriber(session, subscriber_id)
    record = await subscribers.subscriber_record(session, tokens=tokens, email=subscriber.email)
    if record is None:
        raise NotFound
    message = None
    if request.query_params.get("unsubscribed"):
        message = desk_text(request)["unsubscribed_done"].format(email=subscriber.email)
    return page(request, "subscriber.html", signed=signed, record=record, message=message)


@router.post("/subscribers/{subscriber_id}/unsubscribe")
async def subscriber_unsubscribe(
    session: SessionDep, tokens: TokensDep, _signed: ChangeDep, subscriber_id: int
) -> Response:
    subscriber = await _subscriber(session, subscriber_id)
    # The readers' own path (the link in every email), so the rule lives in one place.
    token = tokens.unsubscribe_token(subscriber.id, subscriber.email_hash)
    await subscriptions.unsubscribe(session, tokens=tokens, token=token, how="desk")
    return redirect(f"/desk/subscribers/{subscriber_id}?unsubscribed=1")


@router.post("/subscribers/{subscriber_id}/erase")
async def subscriber_erase(
    request: Request,
    session: SessionDep,
    tokens: TokensDep,
    signed: ChangeDep,
    subscriber_id: int,
    confirm: Annotated[str, Form(max_length=10)] = "",
) -> Response:
    subscriber = await _subscriber(session, subscriber_id)
    if confirm != "yes":
        return redirect(f"/desk/subscribers/{subscriber_id}")
    await subscribers.erase_subscriber(session, tokens=tokens, email=subscriber.email)
    return redirect("/desk/subscribers?erased=1")


# --- Bounces, settings, API keys -----------------------------------------------------------------


@router.get("/bounces")
async def bounces(
    request: Request, session: SessionDep, signed: SignedInDep, offset: Offset = 0
) -> HTMLResponse:
    lines, total = await desk.bounce_log(session, limit=PAGE_SIZE, offset=offset)
    return page(
        request, "bounces.html", signed=signed, lines=lines, total=total, offset=offset,
        page_size=PAGE_SIZE,
    )  # fmt: skip


@router.get("/settings")
async def settings_page(
    request: Request, settings: SettingsDep, signed: SignedInDep
) -> HTMLResponse:
    return page(request, "settings.html", signed=signed, lines=desk.settings_view(settings))


@router.get("/keys")
async def keys_page(request: Request, session: SessionDep, signed: SignedInDep) -> HTMLResponse:
    require_admin(signed)
    return page(request, "keys.html", signed=signed, keys=await desk.api_keys(session))


@router.post("/keys")
async def keys_create(
    request: Request,
    session: SessionDep,
    signed: ChangeDep,
    name: Annotated[str, Form(max_length=100)] = "",
) -> HTMLResponse:
    require_admin(signed)
    try:
        api_key, clear = await api_keys.create_api_key(session, name=name)
    except ValueError as exc:
        return page(
            request, "keys.html", signed=signed, status_code=422,
            keys=await desk.api_keys(session), error=str(exc),
        )  # fmt: skip
    return page(
        request, "keys.html", signed=signed, keys=await desk.api_keys(session),
        created=(api_key.name, clear),
    )  # fmt: skip


@router.post("/keys/{key_id}/revoke")
async def keys_revoke(session: SessionDep, signed: ChangeDep, key_id: int) -> Response:
    require_admin(signed)
    for key in await desk.api_keys(session):
        if key.id == key_id:
            await api_keys.revoke_api_key(session, name=key.name)
    return redirect("/desk/keys")


# --- Schedules -----------------------------------------------------------------------------------


def _schedule_values(form: Any) -> dict[str, Any]:
    """The schedule form as the API's body (its schema checks it: no rule twice)."""
    values: dict[str, Any] = {}
    for field in ("name", "cron", "timezone", "cadence"):
        raw = form.get(field)
        if isinstance(raw, str):
            values[field] = raw.strip()
    for field in ("min_articles", "max_articles"):
        raw = form.get(field)
        if isinstance(raw, str) and raw.strip():
            values[field] = int(raw) if raw.strip().isdigit() else raw
    raw = form.get("categories")
    if isinstance(raw, str):
        values["categories"] = [c.strip() for c in raw.split(",") if c.strip()]
    values["enabled"] = form.get("enabled") == "yes"
    return values


def _schedule_errors(exc: Exception) -> str:
    if isinstance(exc, ValidationError):
        return "; ".join(
            f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors()[:5]
        )
    return str(exc)


async def _schedules_page(
    request: Request,
    session: SessionDep,
    signed: accounts.SignedIn,
    *,
    status_code: int = 200,
    editing: Any = None,
    **context: Any,
) -> HTMLResponse:
    found = await schedules.list_schedules(session)
    runs = await schedules.recent_runs(
        session, schedule_ids=[s.id for s in found if s.id is not None], limit=5
    )
    return page(
        request, "schedules.html", signed=signed, status_code=status_code, schedules=found,
        runs=runs, next_run={s.id: schedules.next_run_at(s) for s in found}, editing=editing,
        cadences=[c.value for c in Cadence], **context,
    )  # fmt: skip


@router.get("/schedules")
async def schedules_list(
    request: Request, session: SessionDep, signed: SignedInDep, edit: int | None = None
) -> HTMLResponse:
    editing = None
    if edit is not None and 1 <= edit <= MAX_DB_INT:
        try:
            editing = await schedules.get_schedule(session, schedule_id=edit)
        except schedules.ScheduleNotFound as exc:
            raise NotFound from exc
    return await _schedules_page(request, session, signed, editing=editing)


async def _schedule_refused(
    request: Request, session: SessionDep, signed: accounts.SignedIn, exc: Exception
) -> HTMLResponse:
    """The schedules page again, 422, saying which fields were refused."""
    detail = _schedule_errors(exc)
    return await _schedules_page(
        request,
        session,
        signed,
        status_code=422,
        error=desk_text(request)["conflict"].format(detail=detail),
    )


@router.post("/schedules")
async def schedules_create(request: Request, session: SessionDep, signed: ChangeDep) -> Response:
    form = await request.form()
    try:
        body = ScheduleCreate.model_validate(_schedule_values(form))
        await schedules.create_schedule(session, values=body.model_dump())
    except (ValidationError, schedules.InvalidSchedule) as exc:
        return await _schedule_refused(request, session, signed, exc)
    return redirect("/desk/schedules")


@router.post("/schedules/{schedule_id}")
async def schedules_update(
    request: Request, session: SessionDep, signed: ChangeDep, schedule_id: int
) -> Response:
    if not 1 <= schedule_id <= MAX_DB_INT:
        raise NotFound
    form = await request.form()
    try:
        body = ScheduleUpdate.model_validate(_schedule_values(form))
        changes = body.model_dump(exclude_unset=True)
        await schedules.update_schedule(session, schedule_id=schedule_id, changes=changes)
    except schedules.ScheduleNotFound as exc:
        raise NotFound from exc
    except (ValidationError, schedules.InvalidSchedule) as exc:
        return await _schedule_refused(request, session, signed, exc)
    return redirect("/desk/schedules")


@router.post("/schedules/{schedule_id}/{action}")
async def schedules_action(
    session: SessionDep, _signed: ChangeDep, schedule_id: int, action: str
) -> Response:
    if action not in ("enable", "disable", "delete") or not 1 <= schedule_id <= MAX_DB_INT:
        raise NotFound
    try:
        if action == "delete":
            await schedules.delete_schedule(session, schedule_id=schedule_id)
        else:
            await schedules.update_schedule(
                session, schedule_id=schedule_id, changes={"enabled": action == "enable"}
            )
    except schedules.ScheduleNotFound as exc:
        raise NotFound from exc
    return redirect("/desk/schedules")


# --- Errors --------------------------------------------------------------------------------------


def install(app: Any) -> None:
    """The desk's routes and the answers to its own exceptions."""
    app.include_router(router)

    @app.exception_handler(SignInRequired)
    async def sign_in(request: Request, exc: SignInRequired) -> Response:
        if request.url.path.endswith("/progress"):
            return JSONResponse({"detail": "signed out"}, status_code=401)
        response = redirect("/desk/login")
        response.delete_cookie(SESSION_COOKIE, path="/desk")
        return response

    @app.exception_handler(Forbidden)
    async def forbidden(request: Request, exc: Forbidden) -> Response:
        t = desk_text(request)
        return page(
            request, "message.html", signed=None, status_code=403, title=t["forbidden_title"],
            body=t[exc.key],
        )  # fmt: skip

    @app.exception_handler(NotFound)
    async def not_found(request: Request, exc: NotFound) -> Response:
        t = desk_text(request)
        return page(
            request, "message.html", signed=None, status_code=404, title=t["not_found"],
            body=t["not_found"],
        )  # fmt: skip
