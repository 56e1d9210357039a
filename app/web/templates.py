"""Jinja2 templates of the public pages (autoescaped)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fastapi import Request
from fastapi.responses import HTMLResponse
from fastapi.templating import Jinja2Templates

from app.web.i18n import STRINGS

templates = Jinja2Templates(directory=Path(__file__).parent / "templates")


def render_page(
    request: Request, name: str, *, lang: str, status_code: int = 200, **context: Any
) -> HTMLResponse:
    settings = request.app.state.settings
    return templates.TemplateResponse(
        request,
        name,
        {
            "t": STRINGS[lang],
            "lang": lang,
            "site_name": settings.site_name,
            "archive_enabled": settings.archive_enabled,
            **context,
        },
        status_code=status_code,
    )
