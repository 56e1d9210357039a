"""One i18n on Babel: the catalogs are current (template, .po, .mo), the French copy follows
French typography, and a third language is a catalog away."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
from babel.messages.catalog import Catalog
from babel.messages.mofile import read_mo, write_mo
from babel.messages.pofile import read_po, write_po
from fastapi import FastAPI

from app import i18n
from app.typography import NNBSP, french

ROOT = Path(__file__).resolve().parent.parent
LOCALE = ROOT / "app" / "locale"


def po(language: str) -> Catalog:
    with (LOCALE / language / "LC_MESSAGES" / "messages.po").open("rb") as f:
        return read_po(f, locale=language)


def test_the_template_holds_every_string_of_the_code(tmp_path: Path) -> None:
    """`pybabel extract` (babel.cfg) finds exactly the messages of the catalogs: no string of a
    template or of the code is left untranslatable."""
    pot = tmp_path / "messages.pot"
    subprocess.run(
        [
            str(Path(sys.executable).parent / "pybabel"),
            "extract",
            "-F",
            "babel.cfg",
            "-k",
            "translate:2",
            "-o",
            str(pot),
            ".",
        ],
        cwd=ROOT,
        check=True,
        capture_output=True,
    )
    with pot.open("rb") as f:
        extracted = {m.id for m in read_po(f) if m.id}
    for language in ("fr", "en"):
        assert {m.id for m in po(language) if m.id} == extracted, language


@pytest.mark.parametrize("language", ["fr", "en"])
def test_compiled_catalogs_are_current(language: str) -> None:
    """The .mo next to each .po says the same (run `pybabel compile -d app/locale`)."""
    with (LOCALE / language / "LC_MESSAGES" / "messages.mo").open("rb") as f:
        compiled = {m.id: m.string for m in read_mo(f) if m.id}
    source = {m.id: m.string for m in po(language) if m.id and m.string}
    assert compiled == source


def test_french_is_complete_and_typographically_right() -> None:
    for message in po("fr"):
        if not message.id:
            continue
        text = str(message.string)
        assert text, f"untranslated: {message.id!r}"
        assert "fuzzy" not in message.flags, message.id
        assert "'" not in text, f"straight apostrophe: {text!r}"
        assert '"' not in text, f"straight quotes: {text!r}"
        # A narrow no-break space before ; : ! ? (never a plain space, never nothing).
        for match in re.finditer(r"(.)([;:!?])", text):
            assert match.group(1) == NNBSP, f"before {match.group(2)!r}: {text!r}"
        # Gender-neutral: no "inscrit(e)"/"désinscrit" said of the reader.
        assert not re.search(r"\bêtes (dés|ré)?inscrit", text), text


def test_french_typography_leaves_urls_times_and_code_alone() -> None:
    assert french('Il a dit "oui" : c\'est fait!') == (
        f"Il a dit «{NNBSP}oui{NNBSP}»{NNBSP}: c’est fait{NNBSP}!"
    )
    assert french("Rendez-vous à 12:30 sur https://x.fr/a?b=c:d ; voilà") == (
        f"Rendez-vous à 12:30 sur https://x.fr/a?b=c:d{NNBSP}; voilà"
    )
    assert french("Écrivez à redaction@dzaleu.com !") == f"Écrivez à redaction@dzaleu.com{NNBSP}!"
    assert french("Quoi ?!") == f"Quoi{NNBSP}?!"
    assert french("« Déjà »") == f"«{NNBSP}Déjà{NNBSP}»"
    assert french(french("Titre : sous-titre")) == f"Titre{NNBSP}: sous-titre"  # idempotent


def test_dates_from_the_cldr() -> None:
    from datetime import date

    assert i18n.format_date(date(2021, 12, 30), "fr") == "30\u00a0décembre\u00a02021"
    assert i18n.format_date(date(2021, 12, 30), "en") == "December\u00a030,\u00a02021"


def test_negotiation_and_the_default_language() -> None:
    choose = i18n.choose_language
    english_browser = "en-US,en;q=0.9"
    assert choose(None, accept_language=english_browser, default="fr", negotiate=False) == "fr"
    assert choose("en", accept_language=None, default="fr", negotiate=False) == "en"
    assert choose("xx", accept_language=None, default="fr", negotiate=False) == "fr"
    assert choose(None, accept_language=english_browser, default="fr", negotiate=True) == "en"
    assert choose(None, accept_language="fr-CA;q=0.8, en;q=0.5", default="en", negotiate=True) == (
        "fr"
    )
    assert choose(None, accept_language="de, *;q=0.1", default="fr", negotiate=True) == "fr"
    assert choose(None, accept_language=";;;,q=x", default="fr", negotiate=True) == "fr"


@pytest.fixture
def with_german(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> i18n.Catalogs:
    """The package's catalogs plus a German one, made as the README says (init, translate,
    compile), in a copy of the locale directory."""
    locale = tmp_path / "locale"
    shutil.copytree(LOCALE, locale)
    with (LOCALE / "messages.pot").open("rb") as f:
        template = read_po(f)
    german = Catalog(locale="de")
    translations = {
        "Subscribe to the newsletter": "Newsletter abonnieren",
        "Email address": "E-Mail-Adresse",
        "Subscribe": "Abonnieren",
    }
    for message in template:
        if message.id:
            german.add(message.id, translations.get(str(message.id), ""))
    target = locale / "de" / "LC_MESSAGES"
    target.mkdir(parents=True)
    with (target / "messages.po").open("wb") as f:
        write_po(f, german)
    with (target / "messages.mo").open("wb") as f:
        write_mo(f, german)
    catalogs = i18n.Catalogs(locale)
    monkeypatch.setattr(i18n, "catalogs", catalogs)
    return catalogs


async def test_a_third_language_is_a_catalog_away(
    with_german: i18n.Catalogs, app: FastAPI, client: httpx.AsyncClient
) -> None:
    assert with_german.languages == ("de", "en", "fr")
    assert i18n.translate("de", "Subscribe") == "Abonnieren"
    assert i18n.translate("de", "Unsubscribe") == "Unsubscribe"  # untranslated: the msgid
    assert with_german.negotiate("de-CH, en;q=0.5") == "de"
    page = await client.get("/subscribe?lang=de")
    assert page.status_code == 200
    assert '<html lang="de">' in page.text
    assert "<h1>Newsletter abonnieren</h1>" in page.text
    assert '<label for="email">E-Mail-Adresse</label>' in page.text
    assert ">Deutsch</a>" in (await client.get("/subscribe")).text  # offered in the footer
    app.state.settings = app.state.settings.model_copy(update={"language_from_browser": True})
    negotiated = await client.get("/subscribe", headers={"accept-language": "de-AT"})
    assert '<html lang="de">' in negotiated.text
