"""A reader's path in a real browser: headless Chromium (Debian's) driven by Playwright, against
the app served by uvicorn with the sender running and a real SMTP server.

Screenshots of each step go to test-artifacts/browser/. Without /usr/bin/chromium these tests
skip locally and fail in CI (CI=true); `make test` installs it.
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
import sqlalchemy as sa
from fastapi import FastAPI

from app.config import ROOT
from app.db import sync_url
from app.main import create_app
from app.models import SubscriberStatus
from tests.conftest import make_settings
from tests.factories import html_part, text_part
from tests.live_server import LiveServer
from tests.smtp_server import SmtpServer, free_port

if TYPE_CHECKING:
    from playwright.sync_api import Route

pytestmark = pytest.mark.browser

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
ARTIFACTS = ROOT / "test-artifacts" / "browser"

TEXT = {
    "fr": {
        "form": "Inscription à la newsletter",
        "submit": "Je m’inscris",
        "check": "Vérifiez votre boîte de réception",
        "confirmed": "Inscription confirmée",
        "unsubscribe": "Se désinscrire",
        "unsubscribe_button": "Me désinscrire",
        "unsubscribed": "Votre désinscription est confirmée",
        "resubscribe_button": "Me réinscrire",
        "resubscribed": "Votre réinscription est confirmée",
        "subject": "Confirmez",
    },
    "en": {
        "form": "Subscribe to the newsletter",
        "submit": "Subscribe",
        "check": "Check your inbox",
        "confirmed": "Subscription confirmed",
        "unsubscribe": "Unsubscribe",
        "unsubscribe_button": "Unsubscribe me",
        "unsubscribed": "You are unsubscribed",
        "resubscribe_button": "Subscribe again",
        "resubscribed": "You are subscribed again",
        "subject": "Confirm your subscription",
    },
}


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    if not os.path.exists(CHROMIUM):
        message = f"{CHROMIUM} is missing (apt-get install chromium; `make test` does it)"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(message)
        pytest.skip(message)
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(
            executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True
        )
        try:
            yield chromium
        finally:
            chromium.close()


@pytest.fixture
def live_app(
    database_url: str, smtp_server: SmtpServer, tmp_path: Path
) -> Iterator[tuple[FastAPI, str]]:
    """The app on a free loopback port, sender in-process, links in emails pointing at it."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    settings = make_settings(database_url, smtp_server, tmp_path, public_url=url)
    app = create_app(settings, run_worker=True)
    with LiveServer(app, port=port):
        yield app, url


def wait_for_mail(smtp_server: SmtpServer, address: str, timeout: float = 15.0) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        messages = smtp_server.messages_to(address)
        if messages:
            return messages[0]
        time.sleep(0.05)
    raise AssertionError(f"no email to {address} within {timeout}s")


def subscriber_row(database_url: str, email: str) -> tuple[int, str, str, str]:
    engine = sa.create_engine(sync_url(database_url))
    try:
        with engine.connect() as conn:
            row = conn.execute(
                sa.text("SELECT id, email_hash, status, language FROM subscriber WHERE email = :e"),
                {"e": email},
            ).one()
    finally:
        engine.dispose()
    return int(row[0]), str(row[1]), str(row[2]), str(row[3])


@pytest.mark.parametrize("lang", ["fr", "en"])
def test_reader_signs_up_confirms_and_unsubscribes(
    browser: Any,
    live_app: tuple[FastAPI, str],
    smtp_server: SmtpServer,
    database_url: str,
    backend: str,
    lang: str,
) -> None:
    app, url = live_app
    t = TEXT[lang]
    email = f"lecteur.{lang}@example.org"
    shots = ARTIFACTS / f"{backend}-{lang}"
    shots.mkdir(parents=True, exist_ok=True)

    context = browser.new_context(locale="fr-FR", viewport={"width": 800, "height": 700})
    page = context.new_page()
    problems: list[str] = []
    page.on("console", lambda m: problems.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: problems.append(str(e)))
    page.on(
        "response",
        lambda r: problems.append(f"{r.status} {r.url}") if r.status >= 400 else None,
    )
    try:
        # 1. The form (French: DEFAULT_LANGUAGE, whatever the browser; English with ?lang=en).
        response = page.goto(f"{url}/subscribe" + ("?lang=en" if lang == "en" else ""))
        assert response is not None
        assert response.status == 200
        assert page.locator("h1").inner_text() == t["form"]
        assert page.locator("html").get_attribute("lang") == lang
        # The stylesheet loaded under the CSP: the button has the site's colour.
        button_colour = page.locator("button[type=submit]").evaluate(
            "b => getComputedStyle(b).backgroundColor"
        )
        assert button_colour == "rgb(155, 28, 28)"
        honeypot = page.locator("#website").bounding_box()
        assert honeypot is None or honeypot["x"] + honeypot["width"] <= 0  # out of sight
        page.get_by_label(re.compile("e-mail|email", re.IGNORECASE)).fill(email)
        page.locator("#name").fill("Amélie <b>Poulain</b>")
        page.screenshot(path=str(shots / "1-form.png"), full_page=True)
        page.get_by_role("button", name=t["submit"]).click()
        page.wait_for_load_state()
        assert page.locator("h1").inner_text() == t["check"]
        page.screenshot(path=str(shots / "2-check-inbox.png"), full_page=True)

        # 2. The confirmation email, sent by the in-process worker through real SMTP.
        message = wait_for_mail(smtp_server, email)
        assert t["subject"] in message["Subject"]
        text = text_part(message)
        assert "Amélie <b>Poulain</b>" in text
        link = re.search(rf"{re.escape(url)}/confirm/[A-Za-z0-9_.\-]+", text)
        assert link, text
        # The email fits a 390 px phone: no horizontal scrolling (the fallback link wraps).
        assert email_overflow(browser, html_part(message), shots / "2b-email-390.png") <= 390

        # 3. The link from the email: the page posts its form at once, and the reader is
        # confirmed with no extra step.
        response = page.goto(link.group(0))
        assert response is not None
        assert response.status == 200
        page.wait_for_url(link.group(0))
        page.locator("h1", has_text=t["confirmed"]).wait_for(timeout=10_000)
        assert page.locator("h1").inner_text() == t["confirmed"]
        assert page.locator("html").get_attribute("lang") == lang
        page.screenshot(path=str(shots / "3-confirmed.png"), full_page=True)
        subscriber_id, email_hash, status, language = subscriber_row(database_url, email)
        assert status == SubscriberStatus.confirmed
        assert language == lang

        # 4. An unsubscribe link (as in a digest): a page that changes nothing, then the button.
        token = app.state.tokens.unsubscribe_token(subscriber_id, email_hash)
        response = page.goto(f"{url}/unsubscribe/{token}")
        assert response is not None
        assert response.status == 200
        assert page.locator("h1").inner_text() == t["unsubscribe"]
        assert subscriber_row(database_url, email)[2] == SubscriberStatus.confirmed
        page.screenshot(path=str(shots / "4-unsubscribe.png"), full_page=True)
        page.get_by_role("button", name=t["unsubscribe_button"]).click()
        page.wait_for_load_state()
        assert page.locator("h1").inner_text() == t["unsubscribed"]
        resubscribe = page.get_by_role("button", name=t["resubscribe_button"])
        assert resubscribe.is_visible()
        page.screenshot(path=str(shots / "5-unsubscribed.png"), full_page=True)
        assert subscriber_row(database_url, email)[2] == SubscriberStatus.unsubscribed

        # 5. Changed their mind: the resubscribe offer works too.
        resubscribe.click()
        page.wait_for_load_state()
        assert page.locator("h1").inner_text() == t["resubscribed"]
        page.screenshot(path=str(shots / "6-resubscribed.png"), full_page=True)
        assert subscriber_row(database_url, email)[2] == SubscriberStatus.confirmed
        assert problems == []  # no CSP violation, no script error
    finally:
        context.close()


def email_overflow(browser: Any, html: str, screenshot: Path) -> int:
    """The width the email's HTML takes in a 390 px wide phone screen."""
    context = browser.new_context(viewport={"width": 390, "height": 844}, is_mobile=True)
    try:
        page = context.new_page()
        page.set_content(html)
        page.screenshot(path=str(screenshot), full_page=True)
        return int(page.evaluate("() => document.documentElement.scrollWidth"))
    finally:
        context.close()


def test_confirmation_without_javascript_is_one_button(
    browser: Any,
    live_app: tuple[FastAPI, str],
    smtp_server: SmtpServer,
    database_url: str,
    backend: str,
) -> None:
    _, url = live_app
    email = "sans.js@example.org"
    shots = ARTIFACTS / f"{backend}-no-js"
    shots.mkdir(parents=True, exist_ok=True)
    context = browser.new_context(locale="fr-FR", java_script_enabled=False)
    page = context.new_page()
    try:
        page.goto(f"{url}/subscribe")
        page.locator("#email").fill(email)
        page.get_by_role("button", name=TEXT["fr"]["submit"]).click()
        page.wait_for_load_state()
        link = re.search(
            rf"{re.escape(url)}/confirm/[A-Za-z0-9_.\-]+",
            text_part(wait_for_mail(smtp_server, email)),
        )
        assert link
        response = page.goto(link.group(0))
        assert response is not None
        assert response.status == 200
        assert page.locator("h1").inner_text() == "Confirmez votre inscription"
        page.screenshot(path=str(shots / "confirm-page.png"), full_page=True)
        assert subscriber_row(database_url, email)[2] == SubscriberStatus.pending
        page.get_by_role("button", name="Confirmer mon inscription").click()
        page.wait_for_load_state()
        assert page.locator("h1").inner_text() == TEXT["fr"]["confirmed"]
        assert subscriber_row(database_url, email)[2] == SubscriberStatus.confirmed
    finally:
        context.close()


def test_tampered_link_shows_the_error_page(
    browser: Any, live_app: tuple[FastAPI, str], backend: str
) -> None:
    _, url = live_app
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    # An English browser on a French site: French (DEFAULT_LANGUAGE), English on request.
    page = browser.new_page(locale="en-GB")
    try:
        response = page.goto(f"{url}/unsubscribe/forged-token")
        assert response is not None
        assert response.status == 400
        assert page.locator("h1").inner_text() == "Lien invalide ou expiré"
        page.screenshot(path=str(ARTIFACTS / f"{backend}-invalid-link.png"), full_page=True)
        page.get_by_role("link", name="English").click()
        page.wait_for_load_state()
        assert page.locator("h1").inner_text() == "Invalid or expired link"
        page.get_by_role("link", name="Sign up again").click()
        page.wait_for_load_state()
        assert page.locator("h1").inner_text() == "Subscribe to the newsletter"
    finally:
        page.close()


def test_api_docs_render_with_no_other_host(
    browser: Any, live_app: tuple[FastAPI, str], backend: str
) -> None:
    """Swagger UI renders every operation with only the app's own files: requests to any other
    host are cut, as on a machine with no internet access."""
    app, url = live_app
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    elsewhere: list[str] = []
    problems: list[str] = []
    context = browser.new_context(viewport={"width": 1200, "height": 900})

    def refuse(route: Route) -> None:
        elsewhere.append(route.request.url)
        route.abort()

    context.route(re.compile(r"^https?://(?!127\.0\.0\.1[:/]).*"), refuse)
    page = context.new_page()
    page.on("console", lambda m: problems.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: problems.append(str(e)))
    try:
        response = page.goto(f"{url}/docs")
        assert response is not None
        assert response.status == 200
        page.locator(".opblock").first.wait_for(timeout=15_000)
        operations = sum(
            1
            for item in app.openapi()["paths"].values()
            for method in item
            if method in ("get", "head", "post", "put", "patch", "delete")
        )
        assert page.locator(".opblock").count() == operations
        page.screenshot(path=str(ARTIFACTS / f"{backend}-docs.png"))
        assert elsewhere == []
        assert problems == []
    finally:
        context.close()


@pytest.fixture
def live_app_with_topics(
    database_url: str, smtp_server: SmtpServer, tmp_path: Path
) -> Iterator[tuple[FastAPI, str]]:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    settings = make_settings(
        database_url, smtp_server, tmp_path, public_url=url, topics="International,Économie,Culture"
    )
    app = create_app(settings, run_worker=True)
    with LiveServer(app, port=port):
        yield app, url


def test_reader_chooses_topics_and_cadence_on_a_phone(
    browser: Any,
    live_app_with_topics: tuple[FastAPI, str],
    smtp_server: SmtpServer,
    database_url: str,
    backend: str,
) -> None:
    """Signup with choices, then the preferences page from the email's footer, at 390 px."""
    app, url = live_app_with_topics
    shots = ARTIFACTS / f"{backend}-preferences"
    shots.mkdir(parents=True, exist_ok=True)
    email = "choix@example.org"
    context = browser.new_context(
        locale="fr-FR", viewport={"width": 390, "height": 844}, is_mobile=True
    )
    page = context.new_page()
    problems: list[str] = []
    page.on("console", lambda m: problems.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: problems.append(str(e)))
    try:
        page.goto(f"{url}/subscribe")
        page.locator("#email").fill(email)
        page.get_by_label("Chaque jour").check()
        page.get_by_label("Économie").check()
        page.screenshot(path=str(shots / "1-form-390.png"), full_page=True)
        assert page.evaluate("() => document.documentElement.scrollWidth") <= 390
        page.get_by_role("button", name=TEXT["fr"]["submit"]).click()
        page.wait_for_load_state()
        assert page.locator("h1").inner_text() == TEXT["fr"]["check"]
        wait_for_mail(smtp_server, email)

        subscriber_id, email_hash, _, _ = subscriber_row(database_url, email)
        token = app.state.tokens.preferences_token(subscriber_id, email_hash)
        response = page.goto(f"{url}/preferences/{token}")
        assert response is not None
        assert response.status == 200
        assert page.locator("h1").inner_text() == "Vos préférences"
        assert page.get_by_label("Chaque jour").is_checked()
        assert page.get_by_label("Économie").is_checked()
        assert not page.get_by_label("Culture").is_checked()
        assert page.evaluate("() => document.documentElement.scrollWidth") <= 390
        page.screenshot(path=str(shots / "2-preferences-390.png"), full_page=True)

        page.get_by_label("Chaque semaine").check()
        page.get_by_label("Culture").check()
        page.get_by_label("Économie").uncheck()
        page.locator("#language").select_option("en")
        page.get_by_role("button", name="Enregistrer").click()
        page.wait_for_load_state()
        assert page.locator("[role=status]").inner_text() == "Your preferences are saved."
        assert page.get_by_label("Every week").is_checked()
        assert page.get_by_label("Culture").is_checked()
        page.screenshot(path=str(shots / "3-saved-390.png"), full_page=True)
        engine = sa.create_engine(sync_url(database_url))
        try:
            with engine.connect() as conn:
                cadence, topics, language = conn.execute(
                    sa.text("SELECT cadence, topics, language FROM subscriber WHERE id = :i"),
                    {"i": subscriber_id},
                ).one()
        finally:
            engine.dispose()
        assert (cadence, language) == ("weekly", "en")
        assert "Culture" in str(topics)
        assert "conomie" not in str(topics)
        assert problems == []
    finally:
        context.close()
