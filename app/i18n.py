"""One i18n for pages, emails and subjects: gettext catalogs, Babel's negotiation and dates.

Catalogs live in app/locale/<lang>/LC_MESSAGES/messages.po (msgids are the English text) and are
compiled to .mo next to them (`pybabel compile -d app/locale`; tests/test_i18n.py checks the .mo
files are current). A language is available when its compiled catalog is there: adding a third
language is adding a catalog (README, "Languages").
"""

from __future__ import annotations

from datetime import date, datetime
from functools import lru_cache
from pathlib import Path
from typing import Any

from babel import Locale, UnknownLocaleError
from babel.dates import format_date as babel_format_date
from babel.support import NullTranslations, Translations
from jinja2 import pass_context
from jinja2.runtime import Context

LOCALE_DIR = Path(__file__).parent / "locale"
DOMAIN = "messages"
SOURCE_LANGUAGE = "en"  # the msgids' language: it needs no translation to be available
MAX_ACCEPT_LANGUAGE_PARTS = 20


class Catalogs:
    """The compiled catalogs of one locale directory (the package's, or a test's)."""

    def __init__(self, directory: Path = LOCALE_DIR) -> None:
        self.directory = directory
        self._translations: dict[str, NullTranslations] = {}
        self._languages: tuple[str, ...] | None = None

    @property
    def languages(self) -> tuple[str, ...]:
        """Read once: a catalog added later needs a restart, like any deploy. (A glob per call
        was 5% of a worker's time: every copy of a digest asks.)"""
        if self._languages is None:
            found = {
                path.parent.parent.name
                for path in self.directory.glob(f"*/LC_MESSAGES/{DOMAIN}.mo")
            }
            self._languages = tuple(sorted(found | {SOURCE_LANGUAGE}))
        return self._languages

    def translations(self, language: str) -> NullTranslations:
        cached = self._translations.get(language)
        if cached is None:
            cached = Translations.load(self.directory, [language], DOMAIN)
            self._translations[language] = cached
        return cached

    def translate(self, language: str, message: str, **variables: Any) -> str:
        """The message in `language`, %(name)s placeholders filled (as Jinja's i18n does)."""
        text = self.translations(language).gettext(message)
        return text % variables if variables else text

    def negotiate(self, accept_language: str | None) -> str | None:
        """The best available language for an Accept-Language header (Babel), or None."""
        preferred = [tag for _, _, tag in sorted(_parse_accept_language(accept_language))]
        if not preferred:
            return None
        # Babel matches "en-US" to "en" and is tolerant of case; aliases ("fr-FR") too.
        locale = Locale.negotiate(preferred, list(self.languages), sep="-")
        return locale.language if locale is not None else None


def _parse_accept_language(header: str | None) -> list[tuple[float, int, str]]:
    """(-q, position, tag) for each acceptable tag of the header."""
    choices: list[tuple[float, int, str]] = []
    for index, part in enumerate((header or "").split(",")[:MAX_ACCEPT_LANGUAGE_PARTS]):
        tag, _, params = part.strip().partition(";")
        quality = 1.0
        params = params.strip()
        if params.startswith("q="):
            try:
                quality = float(params[2:])
            except ValueError:
                quality = 0.0
        tag = tag.strip()
        if tag and tag != "*" and quality > 0 and len(tag) <= 35:
            choices.append((-quality, index, tag))
    return choices


catalogs = Catalogs()


def available_languages() -> tuple[str, ...]:
    return catalogs.languages


def translate(language: str, message: str, **variables: Any) -> str:
    return catalogs.translate(language, message, **variables)


def is_available(language: str | None) -> bool:
    return bool(language) and language in catalogs.languages


def choose_language(
    *choices: str | None, accept_language: str | None, default: str, negotiate: bool
) -> str:
    """The reader's explicit choice (first available of `choices`), else the browser's
    languages when `negotiate`, else `default` (DEFAULT_LANGUAGE)."""
    for choice in choices:
        if choice and choice.lower() in catalogs.languages:
            return choice.lower()
    if negotiate:
        negotiated = catalogs.negotiate(accept_language)
        if negotiated:
            return negotiated
    return default


@lru_cache(maxsize=32)
def _locale(language: str) -> Locale:
    try:
        return Locale.parse(language)
    except (UnknownLocaleError, ValueError):
        return Locale.parse(SOURCE_LANGUAGE)


def format_date(value: date | datetime, language: str, *, with_year: bool = True) -> str:
    """ "30 décembre 2021" / "December 30, 2021", from the CLDR (Babel), with no-break spaces
    so a date never breaks across lines."""
    if isinstance(value, datetime):
        value = value.date()
    if with_year:
        text = babel_format_date(value, format="long", locale=_locale(language))
    else:
        text = babel_format_date(value, format="d MMMM", locale=_locale(language))
    if language == "fr" and value.day == 1:
        text = text.replace("1 ", "1er ", 1) if text.startswith("1 ") else text
    return text.replace(" ", "\u00a0")


@pass_context
def _jinja_gettext(context: Context, message: str) -> str:
    return catalogs.translations(str(context.get("lang") or SOURCE_LANGUAGE)).gettext(message)


@pass_context
def _jinja_ngettext(context: Context, singular: str, plural: str, n: int) -> str:
    translations = catalogs.translations(str(context.get("lang") or SOURCE_LANGUAGE))
    return translations.ngettext(singular, plural, n)


def install_jinja(environment: Any) -> None:
    """`{{ _("...") }}` and `{% trans %}` in the templates of `environment`, in the language of
    the template's `lang` variable: one environment serves every language."""
    environment.add_extension("jinja2.ext.i18n")
    environment.install_gettext_callables(_jinja_gettext, _jinja_ngettext, newstyle=True)
