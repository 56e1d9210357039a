"""Jinja2 over email_templates/: autoescaped HTML, StrictUndefined, CSS inlined for mail clients.

One template per email for every language: its strings go through gettext (`{{ _("...") }}`, the
catalogs of app/i18n.py) in the language of the `lang` variable. The subject is the caller's.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import css_inline
from jinja2 import Environment, FileSystemLoader, StrictUndefined, select_autoescape

from app import i18n
from app.config import ROOT, Settings

TEMPLATES_DIR = ROOT / "email_templates"
_LINE_SPACE = re.compile(r"[ \t\r\n\f\v]+")


@dataclass(frozen=True, slots=True)
class RenderedEmail:
    subject: str
    html: str
    text: str


@lru_cache(maxsize=4)
def environment(templates_dir: Path = TEMPLATES_DIR) -> Environment:
    env = Environment(
        loader=FileSystemLoader(templates_dir),
        autoescape=select_autoescape(enabled_extensions=("html",), default_for_string=False),
        undefined=StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
    )
    i18n.install_jinja(env)
    return env


def language_or_default(language: str | None, default: str) -> str:
    return language if language and i18n.is_available(language) else default


def newsletter_name(settings: Settings, language: str) -> str:
    """ "la newsletter de Dzaleu" / "notre newsletter": never "la newsletter de Newsletter"."""
    if settings.brand_name:
        return i18n.translate(language, "the %(site)s newsletter", site=settings.brand_name)
    return i18n.translate(language, "our newsletter")


def brand_context(settings: Settings, language: str) -> dict[str, Any]:
    """What the masthead and footer of every email show."""
    return {
        "brand_name": settings.brand_name,
        "brand_color": settings.brand_color,
        "logo_url": settings.brand_logo_url or "",
        "site_url": settings.site_url or "",
        "newsletter": newsletter_name(settings, language),
        "organization_address": settings.organization_address.strip(),
    }


# Mail clients drop <style> in places (Gmail's app for other accounts, Outlook's web view):
# every rule goes into style="" attributes; @media rules (narrow screens, dark mode) stay in a
# <style> for the clients that read them.
_inliner = css_inline.CSSInliner(
    keep_style_tags=False, keep_at_rules=True, load_remote_stylesheets=False, minify_css=True
)


def render_email(
    template: str, *, language: str, subject: str, preheader: str = "", **context: Any
) -> RenderedEmail:
    env = environment()
    values = {
        "lang": language,
        "subject": subject,
        "preheader": preheader,
        # Keeps the body's first words out of the inbox snippet after a short preheader.
        "preheader_padding": "\u034f\u00a0" * max(0, 90 - len(preheader)) if preheader else "",
        **context,
    }
    html = env.get_template(f"{template}.html").render(values)
    text = env.get_template(f"{template}.txt").render(values)
    # One line, ASCII whitespace collapsed; no-break spaces (French typography, dates) stay.
    subject = _LINE_SPACE.sub(" ", subject).strip()
    return RenderedEmail(subject=subject, html=_inliner.inline(html), text=text)
