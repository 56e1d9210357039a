"""What the editor controls: per-language subjects and intro, a draft edited (PATCH), articles
deleted or hidden; and what readers see of it."""

from __future__ import annotations

from html import unescape
from pathlib import Path
from typing import Any

import httpx
from fastapi import FastAPI
from sqlmodel.ext.asyncio.session import AsyncSession

from app.articles import service as articles
from tests.factories import drain_outbox, html_part, make_sender, make_subscriber, text_part
from tests.smtp_server import SmtpServer

IMAGES_FEED = Path(__file__).parents[2] / "samples" / "wordpress-feed-images-fr.xml"
NNBSP = "\u202f"


async def post_article(
    client: httpx.AsyncClient, headers: dict[str, str], n: int, **fields: Any
) -> int:
    body = {
        "title": f"Article {n}",
        "url": f"https://www.dzaleu.com/{n}/",
        "published_at": f"2022-01-{n:02d}T08:00:00Z",
        **fields,
    }
    response = await client.post("/api/v1/articles", json=body, headers=headers)
    assert response.status_code in (200, 201), response.text
    return int(response.json()["id"])


async def preview(
    client: httpx.AsyncClient, headers: dict[str, str], digest_id: int, lang: str, fmt: str
) -> str:
    url = f"/api/v1/digests/{digest_id}/preview?lang={lang}&format={fmt}"
    response = await client.get(url, headers=headers)
    assert response.status_code == 200, response.text
    return unescape(response.text) if fmt == "html" else response.text


async def test_subject_and_intro_per_language_reach_each_reader(
    app: FastAPI,
    client: httpx.AsyncClient,
    session: AsyncSession,
    editor_headers: dict[str, str],
    smtp_server: SmtpServer,
) -> None:
    """A custom subject no longer goes to English readers in French."""
    first = await post_article(client, editor_headers, 1)
    created = await client.post(
        "/api/v1/digests",
        json={
            "article_ids": [first],
            "subject": {"fr": "Notre sélection: à lire!", "en": "Our pick"},
            "intro": {
                "fr": 'Bonjour à toutes et à tous: voici "l\'essentiel" https://www.dzaleu.com/a?b=1:2\n\nDeuxième paragraphe',
                "en": "<p>Hello <strong>all</strong></p><script>alert(1)</script>",
            },
        },
        headers=editor_headers,
    )
    assert created.status_code == 201, created.text
    digest = created.json()
    assert digest["subjects"] == {"fr": "Notre sélection: à lire!", "en": "Our pick"}
    assert digest["subject"] == {"fr": "Notre sélection: à lire!", "en": "Our pick"}
    assert set(digest["intro"]) == {"fr", "en"}

    french = await preview(client, editor_headers, digest["id"], "fr", "html")
    # French typography on the editor's text, never inside the URL.
    assert f"Notre sélection{NNBSP}: à lire{NNBSP}!" in french
    assert f"Bonjour à toutes et à tous{NNBSP}: voici «{NNBSP}l’essentiel{NNBSP}»" in french
    assert '<a href="https://www.dzaleu.com/a?b=1:2"' in french
    assert ">Deuxième paragraphe</p>" in french
    english = await preview(client, editor_headers, digest["id"], "en", "html")
    assert "<title>Our pick</title>" in english
    assert ">all</strong>" in english
    assert "alert(1)" not in english  # sanitised
    text = await preview(client, editor_headers, digest["id"], "en", "text")
    assert text.startswith("Our pick\n")
    assert "Hello all" in text

    await make_subscriber(session, app.state.tokens, email="amelie@example.org", name="Amélie")
    await make_subscriber(
        session, app.state.tokens, email="john@example.com", name="John", language="en"
    )
    sent = await client.post(f"/api/v1/digests/{digest['id']}/send", headers=editor_headers)
    assert sent.status_code == 202
    await drain_outbox(app)
    [fr] = smtp_server.messages_to("amelie@example.org")
    [en] = smtp_server.messages_to("john@example.com")
    assert fr["Subject"] == f"Notre sélection{NNBSP}: à lire{NNBSP}!"
    assert en["Subject"] == "Our pick"
    assert "Hello all" in text_part(en)
    assert "Bonjour à toutes" in text_part(fr)


async def test_a_string_is_for_every_language_and_a_missing_language_gets_the_default(
    client: httpx.AsyncClient, editor_headers: dict[str, str]
) -> None:
    first = await post_article(client, editor_headers, 30)
    digest = (
        await client.post(
            "/api/v1/digests",
            json={"article_ids": [first], "subject": {"fr": "Seulement en français"}},
            headers=editor_headers,
        )
    ).json()
    assert digest["subjects"]["fr"] == "Seulement en français"
    assert digest["subjects"]["en"] == "This week’s articles – January\u00a030,\u00a02022"
    bad_bodies: list[dict[str, Any]] = [
        {"subject": {"de": "Hallo"}},
        {"subject": {}},
        {"subject": {"fr": ""}},
        {"subject": {"fr": "a\r\nBcc: x@y.z"}},
        {"intro": {"es": "Hola"}},
        {"intro": "x" * 5001},
    ]
    for bad in bad_bodies:
        response = await client.post(
            "/api/v1/digests", json={"article_ids": [first], **bad}, headers=editor_headers
        )
        assert response.status_code == 422, (bad, response.text)
        assert response.json()["detail"][0]["loc"][:2] == ["body", next(iter(bad))]


async def test_patch_edits_a_draft_and_refuses_after_the_send(
    client: httpx.AsyncClient, editor_headers: dict[str, str]
) -> None:
    ids = [await post_article(client, editor_headers, n) for n in (1, 2, 3)]
    digest = (
        await client.post("/api/v1/digests", json={"article_ids": ids[:2]}, headers=editor_headers)
    ).json()
    url = f"/api/v1/digests/{digest['id']}"
    # Articles and their order, subject for every language, an intro.
    edited = await client.patch(
        url,
        json={"article_ids": [ids[2], ids[0]], "subject": "Édition spéciale", "intro": "Salut"},
        headers=editor_headers,
    )
    assert edited.status_code == 200, edited.text
    body = edited.json()
    assert [a["article_id"] for a in body["articles"]] == [ids[2], ids[0]]
    assert [a["position"] for a in body["articles"]] == [0, 1]
    assert body["subjects"] == {"fr": "Édition spéciale", "en": "Édition spéciale"}
    assert body["intro"] == "Salut"
    # A field left out is unchanged; null goes back to the default.
    again = (await client.patch(url, json={"subject": None}, headers=editor_headers)).json()
    assert again["subject"] is None
    assert again["subjects"]["fr"].startswith("Les articles de la semaine du ")
    assert again["intro"] == "Salut"
    assert [a["article_id"] for a in again["articles"]] == [ids[2], ids[0]]
    # Unknown fields and articles are 422 naming them.
    unknown = await client.patch(url, json={"send_at": "2030-01-01"}, headers=editor_headers)
    assert unknown.status_code == 422
    missing = await client.patch(url, json={"article_ids": [999_999]}, headers=editor_headers)
    assert missing.status_code == 422
    assert "article_ids" in missing.text
    assert (
        await client.patch("/api/v1/digests/999999", json={}, headers=editor_headers)
    ).status_code == 404

    assert (await client.post(f"{url}/send", headers=editor_headers)).status_code == 202
    late = await client.patch(url, json={"subject": "Trop tard"}, headers=editor_headers)
    assert late.status_code == 409
    assert late.json()["status"] == "sent"
    after = (await client.get(url, headers=editor_headers)).json()
    assert after["subject"] is None  # nothing changed


async def test_delete_or_hide_an_article(
    client: httpx.AsyncClient, session: AsyncSession, editor_headers: dict[str, str]
) -> None:
    kept, dropped, hidden = [await post_article(client, editor_headers, n) for n in (4, 5, 6)]
    draft = (
        await client.post(
            "/api/v1/digests", json={"article_ids": [dropped]}, headers=editor_headers
        )
    ).json()
    # Deleted: gone from the articles; the draft keeps its copy.
    assert (
        await client.delete(f"/api/v1/articles/{dropped}", headers=editor_headers)
    ).status_code == 204
    assert (
        await client.get(f"/api/v1/articles/{dropped}", headers=editor_headers)
    ).status_code == 404
    copy = (await client.get(f"/api/v1/digests/{draft['id']}", headers=editor_headers)).json()
    assert copy["articles"][0]["title"] == "Article 5"
    assert copy["articles"][0]["article_id"] is None
    # Hidden: still there, taken by no new digest, and a feed update does not bring it back.
    response = await client.post(f"/api/v1/articles/{hidden}/hide", headers=editor_headers)
    assert response.status_code == 200
    assert response.json()["hidden_at"] is not None
    shown = (await client.get(f"/api/v1/articles/{hidden}", headers=editor_headers)).json()
    assert shown["hidden_at"] is not None
    await post_article(client, editor_headers, 6, summary="mis à jour")
    fresh = (await client.post("/api/v1/digests", json={}, headers=editor_headers)).json()
    assert [a["article_id"] for a in fresh["articles"]] == [kept]
    # Sent with a digest: it can be hidden, not deleted.
    assert (
        await client.post(f"/api/v1/digests/{fresh['id']}/send", headers=editor_headers)
    ).status_code == 202
    refused = await client.delete(f"/api/v1/articles/{kept}", headers=editor_headers)
    assert refused.status_code == 409
    assert "hide" in refused.json()["detail"]
    assert (
        await client.post(f"/api/v1/articles/{kept}/hide", headers=editor_headers)
    ).status_code == 200
    unhidden = await client.post(f"/api/v1/articles/{hidden}/unhide", headers=editor_headers)
    assert unhidden.json()["hidden_at"] is None
    again = (await client.post("/api/v1/digests", json={}, headers=editor_headers)).json()
    assert [a["article_id"] for a in again["articles"]] == [hidden]
    assert (
        await client.delete("/api/v1/articles/999999", headers=editor_headers)
    ).status_code == 404
    assert (
        await client.post("/api/v1/articles/999999/hide", headers=editor_headers)
    ).status_code == 404


async def test_an_article_of_a_cancelled_send_stays(
    app: FastAPI,
    client: httpx.AsyncClient,
    session: AsyncSession,
    editor_headers: dict[str, str],
) -> None:
    """A send cancelled midway went out to some readers: its article cannot be deleted (the
    outside probe deleted one whose digest had reached 2,413 readers); a draft cancelled before
    any send does not hold its articles."""
    await make_subscriber(session, app.state.tokens, email="lectrice@example.org")
    await session.commit()
    went_out, never_sent = [await post_article(client, editor_headers, n) for n in (7, 8)]
    for article_id, send in ((went_out, True), (never_sent, False)):
        digest = (
            await client.post(
                "/api/v1/digests", json={"article_ids": [article_id]}, headers=editor_headers
            )
        ).json()
        url = f"/api/v1/digests/{digest['id']}"
        if send:
            assert (await client.post(f"{url}/send", headers=editor_headers)).status_code == 202
        assert (await client.post(f"{url}/cancel", headers=editor_headers)).status_code == 200
    refused = await client.delete(f"/api/v1/articles/{went_out}", headers=editor_headers)
    assert refused.status_code == 409
    assert "hide" in refused.json()["detail"]
    assert (
        await client.delete(f"/api/v1/articles/{never_sent}", headers=editor_headers)
    ).status_code == 204


async def test_featured_images_from_every_wordpress_form(
    client: httpx.AsyncClient, session: AsyncSession, editor_headers: dict[str, str]
) -> None:
    """media:content, media:thumbnail, an image enclosure, the content's first <img>: each
    article shows its image, sized, with alt text; an article without one reads as well."""
    await articles.import_feed_document(session, data=IMAGES_FEED.read_bytes())
    await session.commit()
    digest = (await client.post("/api/v1/digests", json={}, headers=editor_headers)).json()
    images = {a["image_url"] for a in digest["articles"] if a["image_url"]}
    for name in ("pluies.jpg", "familles.jpg", "franc-cfa.jpg", "can-2022.jpg"):
        assert any(url.endswith(name) for url in images), name
    can = next(a for a in digest["articles"] if (a["image_url"] or "").endswith("can-2022.jpg"))
    assert can["image_alt"] == "Football : les Lions indomptables prêts pour la CAN ?"
    html = await preview(client, editor_headers, digest["id"], "fr", "html")
    assert html.count('<img class="thumb"') == len(images)
    assert 'alt=""' not in html
    assert 'width="552"' in html


async def test_an_edit_after_a_test_copy_reaches_the_next_copies_and_the_send(
    app: FastAPI,
    client: httpx.AsyncClient,
    session: AsyncSession,
    editor_headers: dict[str, str],
    smtp_server: SmtpServer,
) -> None:
    """Renderings are cached per digest and language in the worker: a draft edited after a test
    copy must not go out as it was when tested."""
    first = await post_article(client, editor_headers, 7)
    digest = (
        await client.post(
            "/api/v1/digests",
            json={"article_ids": [first], "subject": "Avant"},
            headers=editor_headers,
        )
    ).json()
    url = f"/api/v1/digests/{digest['id']}"
    sender = make_sender(app)  # one worker throughout, as in production: one render cache

    async def drain() -> None:
        while (await sender.run_batch()).claimed:
            pass

    test = {"emails": ["editor@example.org"], "language": "fr"}
    assert (await client.post(f"{url}/test", json=test, headers=editor_headers)).status_code == 202
    await drain()
    patched = await client.patch(
        url, json={"subject": "Après", "intro": "Nouvelle intro"}, headers=editor_headers
    )
    assert patched.status_code == 200
    assert (await client.post(f"{url}/test", json=test, headers=editor_headers)).status_code == 202
    await drain()
    before, after = smtp_server.messages_to("editor@example.org")
    assert before["Subject"] == "[TEST] Avant"
    assert after["Subject"] == "[TEST] Après"
    assert "Nouvelle intro" in text_part(after)
    await make_subscriber(session, app.state.tokens, email="amelie@example.org", name="Amélie")
    assert (await client.post(f"{url}/send", headers=editor_headers)).status_code == 202
    await drain()
    [copy] = smtp_server.messages_to("amelie@example.org")
    assert copy["Subject"] == "Après"
    assert "Nouvelle intro" in html_part(copy)


async def test_french_typography_leaves_the_intros_escaped_characters_whole(
    app: FastAPI,
    client: httpx.AsyncClient,
    session: AsyncSession,
    editor_headers: dict[str, str],
    smtp_server: SmtpServer,
) -> None:
    """An intro's & < > are escaped before the French spacing: a narrow space went inside
    `&amp;` (before its `;`) and readers saw "Tom &; Jerry" and "Prix <; 5"."""
    first = await post_article(client, editor_headers, 31)
    created = await client.post(
        "/api/v1/digests",
        json={
            "article_ids": [first],
            "intro": {
                "fr": "Tom & Jerry sont là. Prix < 5 € et > 3 € : fin",
                "en": "<p>R&amp;D &amp; co</p>",
            },
        },
        headers=editor_headers,
    )
    assert created.status_code == 201, created.text
    await make_subscriber(session, app.state.tokens, email="amelie@example.org", name="Amélie")
    sent = await client.post(f"/api/v1/digests/{created.json()['id']}/send", headers=editor_headers)
    assert sent.status_code == 202
    await drain_outbox(app)
    [fr] = smtp_server.messages_to("amelie@example.org")
    html = html_part(fr)
    assert f"Tom &amp; Jerry sont là. Prix &lt; 5 € et &gt; 3 €{NNBSP}: fin" in html
    assert f"&amp;{NNBSP};" not in html
    assert f"&lt;{NNBSP};" not in html
