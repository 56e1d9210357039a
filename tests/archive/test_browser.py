"""The archive and the click links in a real browser (headless Chromium, Playwright) against the
app served by uvicorn with the sender running: pages that pass axe-core and fit 390 px, the feed,
a tracked link that lands on the article, and a scanner script counted as machine clicks."""

from __future__ import annotations

import re
import time
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

import feedparser
import httpx
import pytest
import sqlalchemy as sa
from axe_playwright_python.sync_playwright import Axe
from fastapi import FastAPI

from app.db import sync_url
from app.security import hash_api_key, new_api_key
from tests.factories import text_part
from tests.feed_server import FeedServer, Page
from tests.smtp_server import SmtpServer
from tests.subscriptions.test_browser import ARTIFACTS, wait_for_mail

if TYPE_CHECKING:
    from playwright.sync_api import Page as BrowserPage

pytestmark = pytest.mark.browser

# A reader's browser (headless Chromium says "HeadlessChrome", which scanners use too).
CHROME = (
    "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/131.0.0.0 Safari/537.36"
)
ARTICLE_PAGE = "<!DOCTYPE html><html lang='fr'><title>Article</title><h1>L'article</h1></html>"


def editor_key(database_url: str) -> str:
    """An editor API key, written as `newsletter create-api-key` does (Playwright's sync API
    holds this thread's event loop)."""
    key = new_api_key()
    engine = sa.create_engine(sync_url(database_url))
    with engine.begin() as conn:
        conn.execute(
            sa.text(
                "INSERT INTO api_key (name, key_hash, prefix, created_at)"
                " VALUES ('browser', :h, :p, :now)"
            ),
            {"h": hash_api_key(key), "p": key[:10], "now": datetime.now(UTC)},
        )
    engine.dispose()
    return key


def send_digest(
    url: str,
    key: str,
    readers: list[str],
    database_url: str,
    site: str = "https://www.example.org",
) -> dict[str, Any]:
    """Confirmed readers, three articles, a digest of them sent to the readers (every copy
    recorded as sent)."""
    engine = sa.create_engine(sync_url(database_url))
    with engine.begin() as conn:
        for address in readers:
            conn.execute(
                sa.text(
                    "INSERT INTO subscriber (email, email_hash, status, language, created_at,"
                    " updated_at) VALUES (:e, :h, 'confirmed', 'fr', :now, :now)"
                ),
                {"e": address, "h": address.encode().hex()[:64], "now": datetime.now(UTC)},
            )
    engine.dispose()
    headers = {"Authorization": f"Bearer {key}"}
    with httpx.Client(base_url=url, headers=headers, timeout=30) as client:
        articles = []
        for i in range(3):
            response = client.post(
                "/api/v1/articles",
                json={
                    "title": f"Article numéro {i} : une enquête",
                    "url": f"{site}/articles/{i}",
                    "summary": "Un résumé.",
                },
            )
            assert response.status_code in (200, 201), response.text
            articles.append(response.json()["id"])
        digest = client.post(
            "/api/v1/digests", json={"subject": "Le numéro du lundi", "article_ids": articles}
        ).json()
        assert client.post(f"/api/v1/digests/{digest['id']}/send").status_code == 202
        deadline = time.monotonic() + 20
        while client.get(f"/api/v1/digests/{digest['id']}").json()["status"] != "sent":
            assert time.monotonic() < deadline, "the send did not finish"
            time.sleep(0.05)
        return dict(digest)


def age_copies(database_url: str) -> None:
    engine = sa.create_engine(sync_url(database_url))
    with engine.begin() as conn:
        conn.execute(
            sa.text("UPDATE delivery SET sent_at = :at"),
            {"at": datetime.now(UTC) - timedelta(hours=1)},
        )
    engine.dispose()


def assert_accessible(page: BrowserPage, name: str) -> None:
    results = Axe().run(page)
    serious = [v for v in results.response["violations"] if v["impact"] in ("serious", "critical")]
    assert serious == [], f"{name}: {results.generate_report()}"


def fits_390(browser: Any, url: str, name: str) -> None:
    context = browser.new_context(viewport={"width": 390, "height": 844}, is_mobile=True)
    try:
        page = context.new_page()
        page.goto(url)
        page.screenshot(path=str(ARTIFACTS / f"archive-{name}-390.png"), full_page=True)
        assert page.evaluate("() => document.documentElement.scrollWidth") <= 390, name
    finally:
        context.close()


def test_archive_pages_and_feed(
    browser: Any,
    live_app: tuple[FastAPI, str],
    smtp_server: SmtpServer,
    database_url: str,
) -> None:
    _, url = live_app
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    digest = send_digest(url, editor_key(database_url), ["lea@example.org"], database_url)
    message = wait_for_mail(smtp_server, "lea@example.org")
    deadline = time.monotonic() + 15
    with httpx.Client(base_url=url) as client:
        while "Le numéro du lundi" not in client.get("/archive").text:  # the send's end
            assert time.monotonic() < deadline, "the digest never reached the archive"
            time.sleep(0.1)
    context = browser.new_context(locale="fr-FR", user_agent=CHROME)
    page = context.new_page()
    try:
        # From the signup form, as a reader deciding: "see past issues".
        page.goto(f"{url}/subscribe")
        page.get_by_role("link", name="Voir les numéros précédents").click()
        page.wait_for_load_state()
        assert page.locator("h1").inner_text() == "Les numéros précédents"
        assert_accessible(page, "archive")
        page.get_by_role("link", name="Le numéro du lundi").click()
        page.wait_for_load_state()
        assert page.locator("h1").inner_text() == "Le numéro du lundi"
        assert page.get_by_role(
            "link", name="Article numéro 1 : une enquête", exact=True
        ).is_visible()
        assert page.get_by_role("link", name="Recevoir la lettre").is_visible()
        assert "/unsubscribe/" not in page.content()
        assert_accessible(page, "archived digest")
        issue_url = page.url
        # The email's "view in browser" link is this page.
        view = re.search(rf"{re.escape(url)}/archive/[^\s]+", text_part(message))
        assert view is not None
        assert view.group(0).split("?")[0] == issue_url.split("?")[0]
        # English.
        page.goto(f"{url}/archive?lang=en")
        assert page.locator("h1").inner_text() == "Past issues"
        assert_accessible(page, "archive (en)")
        # The feed, as a browser fetches it, read back by feedparser.
        response = page.goto(f"{url}/archive/feed.xml")
        assert response is not None
        assert response.status == 200
        assert response.headers["content-type"].startswith("application/atom+xml")
        feed = feedparser.parse(response.body())
        assert not feed.bozo
        assert feed.entries[0].title == "Le numéro du lundi"
        assert feed.entries[0].id == f"{url}/archive/{digest['id']}"
        # The 400 page of a bad click link passes too.
        page.goto(f"{url}/r/1.1.0.AAAAAAAAAAAAAAAA")
        assert_accessible(page, "bad click link")
    finally:
        context.close()
    for name, path in (("list", "/archive"), ("issue", issue_url), ("bad-link", "/r/x")):
        fits_390(browser, path if path.startswith("http") else f"{url}{path}", name)


def test_tracked_link_lands_on_the_article_and_scanners_are_machines(
    browser: Any,
    live_app: tuple[FastAPI, str],
    smtp_server: SmtpServer,
    database_url: str,
) -> None:
    _, url = live_app
    key = editor_key(database_url)
    site = FeedServer(
        pages={
            f"/articles/{i}": Page(ARTICLE_PAGE.encode(), "text/html; charset=utf-8")
            for i in range(3)
        }
    )
    site.start()
    readers = ["reader@example.org", "scanned@example.org"]
    try:
        digest = send_digest(url, key, readers, database_url, site=site.url(""))
        follow_and_scan(browser, url, smtp_server, database_url, site)
    finally:
        site.stop()
    # Counted once each copy's burst window has closed (5 s) and the next flush ran.
    deadline = time.monotonic() + 20
    with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {key}"}) as client:
        while True:
            numbers = client.get(f"/api/v1/digests/{digest['id']}").json()["numbers"]
            if numbers["clicks"]["total"] + numbers["clicks"]["machine"] >= 4:
                break
            assert time.monotonic() < deadline, numbers
            time.sleep(0.2)
    assert numbers["clicks"] == {"total": 1, "unique": 1, "machine": 3}
    assert [(a["clicks"], a["machine"]) for a in numbers["articles"]] == [(0, 1), (1, 1), (0, 1)]


def follow_and_scan(
    browser: Any, url: str, smtp_server: SmtpServer, database_url: str, site: FeedServer
) -> None:
    """A reader follows one link of their copy; a scanner's script opens every link of
    another copy at once, from the same browser."""
    links = {
        address: re.findall(rf"{re.escape(url)}/r/[A-Za-z0-9._-]+", text_part(message))
        for address in ("reader@example.org", "scanned@example.org")
        for message in [wait_for_mail(smtp_server, address)]
    }
    assert len(links["reader@example.org"]) == 3
    age_copies(database_url)  # an hour later
    context = browser.new_context(locale="fr-FR", user_agent=CHROME)
    page = context.new_page()
    try:
        page.goto(links["reader@example.org"][1])
        assert page.url == site.url("/articles/1")
        assert page.locator("h1").inner_text() == "L'article"
        page.goto(f"{url}/archive")
        statuses = page.evaluate(
            "links => Promise.all(links.map(l => fetch(l, {redirect: 'manual'})"
            ".then(r => r.type)))",
            links["scanned@example.org"],
        )
        assert statuses == ["opaqueredirect"] * 3
    finally:
        context.close()
