"""The digest and the confirmation email as readers see them, in headless Chromium: French and
English, 1280 and 390 px wide, light and dark. Screenshots go to test-artifacts/email/; the
asserts are what a browser can check: no horizontal overflow on a phone, every image has alt
text, text contrast of at least 4.5:1 in both colour schemes, under 100 KB of HTML for 15
articles with images, French punctuation on the French copy. (Outlook's and Gmail's own
renderings are not here: the layout follows what they support, see the README.)"""

from __future__ import annotations

import re
import struct
import zlib
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from app.articles.feeds import parse_feed
from app.config import ROOT, Settings
from app.digests.compose import recipient_values
from app.digests.render import render_digest_of
from app.mail.personalize import fill
from app.mail.render import RenderedEmail
from app.models import Digest, DigestArticle
from app.subscriptions.delivery import render_confirmation
from tests.subscriptions.test_browser import browser  # noqa: F401  (the Chromium fixture)

pytestmark = pytest.mark.browser

ARTIFACTS = ROOT / "test-artifacts" / "email"
IMAGES_FEED = ROOT / "samples" / "wordpress-feed-images-fr.xml"
WIDTHS = (1280, 390)
SCHEMES = ("light", "dark")
MIN_CONTRAST = 4.5
# A space, or nothing, before ; : ! ? outside URLs and times: what French typography forbids.
BAD_FRENCH_SPACING = re.compile(r"(?:[^\s\u202f\u00a0]|[ ])[;:!?](?=\s|$)")


def brand_settings(**overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "app_env": "test",
        "secret_key": "x" * 32,
        "public_url": "https://lettre.dzaleu.com",
        "site_name": "Dzaleu",
        "site_url": "https://www.dzaleu.com/",
        "organization_address": "Dzaleu SARL, BP 1234, Yaoundé, Cameroun",
        **overrides,
    }
    return Settings(_env_file=None, **values)


def png(width: int, height: int, rgb: tuple[int, int, int]) -> bytes:
    """A solid-colour PNG: the feed's images, which this machine cannot fetch."""
    row = b"\x00" + bytes(rgb) * width
    raw = zlib.compress(row * height)

    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", raw) + chunk(b"IEND", b"")


IMAGE = png(1200, 675, (120, 140, 160))


def sample_digest(count: int | None = None) -> tuple[Digest, list[DigestArticle]]:
    """The sample feed's articles (images in every WordPress form), repeated up to `count`."""
    entries = parse_feed(IMAGES_FEED.read_bytes()).entries
    digest = Digest(id=1, created_at=datetime(2022, 1, 14, tzinfo=UTC))
    articles = []
    for position in range(count or len(entries)):
        entry = entries[position % len(entries)]
        articles.append(
            DigestArticle(
                digest_id=1,
                position=position,
                title=entry.title,
                url=f"{entry.url}?n={position}",
                summary=entry.summary,
                author=entry.author,
                categories=list(entry.categories),
                image_url=entry.image_url,
                image_alt=entry.image_alt,
                published_at=(entry.published_at or digest.created_at)
                - timedelta(days=position // len(entries)),
            )
        )
    return digest, articles


def for_reader(rendered: RenderedEmail, name: str) -> RenderedEmail:
    values = recipient_values(
        name=name,
        email="reader@example.org",
        unsubscribe_url="https://lettre.dzaleu.com/unsubscribe/WzQyXQ.sig",
        preferences_url="https://lettre.dzaleu.com/preferences/WzQyXQ.sig",
    )
    return RenderedEmail(
        subject=rendered.subject,
        html=fill(rendered.html, values, escape_html=True),
        text=fill(rendered.text, values, escape_html=False),
    )


CHECKS = """() => {
  const parse = (c) => (c.match(/[\\d.]+/g) || []).map(Number);
  const luminance = ([r, g, b]) => {
    const f = (v) => { v /= 255; return v <= 0.04045 ? v / 12.92 : ((v + 0.055) / 1.055) ** 2.4; };
    return 0.2126 * f(r) + 0.7152 * f(g) + 0.0722 * f(b);
  };
  const background = (el) => {
    for (let e = el; e; e = e.parentElement) {
      const c = parse(getComputedStyle(e).backgroundColor);
      if (c.length === 3 || (c.length === 4 && c[3] > 0)) return c.slice(0, 3);
    }
    return [255, 255, 255];
  };
  const low = [];
  for (const el of document.body.querySelectorAll('*')) {
    const own = [...el.childNodes].some((n) => n.nodeType === 3 && n.textContent.trim());
    if (!own || !el.offsetParent && getComputedStyle(el).position !== 'fixed') continue;
    if (el.closest('.preheader')) continue;
    const a = luminance(parse(getComputedStyle(el).color));
    const b = luminance(background(el));
    const ratio = (Math.max(a, b) + 0.05) / (Math.min(a, b) + 0.05);
    if (ratio < %(min)s) low.push(`${el.tagName} ${ratio.toFixed(2)} "${el.textContent.trim().slice(0, 40)}"`);
  }
  return {
    width: document.documentElement.scrollWidth,
    images: [...document.images].map((i) => i.getAttribute('alt')),
    low,
    headings: [...document.querySelectorAll('h1, h2')].length,
    lang: document.documentElement.lang,
  };
}""".replace("%(min)s", str(MIN_CONTRAST))


def look(chromium: Any, html: str, *, width: int, scheme: str, shot: Path) -> dict[str, Any]:
    context = chromium.new_context(
        viewport={"width": width, "height": 900},
        is_mobile=width < 500,
        color_scheme=scheme,
    )
    try:
        context.route(
            re.compile(r"^https://www\.dzaleu\.com/.*\.(jpe?g|png)$"),
            lambda route: route.fulfill(status=200, content_type="image/png", body=IMAGE),
        )
        page = context.new_page()
        page.set_content(html, wait_until="load")
        page.screenshot(path=str(shot), full_page=True)
        result: dict[str, Any] = page.evaluate(CHECKS)
        return result
    finally:
        context.close()


@pytest.fixture(scope="module")
def shots() -> Path:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    return ARTIFACTS


def assert_french_copy(text: str) -> None:
    """French punctuation on the French text part (URLs and times aside)."""
    for line in text.splitlines():
        # Split on ASCII spaces only: the narrow no-break spaces are what is checked.
        words = [w for w in line.split(" ") if not re.match(r"https?://|\S+@\S+|\d+:\d+", w)]
        prose = " ".join(words)
        assert not BAD_FRENCH_SPACING.search(prose), line
        assert "'" not in prose, line
        assert '"' not in prose, line


@pytest.mark.parametrize("lang", ["fr", "en"])
def test_digest_in_every_width_and_scheme(browser: Any, shots: Path, lang: str) -> None:  # noqa: F811
    settings = brand_settings()
    digest, articles = sample_digest()
    rendered = for_reader(
        render_digest_of(digest, articles, language=lang, settings=settings),
        "Camille" if lang == "fr" else "Alex",
    )
    for width in WIDTHS:
        for scheme in SCHEMES:
            seen = look(
                browser,
                rendered.html,
                width=width,
                scheme=scheme,
                shot=shots / f"digest-{lang}-{width}-{scheme}.png",
            )
            assert seen["lang"] == lang
            assert seen["width"] <= width, (width, scheme, seen["width"])
            assert seen["images"], "the sample feed's images show"
            assert all(alt and alt.strip() for alt in seen["images"]), seen["images"]
            assert seen["low"] == [], (width, scheme, seen["low"])
            assert seen["headings"] == 1 + len(articles)  # h1, then one h2 per article
    if lang == "fr":
        assert_french_copy(rendered.text)
        assert_french_copy(rendered.subject)


def test_fifteen_articles_with_images_stay_under_100_kb(browser: Any, shots: Path) -> None:  # noqa: F811
    settings = brand_settings(brand_logo_url="https://www.dzaleu.com/logo.png")
    digest, articles = sample_digest(15)
    rendered = for_reader(
        render_digest_of(digest, articles, language="fr", settings=settings), "Camille"
    )
    size = len(rendered.html.encode())
    print(f"digest of 15 articles with images: {size} bytes of HTML (Gmail clips at 102 KB)")
    assert size < 100_000
    seen = look(browser, rendered.html, width=390, scheme="dark", shot=shots / "digest-15.png")
    assert seen["width"] <= 390
    assert all(seen["images"])


@pytest.mark.parametrize("lang", ["fr", "en"])
def test_confirmation_email(browser: Any, shots: Path, lang: str) -> None:  # noqa: F811
    settings = brand_settings()
    rendered = render_confirmation(
        settings,
        language=lang,
        name="Amélie",
        confirm_url="https://lettre.dzaleu.com/confirm/" + "A" * 120,
    )
    for width in WIDTHS:
        for scheme in SCHEMES:
            seen = look(
                browser,
                rendered.html,
                width=width,
                scheme=scheme,
                shot=shots / f"confirm-{lang}-{width}-{scheme}.png",
            )
            assert seen["width"] <= width
            assert seen["low"] == [], (width, scheme, seen["low"])
    if lang == "fr":
        assert rendered.subject == "Confirmez votre inscription à la newsletter de Dzaleu"
        assert_french_copy(rendered.text)
