"""The desk over HTTP: sign-in, sessions, CSRF, admin-only screens, and every screen answering
over the same services as the API. The browser's whole day is in test_desk_browser.py."""

from __future__ import annotations

import asyncio
import re
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import httpx
import pytest
import sqlalchemy as sa
from fastapi import FastAPI
from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession

from app.articles import service as articles
from app.config import Settings
from app.desk import accounts
from app.main import create_app
from app.models import Delivery, Digest, DigestStatus, Subscriber, SubscriberStatus, as_utc
from tests.conftest import make_settings
from tests.factories import editor_headers as make_editor_headers
from tests.factories import html_part, import_feed_sample, make_subscriber, sent_digest, text_part
from tests.smtp_server import SmtpServer

BROWSER = "Mozilla/5.0 (X11; Linux x86_64; rv:132.0) Gecko/20100101 Firefox/132.0"

SAMPLE = Path(__file__).parents[1] / "data" / "wordpress-feed-fr.xml"
PASSWORD = "correct horse battery staple"
CSRF = re.compile(r'name="csrf_token" value="([^"]+)"')


async def add_editor(
    session: AsyncSession, email: str = "ana@example.org", *, admin: bool = False
) -> None:
    await accounts.add_editor(session, email=email, password=PASSWORD, is_admin=admin)
    await session.commit()


async def sign_in(
    client: httpx.AsyncClient, email: str = "ana@example.org", password: str = PASSWORD
) -> httpx.Response:
    form = await client.get("/desk/login")
    token = CSRF.search(form.text)
    assert token is not None
    return await client.post(
        "/desk/login", data={"email": email, "password": password, "csrf_token": token[1]}
    )


async def csrf_of(client: httpx.AsyncClient, path: str = "/desk") -> str:
    page = await client.get(path)
    assert page.status_code == 200, page.text
    token = CSRF.search(page.text)
    assert token is not None
    return token[1]


async def test_sign_in_sets_a_safe_cookie_and_opens_the_desk(
    client: httpx.AsyncClient, session: AsyncSession
) -> None:
    await add_editor(session)
    assert (await client.get("/desk")).headers["location"] == "/desk/login"
    answer = await sign_in(client, email="ANA@example.org")
    assert answer.status_code == 303
    cookie = answer.headers["set-cookie"]
    assert "desk_session=" in cookie
    assert "HttpOnly" in cookie
    assert "SameSite=lax" in cookie
    assert "Path=/desk" in cookie
    assert "Secure" not in cookie  # PUBLIC_URL is http:// in the tests
    page = await client.get("/desk")
    assert page.status_code == 200
    assert "ana@example.org" in page.text
    assert "frame-ancestors 'none'" in page.headers["content-security-policy"]
    assert page.headers["x-frame-options"] == "DENY"


async def test_unknown_account_and_wrong_password_get_the_same_answer(
    client: httpx.AsyncClient, session: AsyncSession
) -> None:
    await add_editor(session)
    wrong = await sign_in(client, password="not the right one at all")
    unknown = await sign_in(client, email="nobody@example.org")
    assert wrong.status_code == unknown.status_code == 200  # the form again, with the error
    assert "desk_session=" not in wrong.headers.get("set-cookie", "")

    def message(r: httpx.Response) -> str:
        return re.sub(r'value="[^"]*"', "", r.text)

    assert message(wrong) == message(unknown)


async def test_sign_in_attempts_are_limited_per_account(
    client: httpx.AsyncClient, session: AsyncSession
) -> None:
    await add_editor(session)
    answers = [
        (await sign_in(client, password=f"wrong password {n}")).status_code for n in range(6)
    ]
    assert answers[:5] == [200] * 5
    assert answers[5] == 429
    # Even the right password waits now: the limit is on the account, not on failures.
    assert (await sign_in(client)).status_code == 429


async def test_a_form_without_its_csrf_token_is_refused(
    client: httpx.AsyncClient, session: AsyncSession
) -> None:
    await add_editor(session)
    await sign_in(client)
    assert (await client.post("/desk/logout")).status_code == 403
    assert (await client.post("/desk/logout", data={"csrf_token": "forged"})).status_code == 403
    # The login form has its own token (a cookie and a field that must match).
    login = await client.post(
        "/desk/login", data={"email": "ana@example.org", "password": PASSWORD}
    )
    assert login.status_code == 403
    token = await csrf_of(client)
    assert (await client.post("/desk/logout", data={"csrf_token": token})).status_code == 303
    assert (await client.get("/desk")).status_code == 303


async def test_removing_an_editor_or_resetting_a_password_ends_their_sessions(
    client: httpx.AsyncClient, session: AsyncSession, app: FastAPI
) -> None:
    await add_editor(session)
    await add_editor(session, "ben@example.org")
    await sign_in(client)
    other = httpx.AsyncClient(transport=client._transport, base_url="http://testserver")
    async with other:
        await sign_in(other, "ben@example.org")
        assert (await client.get("/desk")).status_code == 200
        await accounts.reset_password(session, email="ana@example.org", password="x" * 12)
        await accounts.remove_editor(session, email="ben@example.org")
        await session.commit()
        assert (await client.get("/desk")).status_code == 303
        assert (await other.get("/desk/subscribers")).status_code == 303


async def test_idle_sessions_end(client: httpx.AsyncClient, session: AsyncSession) -> None:
    from datetime import timedelta

    from app.models import EditorSession, utcnow

    await add_editor(session)
    await sign_in(client)
    row = (await session.exec(select(EditorSession))).one()
    row.last_seen_at = utcnow() - timedelta(minutes=61)
    session.add(row)
    await session.commit()
    assert (await client.get("/desk")).status_code == 303


async def test_only_admins_manage_api_keys(
    client: httpx.AsyncClient, session: AsyncSession
) -> None:
    await add_editor(session)
    await sign_in(client)
    assert (await client.get("/desk/keys")).status_code == 403
    token = await csrf_of(client)
    assert (
        await client.post("/desk/keys", data={"csrf_token": token, "name": "x"})
    ).status_code == 403


async def test_an_admin_creates_a_key_shown_once_and_revokes_it(
    client: httpx.AsyncClient, session: AsyncSession
) -> None:
    await add_editor(session, admin=True)
    await sign_in(client)
    token = await csrf_of(client, "/desk/keys")
    created = await client.post("/desk/keys", data={"csrf_token": token, "name": "site"})
    key = re.search(r'<code id="new-key" class="value">([^<]+)</code>', created.text)
    assert key is not None
    api = await client.get("/api/v1/digests", headers={"Authorization": f"Bearer {key[1]}"})
    assert api.status_code == 200
    listing = await client.get("/desk/keys")
    assert key[1] not in listing.text
    revoke = re.search(r'action="(/desk/keys/\d+/revoke)"', listing.text)
    assert revoke is not None
    assert (await client.post(revoke[1], data={"csrf_token": token})).status_code == 303
    api = await client.get("/api/v1/digests", headers={"Authorization": f"Bearer {key[1]}"})
    assert api.status_code == 401


async def test_compose_preview_test_send_and_control_a_digest(
    client: httpx.AsyncClient, session: AsyncSession, app: FastAPI
) -> None:
    await add_editor(session)
    tokens = app.state.tokens
    for n in range(3):
        await make_subscriber(session, tokens, email=f"reader{n}@example.org")
    await articles.import_feed_document(session, data=SAMPLE.read_bytes())
    await session.commit()
    await sign_in(client)
    compose = await client.get("/desk/compose")
    ids = re.findall(r'name="article" value="(\d+)"', compose.text)
    assert len(ids) >= 2
    token = CSRF.search(compose.text)
    assert token is not None
    # The second article first: the order numbers decide.
    created = await client.post(
        "/desk/compose",
        data={
            "csrf_token": token[1],
            "article": [ids[0], ids[1]],
            f"order_{ids[0]}": "2",
            f"order_{ids[1]}": "1",
            "subject_fr": "Notre sélection",
            "intro_en": "Hello from the newsroom.",
        },
    )
    assert created.status_code == 303
    digest_url = created.headers["location"]
    page = await client.get(digest_url)
    assert "3 readers" in page.text or "3 lecteurs" in page.text
    first, second = re.findall(r'<li><a href="([^"]+)" rel', page.text)[:2]
    assert first != second
    preview = await client.get(f"{digest_url}/preview?lang=en")
    assert preview.status_code == 200
    assert "Hello from the newsroom." in preview.text
    # The draft's texts change per language, as PATCH /api/v1/digests/{id} does.
    edited = await client.post(
        f"{digest_url}/edit",
        data={"csrf_token": token[1], "subject_fr": "Édition du soir", "subject_en": "Evening"},
    )
    assert "Édition du soir" in edited.text
    assert "Evening" in edited.text
    assert "frame-ancestors 'self'" in preview.headers["content-security-policy"]
    assert preview.headers["x-frame-options"] == "SAMEORIGIN"
    await client.post(f"{digest_url}/test", data={"csrf_token": token[1], "language": "en"})
    tests = (await session.exec(select(Delivery).where(Delivery.kind == "test"))).all()
    assert [d.to_address for d in tests] == ["ana@example.org"]
    # Sending needs the confirmation ticked.
    refused = await client.post(f"{digest_url}/send", data={"csrf_token": token[1]})
    assert refused.status_code == 422
    sent = await client.post(f"{digest_url}/send", data={"csrf_token": token[1], "confirm": "yes"})
    assert sent.status_code == 303
    progress = (await client.get(f"{digest_url}/progress")).json()
    assert progress["status"] == DigestStatus.sending
    assert progress["recipients"] == 3
    await client.post(f"{digest_url}/pause", data={"csrf_token": token[1]})
    assert (await client.get(f"{digest_url}/progress")).json()["status"] == "paused"
    await client.post(f"{digest_url}/resume", data={"csrf_token": token[1]})
    assert (await client.get(f"{digest_url}/progress")).json()["status"] == "sending"
    again = await client.post(f"{digest_url}/send", data={"csrf_token": token[1], "confirm": "yes"})
    assert again.status_code == 409


async def test_find_unsubscribe_and_erase_a_reader(
    client: httpx.AsyncClient, session: AsyncSession, app: FastAPI
) -> None:
    await add_editor(session)
    reader = await make_subscriber(session, app.state.tokens, email="zoe@example.org", name="Zoé")
    await make_subscriber(session, app.state.tokens, email="max@example.org")
    await sign_in(client)
    found = await client.get("/desk/subscribers", params={"q": "zoé"})
    assert "zoe@example.org" in found.text
    assert "max@example.org" not in found.text
    record = await client.get(f"/desk/subscribers/{reader.id}")
    assert record.status_code == 200
    token = CSRF.search(record.text)
    assert token is not None
    await client.post(f"/desk/subscribers/{reader.id}/unsubscribe", data={"csrf_token": token[1]})
    await session.refresh(reader)
    assert reader.status == SubscriberStatus.unsubscribed
    erased = await client.post(
        f"/desk/subscribers/{reader.id}/erase", data={"csrf_token": token[1], "confirm": "yes"}
    )
    assert erased.status_code == 303
    await session.refresh(reader)
    assert reader.email is None
    assert reader.erased_at is not None
    assert (await client.get(f"/desk/subscribers/{reader.id}")).status_code == 404


async def test_csv_import_reports_line_numbers_and_export_streams(
    client: httpx.AsyncClient, session: AsyncSession
) -> None:
    await add_editor(session)
    await sign_in(client)
    token = await csrf_of(client, "/desk/subscribers")
    body = "email,name\nann@example.org,Ann\nnot-an-address,X\nbob@example.org,Bob\n"
    answer = await client.post(
        "/desk/subscribers/import",
        data={"csrf_token": token, "confirmed": "yes"},
        files={"file": ("readers.csv", body.encode(), "text/csv")},
    )
    assert answer.status_code == 200
    assert re.search(r"(line|ligne) 3", answer.text)
    rows = (await session.exec(select(Subscriber))).all()
    assert sorted(s.email or "" for s in rows) == ["ann@example.org", "bob@example.org"]
    export = await client.get("/desk/subscribers/export")
    assert export.headers["content-type"].startswith("text/csv")
    assert "ann@example.org" in export.text
    assert "bob@example.org" in export.text


@pytest.mark.parametrize(
    "path", ["/desk", "/desk/articles", "/desk/compose", "/desk/digests", "/desk/subscribers",
             "/desk/bounces", "/desk/settings"],
)  # fmt: skip
async def test_every_screen_answers_in_both_languages(
    client: httpx.AsyncClient, session: AsyncSession, path: str
) -> None:
    await add_editor(session)
    await sign_in(client)
    for lang, word in (("fr", "Abonnés"), ("en", "Subscribers")):
        page = await client.get(path, params={"lang": lang})
        assert page.status_code == 200
        assert f'<html lang="{lang}">' in page.text
        assert word in page.text


async def test_settings_mask_secrets(client: httpx.AsyncClient, session: AsyncSession) -> None:
    from tests.conftest import SECRET

    await add_editor(session)
    await sign_in(client)
    page = await client.get("/desk/settings")
    assert "SECRET_KEY" in page.text
    assert SECRET not in page.text


async def test_hide_show_and_delete_articles(
    client: httpx.AsyncClient, session: AsyncSession
) -> None:
    await add_editor(session)
    await articles.import_feed_document(session, data=SAMPLE.read_bytes())
    await session.commit()
    await sign_in(client)
    token = await csrf_of(client, "/desk/articles")
    listing = await client.get("/desk/articles")
    first = re.findall(r'action="/desk/articles/(\d+)/hide"', listing.text)[0]
    await client.post(f"/desk/articles/{first}/hide", data={"csrf_token": token})
    compose = await client.get("/desk/compose")
    assert f'name="article" value="{first}"' not in compose.text  # not offered any more
    await client.post(f"/desk/articles/{first}/unhide", data={"csrf_token": token})
    assert f'name="article" value="{first}"' in (await client.get("/desk/compose")).text
    deleted = await client.post(f"/desk/articles/{first}/delete", data={"csrf_token": token})
    assert f"/desk/articles/{first}/hide" not in deleted.text


async def test_schedules_are_created_edited_disabled_and_deleted(
    client: httpx.AsyncClient, session: AsyncSession
) -> None:
    from app.models import Schedule

    await add_editor(session)
    await sign_in(client)
    token = await csrf_of(client, "/desk/schedules")
    form = {
        "csrf_token": token,
        "name": "Friday letter",
        "cron": "0 8 * * 5",
        "timezone": "Europe/Paris",
        "cadence": "weekly",
        "min_articles": "1",
        "max_articles": "10",
        "categories": "",
        "enabled": "yes",
    }
    bad = await client.post("/desk/schedules", data={**form, "cron": "every friday"})
    assert bad.status_code == 422
    assert "cron" in bad.text
    assert (await client.post("/desk/schedules", data=form)).status_code == 303
    schedule = (await session.exec(select(Schedule))).one()
    listing = await client.get("/desk/schedules", params={"lang": "en"})
    assert "Friday letter" in listing.text
    assert "enabled" in listing.text
    await client.post(f"/desk/schedules/{schedule.id}/disable", data={"csrf_token": token})
    await session.refresh(schedule)
    assert schedule.enabled is False
    edit = await client.get("/desk/schedules", params={"edit": schedule.id})
    assert 'value="0 8 * * 5"' in edit.text
    changed = {**form, "cron": "30 7 * * *", "cadence": "daily"}
    await client.post(f"/desk/schedules/{schedule.id}", data=changed)
    await session.refresh(schedule)
    assert (schedule.cron, schedule.cadence, schedule.enabled) == ("30 7 * * *", "daily", True)
    await client.post(f"/desk/schedules/{schedule.id}/delete", data={"csrf_token": token})
    assert (await session.exec(select(Schedule))).first() is None


async def test_desk_actions_are_in_the_audit_log_under_the_editor(
    client: httpx.AsyncClient, session: AsyncSession, app: FastAPI
) -> None:
    from app.models import AuditEvent

    await add_editor(session)
    reader = await make_subscriber(session, app.state.tokens, email="zoe@example.org")
    await sign_in(client)
    token = await csrf_of(client)
    refused = await client.post(f"/desk/subscribers/{reader.id}/unsubscribe")
    assert refused.status_code == 403
    assert (await session.exec(select(AuditEvent))).first() is None  # nothing was done
    await client.post(f"/desk/subscribers/{reader.id}/unsubscribe", data={"csrf_token": token})
    event = (await session.exec(select(AuditEvent))).one()
    assert event.actor == "editor:ana@example.org"
    assert event.source == "desk"
    assert event.action == "desk_subscriber_unsubscribe"
    assert (event.target_type, event.target_id) == ("subscriber", str(reader.id))
    assert "zoe" not in (event.detail or "")  # a reader is named by id, never by address


async def test_editor_commands_work_and_are_audited(
    settings: Settings, session: AsyncSession
) -> None:
    from typer.testing import CliRunner

    from app.cli import cli
    from app.models import AuditEvent
    from tests.factories import cli_env

    env = cli_env(settings)

    def run(args: list[str], stdin: str = "") -> Any:
        return CliRunner().invoke(cli, args, env=env, input=stdin)

    added = await asyncio.to_thread(
        run, ["editors", "add", "Cli@Example.org", "--admin", "--password-stdin"], PASSWORD + "\n"
    )
    assert added.exit_code == 0, added.output
    short = await asyncio.to_thread(
        run, ["editors", "add", "b@example.org", "--password-stdin"], "too short\n"
    )
    assert short.exit_code == 1
    assert "at least 12 characters" in short.output
    listed = await asyncio.to_thread(run, ["editors", "list"])
    assert "cli@example.org\tadmin" in listed.output
    reset = await asyncio.to_thread(
        run, ["editors", "reset-password", "cli@example.org", "--password-stdin"], "x" * 12 + "\n"
    )
    assert reset.exit_code == 0, reset.output
    removed = await asyncio.to_thread(run, ["editors", "remove", "cli@example.org"])
    assert removed.exit_code == 0, removed.output
    again = await asyncio.to_thread(run, ["editors", "remove", "cli@example.org"])
    assert again.exit_code == 1
    actions = [e.action for e in (await session.exec(select(AuditEvent))).all()]
    assert actions == ["add_editor", "reset_editor_password", "remove_editor"]


async def test_a_digest_page_shows_the_api_numbers_and_serves_the_clicks_csv(
    database_url: str, smtp_server: SmtpServer, tmp_path: Path
) -> None:
    settings = make_settings(database_url, smtp_server, tmp_path, track_opens=True)
    application = create_app(settings)
    async with application.router.lifespan_context(application):
        transport = httpx.ASGITransport(app=application)
        async with (
            httpx.AsyncClient(transport=transport, base_url="http://testserver") as client,
            application.state.sessionmaker() as session,
        ):
            headers = await make_editor_headers(session)
            for n in range(3):
                await make_subscriber(session, application.state.tokens, email=f"r{n}@example.org")
            await import_feed_sample(session)
            listed = await client.get("/api/v1/articles?limit=2", headers=headers)
            ids = [a["id"] for a in listed.json()["items"]]
            digest = await sent_digest(application, client, headers, article_ids=ids)
            # The copies an hour old: a click now is a reader's, not a scanner's.
            await session.execute(
                sa.update(Delivery)
                .where(col(Delivery.digest_id) == digest["id"])
                .values(sent_at=datetime.now(UTC) - timedelta(hours=1))
            )
            await session.commit()
            copy = smtp_server.messages_to("r0@example.org")[0]
            links = list(
                dict.fromkeys(re.findall(r"http://testserver(/r/[\w.-]+)", text_part(copy)))
            )
            pixel = re.search(r'<img src="http://testserver(/o/[\w.-]+)"', html_part(copy))
            assert pixel is not None
            for link in (links[1], links[1]):  # the second article, twice by one reader
                clicked = await client.get(link, headers={"User-Agent": BROWSER})
                assert clicked.status_code == 302
            assert (await client.get(pixel.group(1))).status_code == 200
            await application.state.click_recorder.flush(everything=True)

            api = (await client.get(f"/api/v1/digests/{digest['id']}", headers=headers)).json()
            figures = api["numbers"]
            assert figures["clicks"]["total"] == 2
            assert figures["clicks"]["unique"] == 1
            await add_editor(session)
            await sign_in(client)
            page = (await client.get(f"/desk/digests/{digest['id']}?lang=en")).text
            assert f'id="n-delivered">{figures["delivered"]}<' in page
            assert figures["delivered"] == 3
            assert f'id="n-clicks">{figures["clicks"]["total"]}<' in page
            assert f'id="n-unique">{figures["clicks"]["unique"]}<' in page
            assert f'id="n-opens">{figures["opens"]["total"]}<' in page
            assert "Apple Mail Privacy Protection" in page
            second = figures["articles"][1]
            row = re.search(
                r'<tr><td>2</td><td><a href="[^"]+"[^>]*>[^<]+</a></td>(.*?)</tr>', page
            )
            assert row is not None
            assert row.group(1) == (
                f"<td>{second['clicks']}</td><td>{second['unique']}</td><td>{second['machine']}</td>"
            )
            # The API's CSV (Bearer only) and the desk's (signed-in editor) are the same file.
            desk_csv = await client.get(f"/desk/digests/{digest['id']}/clicks.csv")
            api_csv = await client.get(
                f"/api/v1/digests/{digest['id']}/clicks.csv", headers=headers
            )
            assert desk_csv.status_code == api_csv.status_code == 200
            assert desk_csv.headers["content-type"] == "text/csv; charset=utf-8"
            assert desk_csv.text == api_csv.text
            assert desk_csv.text.splitlines()[2].endswith(",2,1,0")
            assert (await client.get("/desk/digests/999999/clicks.csv")).status_code == 404
            # The overview's last digests: a clicks column.
            overview = (await client.get("/desk?lang=en")).text
            assert '<th scope="col">Clicks</th>' in overview
            assert f"<td>{figures['delivered']}</td><td>0</td><td>2</td></tr>" in overview
            await client.post("/desk/logout", data={"csrf_token": await csrf_of(client)})
            assert (await client.get(f"/desk/digests/{digest['id']}/clicks.csv")).status_code == 303


async def test_a_send_is_scheduled_in_the_desk_time_zone_and_unscheduled(
    client: httpx.AsyncClient, session: AsyncSession, app: FastAPI
) -> None:
    await add_editor(session)
    await make_subscriber(session, app.state.tokens, email="reader@example.org")
    await import_feed_sample(session)
    await sign_in(client)
    compose = await client.get("/desk/compose")
    ids = re.findall(r'name="article" value="(\d+)"', compose.text)
    token = await csrf_of(client)
    created = await client.post("/desk/compose", data={"csrf_token": token, "article": ids[:1]})
    digest_url = created.headers["location"]
    digest_id = int(digest_url.rsplit("/", 1)[1])
    paris = ZoneInfo("Europe/Paris")
    local = (datetime.now(paris) + timedelta(days=2)).replace(
        hour=7, minute=30, second=0, microsecond=0
    )
    field = local.strftime("%Y-%m-%dT%H:%M")
    # Without the confirmation, with a past time, with no time: the page again, nothing set.
    for form, status in (
        ({"send_at": field}, 422),
        ({"send_at": "2020-01-01T07:00", "confirm": "yes"}, 422),
        ({"send_at": "soon", "confirm": "yes"}, 422),
    ):
        refused = await client.post(f"{digest_url}/schedule", data={"csrf_token": token, **form})
        assert refused.status_code == status
    assert (await session.get(Digest, digest_id, populate_existing=True)).send_at is None  # type: ignore[union-attr]
    scheduled = await client.post(
        f"{digest_url}/schedule", data={"csrf_token": token, "send_at": field, "confirm": "yes"}
    )
    assert scheduled.status_code == 303
    digest = await session.get(Digest, digest_id, populate_existing=True)
    assert digest is not None
    assert digest.status == DigestStatus.draft
    assert digest.send_at is not None
    assert as_utc(digest.send_at) == local.astimezone(UTC)  # 07:30 in Paris, not in UTC
    page = (await client.get(f"{digest_url}?lang=en")).text
    assert "Scheduled for" in page
    assert "Europe/Paris" in page
    assert "7:30" in page
    listing = (await client.get("/desk/digests?lang=fr")).text
    assert "Programmé pour le" in listing
    assert "07:30" in listing
    unscheduled = await client.post(f"{digest_url}/unschedule", data={"csrf_token": token})
    assert unscheduled.status_code == 303
    session.expire_all()
    digest = await session.get(Digest, digest_id)
    assert digest is not None
    assert digest.send_at is None
    assert digest.status == DigestStatus.draft
    assert "Scheduled for" not in (await client.get(f"{digest_url}?lang=en")).text
    # Once sent, too late to schedule or unschedule.
    await client.post(f"{digest_url}/send", data={"csrf_token": token, "confirm": "yes"})
    late = await client.post(
        f"{digest_url}/schedule", data={"csrf_token": token, "send_at": field, "confirm": "yes"}
    )
    assert late.status_code == 409
    assert (
        await client.post(f"{digest_url}/unschedule", data={"csrf_token": token})
    ).status_code == 409
