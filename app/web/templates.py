"""Jinja2 templates of the public pages (autoescaped, strings through gettext: app/i18n.py), and
the language a page is shown in."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from babel import Locale
from fastapi import Request
from fastapi.responses import HTMLResponse
from fastapi.templating import Jinja2Templates

from app import i18n
from app.config import Settings

templates = Jinja2Templates(directory=Path(__file__).parent / "templates")
i18n.install_jinja(templates.env)


def request_language(request: Request, *explicit: str | None) -> str:
    """The reader's choice (`explicit`: a form field, their stored language; then `?lang=`),
    else their browser's languages if LANGUAGE_FROM_BROWSER, else DEFAULT_LANGUAGE."""
    settings: Settings = request.app.state.settings
    return i18n.choose_language(
        *explicit,
        request.query_params.get("lang"),
        accept_language=request.headers.get("accept-language"),
        default=settings.default_language,
        negotiate=settings.language_from_browser,
    )


def language_links(current: str) -> list[dict[str, str]]:
    """The other languages, each named in itself ("English", "Français")."""
    return [
        {"code": code, "name": (Locale.parse(code).get_display_name(code) or code).capitalize()}
        for code in i18n.available_languages()
        if code != current
    ]


def site_link(settings: Settings, lang: str) -> str:
    """Where a page that cannot help sends the reader: the news site, else our archive (or the
    signup form)."""
    if settings.site_url:
        return settings.site_url
    return f"{'/archive' if settings.archive_enabled else '/subscribe'}?lang={lang}"


def render_page(
    request: Request, name: str, *, lang: str, status_code: int = 200, **context: Any
) -> HTMLResponse:
    settings: Settings = request.app.state.settings
    return templates.TemplateResponse(
        request,
        name,
        {
            "lang": lang,
            "site_name": settings.brand_name,
            "newsletter": i18n.translate(lang, "our newsletter")
            if not settings.brand_name
            else i18n.translate(lang, "the %(site)s newsletter", site=settings.brand_name),
            "languages": language_links(lang),
            "brand_color": settings.brand_color,
            "archive_enabled": settings.archive_enabled,
            **context,
        },
        status_code=status_code,
    )
