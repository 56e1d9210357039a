"""Every public page of a reader's path passes axe-core (no serious or critical violation) at
1280 px and at 390 px, in the light and the dark theme, and fits 390 px with no horizontal
scrolling: the signup form (French and English, with and without topic choices), its answer and
its 422 page, the confirmation page (valid and forged token), the page after confirming, the
unsubscribe page and the page after it (with the resubscribe button), the page after
resubscribing, the preferences page and the page after saving, and the desk's login page.
Headless Chromium through Playwright, the app served by uvicorn with the sender running and a
real SMTP server."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import pytest
from axe_playwright_python.sync_playwright import Axe
from fastapi import FastAPI

from app.main import create_app
from tests.conftest import make_settings
from tests.factories import text_part
from tests.live_server import LiveServer
from tests.smtp_server import SmtpServer, free_port
from tests.subscriptions.test_browser import (
    ARTIFACTS,
    TEXT,
    browser,  # noqa: F401  (the fixture)
    subscriber_row,
    wait_for_mail,
)

if TYPE_CHECKING:
    from playwright.sync_api import Page

pytestmark = pytest.mark.browser

# The pages follow the reader's system theme (prefers-color-scheme): both are checked.
VIEWS: tuple[tuple[Literal["light", "dark"], int], ...] = (
    ("light", 1280),
    ("light", 390),
    ("dark", 1280),
    ("dark", 390),
)
SAVE = {"fr": "Enregistrer", "en": "Save"}
PREFERENCES = {"fr": "Vos préférences", "en": "Your preferences"}
INVALID = {"fr": "Lien invalide ou expiré", "en": "Invalid or expired link"}


@pytest.fixture(params=["topics", "no-topics"])
def public_app(
    request: pytest.FixtureRequest, database_url: str, smtp_server: SmtpServer, tmp_path: Path
) -> Iterator[tuple[FastAPI, str, bool]]:
    """The app on a free loopback port, with or without TOPICS (topic choices on the forms)."""
    with_topics = request.param == "topics"
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    extra = {"topics": "International,Économie,Culture"} if with_topics else {}
    settings = make_settings(database_url, smtp_server, tmp_path, public_url=url, **extra)
    app = create_app(settings, run_worker=True)
    with LiveServer(app, port=port):
        yield app, url, with_topics


class Checker:
    """Runs axe-core on the page as shown, at each width; at 390 px, the page must not scroll
    sideways. Findings are gathered so one run names every failing page."""

    def __init__(self, shots: Path) -> None:
        self.shots = shots
        self.findings: list[str] = []
        self.checked: list[str] = []

    def __call__(self, page: Page, name: str) -> None:
        for scheme, width in VIEWS:
            page.emulate_media(color_scheme=scheme)
            page.set_viewport_size({"width": width, "height": 844})
            view = f"{name}-{scheme}-{width}"
            page.screenshot(path=str(self.shots / f"{view}.png"), full_page=True)
            results = Axe().run(page)
            serious = [
                v for v in results.response["violations"] if v["impact"] in ("serious", "critical")
            ]
            if serious:
                self.findings.append(f"{view}: {results.generate_report()}")
            if width == 390:
                scroll = int(page.evaluate("() => document.documentElement.scrollWidth"))
                if scroll > 390:
                    self.findings.append(f"{view} is {scroll} px wide")
            self.checked.append(view)


@pytest.mark.parametrize("lang", ["fr", "en"])
def test_public_pages_pass_axe_and_fit_390(
    browser: Any,  # noqa: F811  (the fixture)
    public_app: tuple[FastAPI, str, bool],
    smtp_server: SmtpServer,
    database_url: str,
    backend: str,
    lang: str,
) -> None:
    app, url, with_topics = public_app
    t = TEXT[lang]
    suffix = "?lang=en" if lang == "en" else ""
    shots = ARTIFACTS / "a11y" / f"{backend}-{lang}-{'topics' if with_topics else 'no-topics'}"
    shots.mkdir(parents=True, exist_ok=True)
    check = Checker(shots)
    email = f"lecteur.{lang}@example.org"
    context = browser.new_context(locale="fr-FR")
    # The confirmation page posts its form at once: without its script the page stays shown.
    context.route(re.compile(r".*/static/confirm\.js$"), lambda route: route.abort())
    page = context.new_page()
    try:
        # The form, then its 422 page with a field error.
        page.goto(f"{url}/subscribe{suffix}")
        assert page.locator("h1").inner_text() == t["form"]
        assert (page.locator("input[name=topics]").count() > 0) == with_topics
        check(page, "1-subscribe")
        page.locator("#email").fill("pas-une-adresse")
        page.get_by_role("button", name=t["submit"]).click()
        page.wait_for_load_state()
        assert page.locator("#email-error").is_visible()
        assert page.locator("#email").get_attribute("aria-invalid") == "true"
        check(page, "2-subscribe-422")
        # The answer.
        page.locator("#email").fill(email)
        if with_topics:
            page.locator("input[name=topics]").first.check()
        page.get_by_role("button", name=t["submit"]).click()
        page.wait_for_load_state()
        assert page.locator("h1").inner_text() == t["check"]
        check(page, "3-check-inbox")

        # The confirmation page (the link from the email), a forged one, then the button.
        link = re.search(
            rf"{re.escape(url)}/confirm/[A-Za-z0-9_.\-]+",
            text_part(wait_for_mail(smtp_server, email)),
        )
        assert link
        response = page.goto(f"{url}/confirm/forged-token{suffix}")
        assert response is not None
        assert response.status == 400
        assert page.locator("h1").inner_text() == INVALID[lang]
        check(page, "4-confirm-400")
        page.goto(link.group(0))
        check(page, "5-confirm")
        page.locator("form button[type=submit]").click()
        page.wait_for_load_state()
        assert page.locator("h1").inner_text() == t["confirmed"]
        check(page, "6-confirmed")

        # Unsubscribe, the page after it with its resubscribe button, the page after that.
        subscriber_id, email_hash, _, _ = subscriber_row(database_url, email)
        page.goto(
            f"{url}/unsubscribe/{app.state.tokens.unsubscribe_token(subscriber_id, email_hash)}"
        )
        assert page.locator("h1").inner_text() == t["unsubscribe"]
        check(page, "7-unsubscribe")
        page.get_by_role("button", name=t["unsubscribe_button"]).click()
        page.wait_for_load_state()
        assert page.get_by_role("button", name=t["resubscribe_button"]).is_visible()
        check(page, "8-unsubscribed")
        page.get_by_role("button", name=t["resubscribe_button"]).click()
        page.wait_for_load_state()
        assert page.locator("h1").inner_text() == t["resubscribed"]
        check(page, "9-resubscribed")

        # Preferences, and the page after saving them.
        token = app.state.tokens.preferences_token(subscriber_id, email_hash)
        page.goto(f"{url}/preferences/{token}")
        assert page.locator("h1").inner_text() == PREFERENCES[lang]
        check(page, "10-preferences")
        page.get_by_role("button", name=SAVE[lang]).click()
        page.wait_for_load_state()
        assert page.locator("[role=status]").is_visible()
        check(page, "11-preferences-saved")

        # The desk's login page (its own test checks its other screens in the light theme).
        response = page.goto(f"{url}/desk/login{suffix}")
        assert response is not None
        assert response.status == 200
        assert page.locator("input[type=password]").count() == 1
        check(page, "12-desk-login")
    finally:
        context.close()
    assert len(check.checked) == 12 * len(VIEWS)
    assert check.findings == [], "\n\n".join(check.findings)
