"""Public pages (signup form, confirm, unsubscribe, preferences) and the public signup JSON endpoint."""

from __future__ import annotations

from typing import Annotated, Any

from babel import Locale
from fastapi import APIRouter, Depends, Form, Request
from fastapi.responses import HTMLResponse

from app import openapi
from app.addresses import InvalidEmail, clean_name, normalize_email
from app.config import Settings
from app.deps import ClientIpDep, SessionDep, SettingsDep, TokensDep
from app.http import PAGE_CSP_OWN_SCRIPTS, field_error
from app.i18n import available_languages, translate
from app.models import Cadence, ConsentSource, Subscriber, SubscriberStatus
from app.ratelimit import RateLimiter
from app.security import TokenError, TokenExpired, Tokens
from app.subscriptions import service
from app.subscriptions.schemas import SubscriptionAccepted, SubscriptionCreate
from app.topics import MAX_TOPICS, UnknownTopics, canonical_topics
from app.web.templates import render_page, request_language

pages = APIRouter(tags=["public pages"], include_in_schema=True)
api = APIRouter(prefix="/api/v1", tags=["public"])


async def signup_rate_limit(request: Request, ip: ClientIpDep) -> None:
    limiter: RateLimiter = request.app.state.signup_limiter
    await limiter.hit("signup", ip)


RateLimitDep = Depends(signup_rate_limit)
EMAIL_FORMAT = openapi.EMAIL_FORMAT
INVALID_LINK: dict[int | str, dict[str, Any]] = {400: openapi.INVALID_LINK_PAGE}


@api.post(
    "/subscriptions",
    status_code=202,
    response_model=SubscriptionAccepted,
    dependencies=[RateLimitDep],
    responses={429: openapi.RATE_LIMITED_JSON},
)
async def create_subscription(
    body: SubscriptionCreate,
    request: Request,
    session: SessionDep,
    settings: SettingsDep,
    tokens: TokensDep,
    ip: ClientIpDep,
) -> SubscriptionAccepted:
    """Start double opt-in. The answer is the same whether the address is new, pending or
    already confirmed: this endpoint never tells who is subscribed."""
    try:
        email = normalize_email(
            body.email, check_deliverability=settings.email_check_deliverability
        )
    except InvalidEmail as exc:
        raise field_error("email", message=str(exc), value=body.email) from exc
    topics = None
    if body.topics is not None:
        try:
            topics = canonical_topics(body.topics, settings.topic_list)
        except UnknownTopics as exc:
            raise field_error("topics", message=str(exc), value=exc.names) from exc
    if body.website:
        return SubscriptionAccepted()  # a bot filled the honeypot: look successful, store nothing
    await service.signup(
        session,
        settings=settings,
        tokens=tokens,
        email=email,
        name=clean_name(body.name),
        consent=service.Consent(
            ip=ip,
            user_agent=request.headers.get("user-agent"),
            source=ConsentSource.api,
            language=body.language or settings.default_language,
        ),
        cadence=body.cadence.value if body.cadence else None,
        topics=topics,
    )
    return SubscriptionAccepted()


@pages.get("/subscribe", response_class=HTMLResponse)
async def subscribe_form(
    request: Request, settings: SettingsDep, lang: str | None = None
) -> HTMLResponse:
    language = request_language(request, lang)
    return render_page(
        request,
        "subscribe.html",
        lang=language,
        errors={},
        values={"cadence": settings.default_cadence},
        topics=settings.topic_list,
    )


def _form_choices(
    lang: str, settings: Settings, cadence: str, topics: list[str]
) -> tuple[str | None, list[str], dict[str, str]]:
    """A form's cadence (None: not given) and topics, as TOPICS spells them, and its errors."""
    errors: dict[str, str] = {}
    chosen_cadence = cadence or None
    if chosen_cadence is not None and chosen_cadence not in {c.value for c in Cadence}:
        errors["cadence"] = translate(lang, "Choose one of the offered frequencies.")
    chosen: list[str] = []
    try:
        chosen = canonical_topics(topics, settings.topic_list)
    except UnknownTopics:
        errors["topics"] = translate(lang, "Choose among the offered topics.")
    if topics and not settings.topic_list:
        # The form offers no topics: nothing to tick.
        errors["topics"] = translate(lang, "Choose among the offered topics.")
    return chosen_cadence, chosen, errors


@pages.post(
    "/subscribe",
    response_class=HTMLResponse,
    dependencies=[RateLimitDep],
    responses={422: openapi.FORM_ERRORS, 429: openapi.RATE_LIMITED_PAGE},
)
async def subscribe_submit(
    request: Request,
    session: SessionDep,
    settings: SettingsDep,
    tokens: TokensDep,
    ip: ClientIpDep,
    email: Annotated[str, Form(max_length=2000, json_schema_extra=EMAIL_FORMAT)] = "",
    name: Annotated[str, Form(max_length=2000)] = "",
    language: Annotated[str, Form(max_length=20)] = "",
    website: Annotated[str, Form(max_length=2000)] = "",
    cadence: Annotated[str, Form(max_length=20)] = "",
    topics: Annotated[list[str] | None, Form(max_length=MAX_TOPICS)] = None,
) -> HTMLResponse:
    lang = request_language(request, language)
    chosen_cadence, chosen_topics, errors = _form_choices(lang, settings, cadence, topics or [])
    normalized = ""
    try:
        normalized = normalize_email(
            email, check_deliverability=settings.email_check_deliverability
        )
    except InvalidEmail:
        errors["email"] = translate(lang, "This email address is not valid.")
    if len(name) > 200:
        errors["name"] = translate(lang, "The name must be at most 200 characters.")
    if errors:
        return render_page(
            request,
            "subscribe.html",
            lang=lang,
            status_code=422,
            errors=errors,
            values={
                "email": email,
                "name": name,
                "cadence": chosen_cadence or settings.default_cadence,
                "topics": chosen_topics,
            },
            topics=settings.topic_list,
        )
    if not website:
        await service.signup(
            session,
            settings=settings,
            tokens=tokens,
            email=normalized,
            name=clean_name(name),
            consent=service.Consent(
                ip=ip,
                user_agent=request.headers.get("user-agent"),
                source=ConsentSource.form,
                language=lang,
            ),
            cadence=chosen_cadence,
            topics=chosen_topics,
        )
    return render_page(
        request,
        "message.html",
        lang=lang,
        title=translate(lang, "Check your inbox"),
        body=translate(
            lang,
            "If this address can receive our newsletter, a confirmation email has just been "
            "sent to it. Open the link it contains to confirm your subscription.",
        ),
    )


def _invalid_link(request: Request, lang: str, exc: TokenError) -> HTMLResponse:
    if isinstance(exc, TokenExpired):
        body = translate(
            lang, "This confirmation link has expired. Sign up again to get a new link."
        )
    else:
        body = translate(lang, "This link is not valid or has expired. You can sign up again.")
    return render_page(
        request,
        "message.html",
        lang=lang,
        status_code=400,
        title=translate(lang, "Invalid or expired link"),
        body=body,
        signup_link=True,
    )


@pages.get("/confirm/{token}", response_class=HTMLResponse, responses=INVALID_LINK)
async def confirm_page(
    request: Request, token: str, session: SessionDep, tokens: TokensDep
) -> HTMLResponse:
    """Shows a form that confirms, and changes nothing: mail scanners open every link in a
    message. A script posts the form at once, so a reader sees no extra step; without
    JavaScript, one button does it."""
    lang = request_language(request)
    try:
        subscriber = await service.subscriber_for_confirm(session, tokens=tokens, token=token)
    except TokenError as exc:
        return _invalid_link(request, lang, exc)
    lang = request_language(request, request.query_params.get("lang") or subscriber.language)
    if subscriber.status == SubscriberStatus.confirmed:
        return _confirmed_page(request, lang)
    page = render_page(request, "confirm.html", lang=lang, token=token)
    page.headers["Content-Security-Policy"] = PAGE_CSP_OWN_SCRIPTS  # its script posts the form
    return page


@pages.post("/confirm/{token}", response_class=HTMLResponse, responses=INVALID_LINK)
async def confirm(
    request: Request, token: str, session: SessionDep, tokens: TokensDep
) -> HTMLResponse:
    """The confirmation page's form (posted by its script, or its button)."""
    lang = request_language(request)
    form = await request.form()
    try:
        subscriber = await service.confirm(session, tokens=tokens, token=token)
    except TokenError as exc:
        return _invalid_link(request, lang, exc)
    return _confirmed_page(
        request, request_language(request, str(form.get("lang") or "") or subscriber.language)
    )


def _confirmed_page(request: Request, lang: str) -> HTMLResponse:
    return render_page(
        request,
        "message.html",
        lang=lang,
        title=translate(lang, "Subscription confirmed"),
        body=translate(lang, "Thank you! You will now receive our newsletter."),
    )


@pages.get("/unsubscribe/{token}", response_class=HTMLResponse, responses=INVALID_LINK)
async def unsubscribe_page(
    request: Request, token: str, session: SessionDep, tokens: TokensDep
) -> HTMLResponse:
    """Shows a button and changes nothing: mail scanners follow links."""
    lang = request_language(request)
    try:
        subscriber = await service.subscriber_for_unsubscribe(session, tokens=tokens, token=token)
    except TokenError as exc:
        return _invalid_link(request, lang, exc)
    lang = request_language(request, request.query_params.get("lang") or subscriber.language)
    return render_page(request, "unsubscribe.html", lang=lang, token=token)


@pages.post("/unsubscribe/{token}", response_class=HTMLResponse, responses=INVALID_LINK)
async def unsubscribe(
    request: Request, token: str, session: SessionDep, tokens: TokensDep
) -> HTMLResponse:
    """The page's button, or a mail provider's RFC 8058 one-click POST
    (`List-Unsubscribe=One-Click`). No cookie or CSRF token: the signed token is the proof."""
    lang = request_language(request)
    form = await request.form()
    how = "one-click" if form.get("List-Unsubscribe") == "One-Click" else "link"
    try:
        subscriber = await service.unsubscribe(session, tokens=tokens, token=token, how=how)
    except TokenError as exc:
        return _invalid_link(request, lang, exc)
    lang = request_language(request, str(form.get("lang") or "") or subscriber.language)
    return render_page(
        request,
        "unsubscribed.html",
        lang=lang,
        token=token,
        can_resubscribe=subscriber.erased_at is None and subscriber.status == "unsubscribed",
    )


@pages.post("/resubscribe/{token}", response_class=HTMLResponse, responses=INVALID_LINK)
async def resubscribe(
    request: Request, token: str, session: SessionDep, tokens: TokensDep
) -> HTMLResponse:
    lang = request_language(request)
    try:
        subscriber = await service.resubscribe(session, tokens=tokens, token=token)
    except TokenError as exc:
        return _invalid_link(request, lang, exc)
    form = await request.form()
    lang = request_language(request, str(form.get("lang") or "") or subscriber.language)
    return render_page(
        request,
        "message.html",
        lang=lang,
        title=translate(lang, "You are subscribed again"),
        body=translate(lang, "Welcome back! You will receive the newsletter again."),
        language_switch=False,  # its address answers POST only
    )


# --- Preferences -------------------------------------------------------------------------------


def _preferences_page(
    request: Request,
    *,
    settings: Settings,
    tokens: Tokens,
    token: str,
    subscriber: Subscriber,
    lang: str,
    status_code: int = 200,
    values: dict[str, Any] | None = None,
    errors: dict[str, str] | None = None,
    saved: bool = False,
) -> HTMLResponse:
    assert subscriber.id is not None
    if values is None:
        values = {
            "cadence": subscriber.cadence,
            "topics": list(subscriber.topics or []),
            "name": subscriber.name or "",
            "language": subscriber.language,
        }
    return render_page(
        request,
        "preferences.html",
        lang=lang,
        status_code=status_code,
        token=token,
        unsubscribe_token=tokens.unsubscribe_token(subscriber.id, subscriber.email_hash),
        active=subscriber.status in (SubscriberStatus.pending, SubscriberStatus.confirmed),
        topics=settings.topic_list,
        # Every language, each named in itself ("English", "Français").
        language_choices=[
            {"code": code, "name": (Locale.parse(code).get_display_name(code) or code).capitalize()}
            for code in available_languages()
        ],
        values=values,
        errors=errors or {},
        saved=saved,
    )


@pages.get("/preferences/{token}", response_class=HTMLResponse, responses=INVALID_LINK)
async def preferences_page(
    request: Request, token: str, session: SessionDep, settings: SettingsDep, tokens: TokensDep
) -> HTMLResponse:
    """The reader's cadence, topics, name and language, and a way out. Shows, changes nothing
    (mail scanners follow links): the form's POST saves."""
    lang = request_language(request)
    try:
        subscriber = await service.subscriber_for_preferences(session, tokens=tokens, token=token)
    except TokenError as exc:
        return _invalid_link(request, lang, exc)
    lang = request_language(request, request.query_params.get("lang") or subscriber.language)
    return _preferences_page(
        request, settings=settings, tokens=tokens, token=token, subscriber=subscriber, lang=lang
    )


@pages.post(
    "/preferences/{token}",
    response_class=HTMLResponse,
    responses={**INVALID_LINK, 422: openapi.FORM_ERRORS},
)
async def save_preferences(
    request: Request,
    token: str,
    session: SessionDep,
    settings: SettingsDep,
    tokens: TokensDep,
    cadence: Annotated[str, Form(max_length=20)] = "",
    topics: Annotated[list[str] | None, Form(max_length=MAX_TOPICS)] = None,
    name: Annotated[str, Form(max_length=2000)] = "",
    language: Annotated[str, Form(max_length=20)] = "",
) -> HTMLResponse:
    """Saves the page's form. The signed token is the proof (it came by email)."""
    lang = request_language(request, language)
    try:
        subscriber = await service.subscriber_for_preferences(session, tokens=tokens, token=token)
    except TokenError as exc:
        return _invalid_link(request, lang, exc)
    chosen_cadence, chosen_topics, errors = _form_choices(lang, settings, cadence, topics or [])
    if len(name) > 200:
        errors["name"] = translate(lang, "The name must be at most 200 characters.")
    chosen_language = language if language in available_languages() else subscriber.language
    if errors:
        return _preferences_page(
            request,
            settings=settings,
            tokens=tokens,
            token=token,
            subscriber=subscriber,
            lang=lang,
            status_code=422,
            errors=errors,
            values={
                "cadence": chosen_cadence or subscriber.cadence,
                "topics": chosen_topics,
                "name": name,
                "language": chosen_language,
            },
        )
    subscriber = await service.update_preferences(
        session,
        tokens=tokens,
        token=token,
        cadence=chosen_cadence or subscriber.cadence,
        topics=chosen_topics,
        name=clean_name(name),
        language=chosen_language,
    )
    return _preferences_page(
        request,
        settings=settings,
        tokens=tokens,
        token=token,
        subscriber=subscriber,
        lang=request_language(request, subscriber.language),
        saved=True,
    )
