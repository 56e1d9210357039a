"""Editor API: compose, read, preview, test and send digests (Bearer API key)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Body, HTTPException, Query, status
from fastapi.responses import HTMLResponse, JSONResponse, PlainTextResponse, Response
from sqlmodel.ext.asyncio.session import AsyncSession

from app.addresses import InvalidEmail, normalize_email
from app.audit.deps import Audit, AuditDep
from app.config import Settings
from app.deps import (
    EditorDep,
    IdPath,
    OffsetQuery,
    SessionDep,
    SettingsDep,
    TokensDep,
)
from app.digests import service
from app.digests.numbers import clicks_csv as clicks_csv_text
from app.digests.numbers import digest_numbers
from app.digests.render import digest_subject, preview_digest
from app.digests.schemas import (
    DeliverabilityPublic,
    DigestActionIn,
    DigestArticlePublic,
    DigestCreate,
    DigestList,
    DigestPublic,
    DigestSendIn,
    DigestSummary,
    DigestUpdate,
    DomainFiguresPublic,
    TestSendAccepted,
    TestSendIn,
)
from app.http import field_error
from app.models import Digest, DigestArticle, Language, as_utc

router = APIRouter(prefix="/api/v1/digests", tags=["digests"])

AUTH: dict[int | str, dict[str, Any]] = {401: {"description": "Missing, wrong or revoked API key"}}
NOT_FOUND: dict[int | str, dict[str, Any]] = {404: {"description": "No such digest"}}
# Optional: no body, or `{}`; any field is a 422 naming it.
ActionBody = Annotated[DigestActionIn | None, Body()]
# The preview is the email itself: its inline styles and remote images must show, nothing runs.
PREVIEW_CSP = "default-src 'none'; img-src http: https: data:; style-src 'unsafe-inline'; sandbox"


def _summary_fields(
    digest: Digest, articles: list[DigestArticle], progress: service.DigestProgress
) -> dict[str, object]:
    assert digest.id is not None
    return {
        "id": digest.id,
        "status": digest.status,
        "subject": digest.subject or digest.subject_translations or None,
        "intro": _as_set(digest.intro),
        "subjects": {lang.value: digest_subject(digest, articles, lang) for lang in Language},
        "created_at": digest.created_at,
        "send_at": digest.send_at,
        "send_started_at": digest.send_started_at,
        "sent_at": digest.sent_at,
        "cancelled_at": digest.cancelled_at,
        "paused_reason": digest.paused_reason,
        "article_count": len(articles),
        "recipients": digest.recipients,
        **progress.figures(),
    }


def _texts(value: str | dict[Language, str] | None) -> str | dict[str, str] | None:
    """A body's subject or intro, with plain language codes as keys."""
    if value is None or isinstance(value, str):
        return value
    return {language.value: text for language, text in value.items()}


def _as_set(values: dict[str, str]) -> str | dict[str, str] | None:
    if not values:
        return None
    return values.get(service.ALL_LANGUAGES) or dict(values)


async def _public(
    session: AsyncSession,
    digest: Digest,
    progress: service.DigestProgress | None = None,
    *,
    settings: Settings,
) -> DigestPublic:
    assert digest.id is not None
    articles = await service.digest_articles(session, digest_id=digest.id)
    if progress is None:
        progress = (await service.digest_progress(session, digests=[digest]))[digest.id]
    numbers = await digest_numbers(
        session, digest=digest, settings=settings, counts=progress.counts, articles=articles
    )
    return DigestPublic.model_validate(
        {
            **_summary_fields(digest, articles, progress),
            "articles": [
                DigestArticlePublic.model_validate(a, from_attributes=True) for a in articles
            ],
            "numbers": numbers,
        }
    )


async def _fresh_digest(
    session: AsyncSession, digest_id: int
) -> tuple[Digest, service.DigestProgress]:
    try:
        return await service.digest_with_progress(session, digest_id=digest_id)
    except service.DigestNotFound as exc:
        raise HTTPException(status.HTTP_404_NOT_FOUND, detail=str(exc)) from exc


@router.post(
    "",
    status_code=status.HTTP_201_CREATED,
    response_model=DigestPublic,
    responses={**AUTH, 422: {"description": "Invalid field, unknown articles or no new articles"}},
)
async def create_digest(
    body: DigestCreate, session: SessionDep, settings: SettingsDep, audit: AuditDep
) -> DigestPublic:
    """A draft digest. Without `article_ids`: the newest articles not yet in a sent digest."""
    try:
        digest = await service.create_digest(
            session,
            subject=_texts(body.subject),
            intro=_texts(body.intro),
            article_ids=body.article_ids,
            since=body.since,
            max_articles=body.max_articles,
            archived=body.archive,
        )
    except service.UnknownArticles as exc:
        raise field_error("article_ids", message=str(exc), value=exc.ids) from exc
    except service.NoNewArticles as exc:
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, detail=str(exc)) from exc
    audit.on("digest", digest.id)
    return await _public(session, digest, settings=settings)


@router.get("", response_model=DigestList, responses=AUTH)
async def list_digests(
    session: SessionDep,
    _editor: EditorDep,
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
    offset: OffsetQuery = 0,
) -> DigestList:
    """Newest first."""
    rows, total = await service.list_digests_with_progress(session, limit=limit, offset=offset)
    articles = await service.articles_of_digests(
        session, digest_ids=[d.id for d, _ in rows if d.id is not None]
    )
    items = [
        DigestSummary.model_validate(_summary_fields(digest, articles[digest.id], progress))
        for digest, progress in rows
        if digest.id is not None
    ]
    return DigestList(items=items, total=total, limit=limit, offset=offset)


@router.get("/{digest_id}", response_model=DigestPublic, responses={**AUTH, **NOT_FOUND})
async def get_digest(
    digest_id: IdPath, session: SessionDep, settings: SettingsDep, _editor: EditorDep
) -> DigestPublic:
    """Status, articles, delivery counts (test copies not included), rate, ETA and progress."""
    return await _public(session, *await _fresh_digest(session, digest_id), settings=settings)


@router.patch(
    "/{digest_id}",
    response_model=DigestPublic,
    responses={
        **AUTH,
        **NOT_FOUND,
        409: {"description": "The digest is not a draft any more (its status is in the answer)"},
        422: {"description": "Invalid field or unknown articles"},
    },
)
async def update_digest(
    digest_id: IdPath,
    body: DigestUpdate,
    session: SessionDep,
    settings: SettingsDep,
    audit: AuditDep,
) -> Response | DigestPublic:
    """Edit a draft: subject, intro, articles and their order. Fields left out are unchanged;
    a null subject or intro goes back to the default. After the send: 409, nothing changes."""
    changes: dict[str, Any] = {name: getattr(body, name) for name in body.model_fields_set}
    for name in ("subject", "intro"):
        if name in changes:
            changes[name] = _texts(changes[name])
    try:
        digest = await service.update_draft(session, digest_id=digest_id, **changes)
    except service.DigestNotFound as exc:
        raise HTTPException(status.HTTP_404_NOT_FOUND, detail=str(exc)) from exc
    except service.DigestNotDraft as exc:
        await audit.drop()
        return JSONResponse(
            {"detail": str(exc), "status": exc.status}, status_code=status.HTTP_409_CONFLICT
        )
    except service.UnknownArticles as exc:
        raise field_error("article_ids", message=str(exc), value=exc.ids) from exc
    return await _public(session, digest, settings=settings)


@router.get(
    "/{digest_id}/deliverability",
    response_model=DeliverabilityPublic,
    responses={**AUTH, **NOT_FOUND},
)
async def deliverability(
    digest_id: IdPath,
    session: SessionDep,
    _editor: EditorDep,
    domains: Annotated[
        int, Query(ge=1, le=1000, description="How many recipient domains to list")
    ] = 50,
) -> DeliverabilityPublic:
    """Bounce rate, complaint rate, and delivered / deferred / bounced per recipient domain,
    from the counters workers keep (cheap at any list size: one row per domain)."""
    try:
        figures = await service.deliverability(session, digest_id=digest_id, domains=domains)
    except service.DigestNotFound as exc:
        raise HTTPException(status.HTTP_404_NOT_FOUND, detail=str(exc)) from exc
    return DeliverabilityPublic(
        digest_id=digest_id,
        delivered=figures.delivered,
        deferred=figures.deferred,
        bounced=figures.bounced,
        complaints=figures.complaints,
        bounce_rate=figures.bounce_rate,
        complaint_rate=figures.complaint_rate,
        domains=[
            DomainFiguresPublic(
                domain=d.domain,
                delivered=d.delivered,
                deferred=d.deferred,
                bounced=d.bounced,
                complaints=d.complaints,
            )
            for d in figures.domains
        ],
        domain_count=figures.domain_count,
    )


@router.get(
    "/{digest_id}/preview",
    response_class=HTMLResponse,
    responses={
        **AUTH,
        **NOT_FOUND,
        200: {"content": {"text/html": {}, "text/plain": {}}, "description": "The email body"},
    },
)
async def preview(
    digest_id: IdPath,
    session: SessionDep,
    settings: SettingsDep,
    tokens: TokensDep,
    _editor: EditorDep,
    lang: Language = Language.fr,
    format: Literal["html", "text"] = "html",
) -> Response:
    """The email a subscriber gets, for a sample reader (its unsubscribe link unsubscribes
    nobody)."""
    try:
        await service.get_digest(session, digest_id=digest_id)
    except service.DigestNotFound as exc:
        raise HTTPException(status.HTTP_404_NOT_FOUND, detail=str(exc)) from exc
    rendered = await preview_digest(
        session, digest_id=digest_id, language=lang, settings=settings, tokens=tokens
    )
    if format == "text":
        return PlainTextResponse(rendered.text)
    return HTMLResponse(rendered.html, headers={"Content-Security-Policy": PREVIEW_CSP})


@router.post(
    "/{digest_id}/test",
    status_code=status.HTTP_202_ACCEPTED,
    response_model=TestSendAccepted,
    responses={**AUTH, **NOT_FOUND, 422: {"description": "Invalid address"}},
)
async def send_test(
    digest_id: IdPath,
    body: TestSendIn,
    session: SessionDep,
    settings: SettingsDep,
    _audit: AuditDep,
) -> TestSendAccepted:
    """Queue a test copy (subject marked [TEST]) to each address, whatever the digest's status."""
    emails = []
    for index, raw in enumerate(body.emails):
        try:
            emails.append(
                normalize_email(raw, check_deliverability=settings.email_check_deliverability)
            )
        except InvalidEmail as exc:
            raise field_error("emails", index, message=str(exc), value=raw) from exc
    try:
        queued = await service.queue_test_sends(
            session, digest_id=digest_id, emails=emails, language=body.language
        )
    except service.DigestNotFound as exc:
        raise HTTPException(status.HTTP_404_NOT_FOUND, detail=str(exc)) from exc
    return TestSendAccepted(queued=queued)


@router.post(
    "/{digest_id}/send",
    status_code=status.HTTP_202_ACCEPTED,
    response_model=DigestPublic,
    responses={
        **AUTH,
        **NOT_FOUND,
        409: {"description": "The digest is not a draft (its status is in the answer)"},
        422: {"description": "`at` is naive, past, more than a year ahead, or not a date-time"},
    },
)
async def send(
    digest_id: IdPath,
    session: SessionDep,
    settings: SettingsDep,
    audit: AuditDep,
    body: Annotated[DigestSendIn | None, Body()] = None,
) -> Response | DigestPublic:
    """Queue one copy per confirmed subscriber, once: a second call adds nobody (409).
    With `at`: the digest stays a draft, scheduled; a worker sends it when the time comes
    (within SCHEDULE_CHECK_SECONDS, once whatever the number of workers). Sending a scheduled
    draft now, or giving another `at`, replaces the time."""
    try:
        if body is not None and body.at is not None:
            digest = await service.schedule_send(session, digest_id=digest_id, at=body.at)
            assert digest.send_at is not None
            audit.on("digest", digest_id, f"scheduled for {as_utc(digest.send_at).isoformat()}")
        else:
            digest = await service.send_digest(session, digest_id=digest_id)
    except service.DigestNotFound as exc:
        raise HTTPException(status.HTTP_404_NOT_FOUND, detail=str(exc)) from exc
    except service.SendTimePassed as exc:
        raise field_error(
            "at", message=str(exc), value=body.at.isoformat() if body and body.at else None
        ) from exc
    except service.DigestNotDraft as exc:
        await audit.drop()
        return JSONResponse(
            {"detail": str(exc), "status": exc.status}, status_code=status.HTTP_409_CONFLICT
        )
    return await _public(session, digest, settings=settings)


@router.post(
    "/{digest_id}/unschedule",
    response_model=DigestPublic,
    responses={
        **AUTH,
        **NOT_FOUND,
        409: {"description": "Too late: the digest is not a draft (its status is in the answer)"},
    },
)
async def unschedule(
    digest_id: IdPath,
    session: SessionDep,
    settings: SettingsDep,
    audit: AuditDep,
    _body: ActionBody = None,
) -> Response | DigestPublic:
    """Take back a scheduled send: the digest stays a draft, not scheduled (a draft that was
    not scheduled is unchanged)."""
    try:
        digest = await service.unschedule_send(session, digest_id=digest_id)
    except service.DigestNotFound as exc:
        raise HTTPException(status.HTTP_404_NOT_FOUND, detail=str(exc)) from exc
    except service.DigestNotDraft as exc:
        await audit.drop()
        return JSONResponse(
            {"detail": str(exc), "status": exc.status}, status_code=status.HTTP_409_CONFLICT
        )
    return await _public(session, digest, settings=settings)


CONTROL_RESPONSES: dict[int | str, dict[str, Any]] = {
    **AUTH,
    **NOT_FOUND,
    409: {"description": "The digest's status does not allow it (its status is in the answer)"},
}


async def _control(
    session: AsyncSession,
    audit: Audit,
    digest_id: int,
    change: Callable[..., Awaitable[Digest]],
    *,
    settings: Settings,
) -> Response | DigestPublic:
    try:
        digest = await change(session, digest_id=digest_id)
    except service.DigestNotFound as exc:
        raise HTTPException(status.HTTP_404_NOT_FOUND, detail=str(exc)) from exc
    except service.DigestStatusConflict as exc:
        await audit.drop()
        return JSONResponse(
            {"detail": str(exc), "status": exc.status}, status_code=status.HTTP_409_CONFLICT
        )
    return await _public(session, digest, settings=settings)


@router.post("/{digest_id}/pause", response_model=DigestPublic, responses=CONTROL_RESPONSES)
async def pause(
    digest_id: IdPath,
    session: SessionDep,
    settings: SettingsDep,
    audit: AuditDep,
    _body: ActionBody = None,
) -> Response | DigestPublic:
    """Stop a send (`sending` -> `paused`): queued copies wait; workers give back the copies
    they hold within half a second (only messages already on the wire still go out)."""
    return await _control(session, audit, digest_id, service.pause_send, settings=settings)


@router.post("/{digest_id}/resume", response_model=DigestPublic, responses=CONTROL_RESPONSES)
async def resume(
    digest_id: IdPath,
    session: SessionDep,
    settings: SettingsDep,
    audit: AuditDep,
    _body: ActionBody = None,
) -> Response | DigestPublic:
    """Go on with a paused send (`paused` -> `sending`), by an editor or after a broken setup."""
    return await _control(session, audit, digest_id, service.resume_send, settings=settings)


@router.post("/{digest_id}/cancel", response_model=DigestPublic, responses=CONTROL_RESPONSES)
async def cancel(
    digest_id: IdPath,
    session: SessionDep,
    settings: SettingsDep,
    audit: AuditDep,
    _body: ActionBody = None,
) -> Response | DigestPublic:
    """Stop a draft or a send for good: every copy not yet sent is skipped."""
    return await _control(session, audit, digest_id, service.cancel_send, settings=settings)


@router.get(
    "/{digest_id}/clicks.csv",
    response_class=PlainTextResponse,
    responses={
        **AUTH,
        **NOT_FOUND,
        200: {"content": {"text/csv": {}}, "description": "Per-article figures (CSV)"},
    },
)
async def clicks_csv(digest_id: IdPath, session: SessionDep, _editor: EditorDep) -> Response:
    """Per-article figures: position, title, url, clicks, unique readers, machine clicks."""
    try:
        body = await clicks_csv_text(session, digest_id=digest_id)
    except service.DigestNotFound as exc:
        raise HTTPException(status.HTTP_404_NOT_FOUND, detail=str(exc)) from exc
    return Response(
        body,
        media_type="text/csv; charset=utf-8",
        headers={"Content-Disposition": f'attachment; filename="digest-{digest_id}-clicks.csv"'},
    )
