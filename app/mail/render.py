"""Jinja2 over email_templates/: autoescaped HTML, StrictUndefined, CSS inlined for mail clients.

A template sets `subject` at top level (`{% set subject = ... %}`); the rendered body is the
template's output. Templates live per language: `email_templates/<lang>/<name>.html|.txt`.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import css_inline
from jinja2 import Environment, FileSystemLoader, StrictUndefined, select_autoescape

from app.config import ROOT
from app.models import Language

TEMPLATES_DIR = ROOT / "email_templates"


@dataclass(frozen=True, slots=True)
class RenderedEmail:
    subject: str
    html: str
    text: str


@lru_cache(maxsize=4)
def environment(templates_dir: Path = TEMPLATES_DIR) -> Environment:
    return Environment(
        loader=FileSystemLoader(templates_dir),
        autoescape=select_autoescape(enabled_extensions=("html",), default_for_string=False),
        undefined=StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
    )


def language_or_default(language: str | None) -> str:
    return language if language in {lang.value for lang in Language} else Language.fr.value


_inliner = css_inline.CSSInliner(keep_style_tags=False, load_remote_stylesheets=False)


def render_email(template: str, *, language: str | None, **context: Any) -> RenderedEmail:
    env = environment()
    lang = language_or_default(language)
    html_module = env.get_template(f"{lang}/{template}.html").make_module(context)
    text_module = env.get_template(f"{lang}/{template}.txt").make_module(context)
    subject = str(getattr(text_module, "subject", "") or getattr(html_module, "subject", ""))
    # Mail clients drop <style>: move every rule into style="" attributes.
    html = _inliner.inline(str(html_module))
    return RenderedEmail(subject=" ".join(subject.split()), html=html, text=str(text_module))
