"""Attacks on the public surface: tokens, header injection, markup, SQL, body size, API keys,
CORS and security headers."""

from __future__ import annotations

import asyncio
import re
import secrets
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from itsdangerous import URLSafeSerializer
from sqlmodel import func, select
from sqlmodel.ext.asyncio.session import AsyncSession

from app import editors
from app.config import Settings
from app.deps import EditorDep
from app.models import Subscriber, SubscriberStatus
from app.security import CONFIRM_SALT, UNSUBSCRIBE_SALT, Tokens
from tests.conftest import SECRET, make_settings
from tests.factories import drain_outbox, html_part, make_subscriber, text_part
from tests.live_server import LiveServer
from tests.smtp_server import SmtpServer

SITE = "https://www.dzaleu.test"


@pytest.fixture
def settings(database_url: str, smtp_server: SmtpServer, tmp_path: Path) -> Settings:
    return make_settings(
        database_url, smtp_server, tmp_path, site_origins=f"{SITE}, https://partner.test/"
    )


async def status_of(session: AsyncSession, subscriber_id: int) -> str:
    session.expire_all()
    subscriber = await session.get(Subscriber, subscriber_id)
    assert subscriber is not None
    return subscriber.status


# --- Tokens ------------------------------------------------------------------------------------


def forged_tokens(tokens: Tokens, subscriber: Subscriber) -> dict[str, str]:
    """Every way a token can be wrong, except cross-purpose (tested apart)."""
    assert subscriber.id is not None
    confirm = tokens.confirm_token(subscriber.id, subscriber.email_hash)
    unsubscribe = tokens.unsubscribe_token(subscriber.id, subscriber.email_hash)
    other_secret = Tokens("another-secret-0123456789abcdef", confirm_max_age_seconds=3600)
    return {
        "garbage": "not-a-token",
        "empty-ish": ".",
        "truncated-confirm": confirm[:-1],
        "half-confirm": confirm[: len(confirm) // 2],
        "truncated-unsubscribe": unsubscribe[:-1],
        "half-unsubscribe": unsubscribe[: len(unsubscribe) // 2],
        "flipped-signature": unsubscribe[:-2] + ("AA" if not unsubscribe.endswith("AA") else "BB"),
        "other-secret-confirm": other_secret.confirm_token(subscriber.id, subscriber.email_hash),
        "other-secret-unsubscribe": other_secret.unsubscribe_token(
            subscriber.id, subscriber.email_hash
        ),
        # Signed with the real key, but naming someone else or carrying a bad payload: only a
        # leaked key could make these, and they must still fail cleanly.
        "wrong-tag": tokens.unsubscribe_token(subscriber.id, "0" * 16),
        "unknown-id": tokens.unsubscribe_token(999_999, subscriber.email_hash),
        "bad-payload-dict": URLSafeSerializer(SECRET, salt=UNSUBSCRIBE_SALT).dumps({"id": 1}),
        "bad-payload-str-id": URLSafeSerializer(SECRET, salt=UNSUBSCRIBE_SALT).dumps(["1", "x"]),
        "bad-payload-confirm": URLSafeSerializer(SECRET, salt=CONFIRM_SALT).dumps([1, 2, 3]),
        "huge": "A" * 20_000,
        "sql": "1' OR '1'='1",
        "percent": "%00%0d%0a",
    }


@pytest.mark.parametrize("lang", ["fr", "en"])
async def test_forged_tokens_change_nothing_and_answer_400(
    client: httpx.AsyncClient, app: FastAPI, session: AsyncSession, lang: str
) -> None:
    tokens = app.state.tokens
    pending = await make_subscriber(
        session, tokens, email="p@example.org", status=SubscriberStatus.pending
    )
    confirmed = await make_subscriber(session, tokens, email="c@example.org")
    unsubscribed = await make_subscriber(
        session, tokens, email="u@example.org", status=SubscriberStatus.unsubscribed
    )
    ids = {s.id: s.status for s in (pending, confirmed, unsubscribed)}
    for target in (pending, confirmed, unsubscribed):
        for why, token in forged_tokens(tokens, target).items():
            for method, path in (
                ("GET", f"/confirm/{token}"),
                ("POST", f"/confirm/{token}"),
                ("GET", f"/unsubscribe/{token}"),
                ("POST", f"/unsubscribe/{token}"),
                ("POST", f"/resubscribe/{token}"),
            ):
                response = await client.request(
                    method,
                    path,
                    params={"lang": lang},
                    data={"List-Unsubscribe": "One-Click"} if method == "POST" else None,
                )
                # A 404 is fine for tokens that cannot be a path segment; never a 2xx or 5xx.
                assert response.status_code in (400, 404, 405), (why, method, path)
                if response.status_code == 400:
                    assert f'lang="{lang}"' in response.text
                    assert "/subscribe" in response.text, (why, path)
    for subscriber_id, status in ids.items():
        assert subscriber_id is not None
        assert await status_of(session, subscriber_id) == status


async def test_cross_purpose_tokens_are_refused_both_ways(
    client: httpx.AsyncClient, app: FastAPI, session: AsyncSession
) -> None:
    tokens = app.state.tokens
    pending = await make_subscriber(
        session, tokens, email="p@example.org", status=SubscriberStatus.pending
    )
    confirmed = await make_subscriber(session, tokens, email="c@example.org")
    assert pending.id
    assert confirmed.id
    pending_id, confirmed_id, pending_hash = pending.id, confirmed.id, pending.email_hash

    # A confirm token (what every signup receives, for any address typed) must never unsubscribe
    # or resubscribe anyone, on GET or POST, one-click or not.
    for subscriber_id, email_hash in (
        (pending_id, pending_hash),
        (confirmed_id, confirmed.email_hash),
    ):
        confirm = tokens.confirm_token(subscriber_id, email_hash)
        assert (await client.get(f"/unsubscribe/{confirm}")).status_code == 400
        for data in (None, {"List-Unsubscribe": "One-Click"}):
            assert (await client.post(f"/unsubscribe/{confirm}", data=data)).status_code == 400
        assert (await client.post(f"/resubscribe/{confirm}")).status_code == 400
    assert await status_of(session, confirmed_id) == SubscriberStatus.confirmed

    # An unsubscribe token must never confirm a pending address.
    unsubscribe = tokens.unsubscribe_token(pending_id, pending_hash)
    assert (await client.get(f"/confirm/{unsubscribe}")).status_code == 400
    assert (await client.post(f"/confirm/{unsubscribe}")).status_code == 400
    assert await status_of(session, pending_id) == SubscriberStatus.pending


async def test_token_of_one_reader_does_not_touch_another(
    client: httpx.AsyncClient, app: FastAPI, session: AsyncSession
) -> None:
    tokens = app.state.tokens
    alice = await make_subscriber(session, tokens, email="alice@example.org")
    bob = await make_subscriber(session, tokens, email="bob@example.org")
    assert alice.id
    assert bob.id
    alice_id, bob_id = alice.id, bob.id
    # Alice's id with Bob's address tag: a valid signature cannot bridge two readers.
    mixed = tokens.unsubscribe_token(alice_id, bob.email_hash)
    assert (await client.post(f"/unsubscribe/{mixed}")).status_code == 400
    assert await status_of(session, alice_id) == SubscriberStatus.confirmed
    assert await status_of(session, bob_id) == SubscriberStatus.confirmed


# --- Header injection, long values, markup, SQL ------------------------------------------------

HOSTILE_NAMES = [
    "Eve\r\nBcc: victim@example.net",
    "Eve\nSubject: hijacked",
    "Eve\rX-Injected: 1",
    "Eve\x00\x0b\x0c\x1b[31m",
    "Eve\u2028Bcc: ls@example.net",  # Unicode line separator
    "Eve\x85Bcc: nel@example.net",  # NEL
    "=?utf-8?q?Eve=0D=0ABcc:_x@example.net?=",  # a pre-encoded word
    "x" * 200,  # the longest allowed name, one unbreakable word
    "Ève " * 50,
    '"><script>alert(1)</script>',
    "javascript:alert(document.cookie)",
    '<a href="javascript:alert(1)">clic</a>',
    "<img src=x onerror=alert(1)>",
    "Robert'); DROP TABLE subscriber;--",
    "' OR 1=1 --",
]


@pytest.mark.parametrize("name", HOSTILE_NAMES)
async def test_hostile_names_never_reach_headers_or_markup(
    client: httpx.AsyncClient, app: FastAPI, smtp_server: SmtpServer, name: str
) -> None:
    response = await client.post(
        "/api/v1/subscriptions", json={"email": "eve@example.org", "name": name}
    )
    assert response.status_code == 202
    report = await drain_outbox(app)
    assert report.sent == 1, report.errors
    [received] = smtp_server.received
    assert received.rcpt_tos == ["eve@example.org"]
    raw_headers = received.data.split(b"\r\n\r\n", 1)[0]
    header_names = {
        line.split(b":", 1)[0].lower()
        for line in raw_headers.split(b"\r\n")
        if line and not line[:1].isspace()
    }
    assert header_names <= {
        b"from",
        b"to",
        b"subject",
        b"date",
        b"message-id",
        b"auto-submitted",
        b"content-type",
        b"mime-version",
        b"content-transfer-encoding",
    }, header_names
    for line in raw_headers.split(b"\r\n"):
        assert len(line) <= 998  # RFC 5322 2.1.1
    message = received.message
    assert message["Bcc"] is None
    assert message["X-Injected"] is None
    assert "eve@example.org" in message["To"]
    assert "hijacked" not in message["Subject"]
    html = html_part(message)
    assert "<script" not in html
    assert "<img" not in html
    assert not re.search(r"<a\s[^>]*href=[\"']?\s*javascript:", html, re.IGNORECASE)
    assert text_part(message)  # the text part is plain text: markup there is inert


@pytest.mark.parametrize(
    "value",
    [
        "=?utf-8?q?Hello=0D=0ABcc:_victim@example.net?=",
        "=?utf-8?b?SGVsbG8NCkJjYzogdmljdGltQGV4YW1wbGUubmV0?=",
        "News =?UTF-8?Q?=0ABcc:_victim@example.net?= today",
        "Hello\r\nBcc: victim@example.net",
    ],
)
def test_no_header_injection_through_subject_or_extra_headers(value: str) -> None:
    """The email package decodes RFC 2047 words when a header is set and would write a decoded
    CR LF out raw: every header value goes through header_safe first."""
    from email import message_from_bytes
    from email import policy as email_policy

    from app.mail.message import build_message

    msg = build_message(
        mail_from="Site <news@example.org>",
        to_name=value,
        to_address="reader@example.org",
        subject=value,
        text="t",
        html="<p>h</p>",
        message_id="<1@example.org>",
        headers={"List-Id": value},
    )
    raw = msg.as_bytes()
    head = raw.split(b"\r\n\r\n", 1)[0]
    assert b"\r\nBcc:" not in head
    parsed = message_from_bytes(raw, policy=email_policy.default)
    assert parsed["Bcc"] is None
    assert "reader@example.org" in parsed["To"]


@pytest.mark.parametrize(
    "email",
    [
        "a@example.org\r\nBcc: victim@example.net",
        "a@example.org\nBcc: victim@example.net",
        "a@example.org%0d%0aBcc:victim@example.net",
        "a@example.org, victim@example.net",
        "Eve <a@example.org>",
        "a@example.org>\r\nRCPT TO:<victim@example.net",
        "x" * 400 + "@example.org",
        "a@" + "b" * 300 + ".org",
        "'; DROP TABLE subscriber; --@example.org",
        '" OR ""="@example.org',
        "<script>@example.org",
        "javascript:alert(1)@example.org",
    ],
)
async def test_hostile_emails_are_422_and_send_nothing(
    client: httpx.AsyncClient, app: FastAPI, smtp_server: SmtpServer, email: str
) -> None:
    response = await client.post("/api/v1/subscriptions", json={"email": email})
    assert response.status_code == 422
    assert "email" in response.text
    page = await client.post("/subscribe", data={"email": email, "name": "Eve"})
    assert page.status_code == 422
    assert "<script>@" not in page.text
    await drain_outbox(app)
    assert smtp_server.received == []


async def test_sql_metacharacters_are_data(
    client: httpx.AsyncClient, app: FastAPI, session: AsyncSession
) -> None:
    name = "Robert'); DROP TABLE subscriber;--"
    for email in ("o'reilly@example.org", "x+'--@example.org", "percent%_@example.org"):
        response = await client.post("/api/v1/subscriptions", json={"email": email, "name": name})
        assert response.status_code == 202, email
    rows = (await session.exec(select(Subscriber).order_by(Subscriber.id))).all()  # type: ignore[arg-type]
    assert [r.email for r in rows] == [
        "o'reilly@example.org",
        "x+'--@example.org",
        "percent%_@example.org",
    ]
    assert {r.name for r in rows} == {name}
    # A LIKE wildcard or quote in a query parameter changes nothing either.
    for lang in ("' OR '1'='1", "%", "fr'--", "en\x00"):
        page = await client.get("/subscribe", params={"lang": lang})
        assert page.status_code == 200
        assert 'lang="fr"' in page.text


SQL_VALUES = [
    "' OR '1'='1",
    "1; DROP TABLE subscriber; --",
    "%",
    "_",
    "\\",
    '"',
    "1 UNION SELECT 1",
]


async def test_sql_metacharacters_in_every_documented_query_parameter(
    client: httpx.AsyncClient, app: FastAPI, session: AsyncSession
) -> None:
    """Covers search and filter parameters added later: every GET operation's query parameters
    get SQL metacharacters (with a valid editor key): no 5xx, and the tables are intact."""
    await make_subscriber(session, app.state.tokens, email="kept@example.org")
    _, key = await editors.create_api_key(session, name="sql")
    await session.commit()
    headers = {"Authorization": f"Bearer {key}"}
    for path, operations in app.openapi()["paths"].items():
        operation = operations.get("get")
        if operation is None:
            continue
        concrete = path
        for parameter in operation.get("parameters", []):
            if parameter["in"] == "path":
                concrete = concrete.replace("{" + parameter["name"] + "}", "1")
        names = [p["name"] for p in operation.get("parameters", []) if p["in"] == "query"]
        for value in SQL_VALUES:
            params = {name: value for name in names} or {"q": value}
            response = await client.get(concrete, params=params, headers=headers)
            assert response.status_code < 500, (path, params, response.text[:200])
    count = (await session.exec(select(func.count()).select_from(Subscriber))).one()
    assert count == 1


async def test_form_echoes_hostile_values_escaped(client: httpx.AsyncClient) -> None:
    payload = '"><script>alert(1)</script><a href="javascript:alert(2)">'
    page = await client.post("/subscribe", data={"email": payload, "name": payload})
    assert page.status_code == 422
    assert "<script>alert(1)" not in page.text
    assert 'href="javascript:' not in page.text
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page.text


async def test_long_values_are_refused_cleanly(client: httpx.AsyncClient) -> None:
    api = await client.post(
        "/api/v1/subscriptions", json={"email": "a@example.org", "name": "n" * 201}
    )
    assert api.status_code == 422
    assert "name" in api.text
    form = await client.post("/subscribe", data={"email": "a@example.org", "name": "n" * 1000})
    assert form.status_code == 422
    assert 'id="name-error"' in form.text
    huge = await client.post("/subscribe", data={"email": "a@example.org", "name": "n" * 50_000})
    assert huge.status_code == 422
    lang = await client.post("/subscribe", data={"email": "a@example.org", "language": "x" * 999})
    assert lang.status_code == 422


# --- Request size ------------------------------------------------------------------------------


async def _chunks(total: int, prefix: bytes = b"", size: int = 64 * 1024) -> AsyncIterator[bytes]:
    yield prefix
    sent = len(prefix)
    while sent < total:
        chunk = b"a" * min(size, total - sent)
        sent += len(chunk)
        yield chunk


@pytest.mark.parametrize(
    ("path", "content_type"),
    [
        ("/api/v1/subscriptions", "application/json"),
        ("/subscribe", "application/x-www-form-urlencoded"),
        ("/subscribe", "multipart/form-data; boundary=xyz"),
        ("/unsubscribe/sometoken", "application/x-www-form-urlencoded"),
    ],
)
async def test_bodies_over_the_limit_get_413(
    client: httpx.AsyncClient, app: FastAPI, path: str, content_type: str
) -> None:
    limit = app.state.settings.max_request_bytes
    headers = {"content-type": content_type}
    announced = await client.post(path, content=b"a" * (limit + 1), headers=headers)
    assert announced.status_code == 413
    assert "too large" in announced.json()["detail"]
    # Chunked: no Content-Length, the limit is counted as the body streams in.
    prefix = b""
    if content_type.startswith("multipart/"):
        prefix = b'--xyz\r\nContent-Disposition: form-data; name="name"\r\n\r\n'
    chunked = await client.post(path, content=_chunks(limit + 10, prefix), headers=headers)
    assert chunked.status_code == 413, chunked.text
    lying = await client.post(
        path, content=b"a" * (limit + 1), headers={**headers, "content-length": "10"}
    )
    assert lying.status_code != 500
    garbage_length = await client.post(
        path, content=b"{}", headers={**headers, "content-length": "abc"}
    )
    assert garbage_length.status_code in (400, 413, 422)


async def test_body_at_the_limit_is_accepted(client: httpx.AsyncClient, app: FastAPI) -> None:
    limit = app.state.settings.max_request_bytes
    body = b'{"email": "a@example.org", "name": null}'
    body = body[:-1] + b" " * (limit - len(body)) + b"}"
    assert len(body) == limit
    response = await client.post(
        "/api/v1/subscriptions", content=body, headers={"content-type": "application/json"}
    )
    assert response.status_code == 202


def test_413_over_real_http_chunked_and_announced(settings: Settings) -> None:
    from app.main import create_app

    with LiveServer(create_app(settings)) as server, httpx.Client(base_url=server.url) as http:
        limit = settings.max_request_bytes

        def stream() -> Any:
            for _ in range(limit // 65536 + 2):
                yield b"a" * 65536

        headers = {"content-type": "application/json"}
        chunked = http.post("/api/v1/subscriptions", content=stream(), headers=headers)
        assert chunked.status_code == 413
        announced = http.post("/api/v1/subscriptions", content=b"a" * (limit + 1), headers=headers)
        assert announced.status_code == 413
        assert http.get("/healthz").status_code == 200  # the server is still fine


async def test_head_is_a_get_without_its_body_over_real_http(
    app: FastAPI, settings: Settings, session: AsyncSession
) -> None:
    """Link checkers and mail scanners try links with HEAD: a page answers as its GET would,
    without a body, and changes nothing; a resource without GET still answers 405."""
    from app.main import create_app

    tokens: Tokens = app.state.tokens
    reader = await make_subscriber(session, tokens, email="head@example.org")
    waiting = await make_subscriber(
        session, tokens, email="wait@example.org", status=SubscriberStatus.pending
    )
    reader_id, waiting_id = reader.id, waiting.id
    assert reader_id is not None
    assert waiting_id is not None
    leave = f"/unsubscribe/{tokens.unsubscribe_token(reader_id, reader.email_hash)}"
    confirm = f"/confirm/{tokens.confirm_token(waiting_id, waiting.email_hash)}"

    def over_http() -> None:
        with LiveServer(create_app(settings)) as server, httpx.Client(base_url=server.url) as http:
            for path in ("/subscribe", "/archive", "/healthz", leave, confirm):
                got, head = http.get(path), http.head(path)
                assert head.status_code == got.status_code == 200, path
                assert head.content == b"", path
                assert head.headers["content-type"] == got.headers["content-type"], path
                assert head.headers["content-length"] == str(len(got.content)), path
            refused = http.head("/api/v1/digests/1/send")
            assert (refused.status_code, refused.headers["allow"]) == (405, "POST")
            assert http.head("/nowhere").status_code == 404

    await asyncio.to_thread(over_http)
    assert await status_of(session, reader_id) == SubscriberStatus.confirmed
    assert await status_of(session, waiting_id) == SubscriberStatus.pending


def test_head_of_a_streamed_export_stops_making_it() -> None:
    """A HEAD of a streamed body (an export of the whole list) sends the headers and stops the
    stream, as when a client goes away: over ASGI and over real HTTP (uvicorn)."""
    from starlette.responses import StreamingResponse

    from app.http import HeadAsGet

    made: list[int] = []

    async def rows() -> AsyncIterator[bytes]:
        for n in range(1000):
            made.append(n)
            yield b"reader%d@example.org\r\n" % n
            await asyncio.sleep(0)

    inner = FastAPI()  # its routes declare GET alone, as the app's

    @inner.get("/export")
    async def export() -> StreamingResponse:
        return StreamingResponse(rows(), media_type="text/csv")

    app = HeadAsGet(inner)

    async def over_asgi() -> httpx.Response:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
            return await client.head("/export")

    head = asyncio.run(over_asgi())
    assert (head.status_code, head.headers["content-type"], head.content) == (
        200,
        "text/csv; charset=utf-8",
        b"",
    )
    assert len(made) < 5
    made.clear()
    with LiveServer(app) as server, httpx.Client(base_url=server.url) as http:
        assert http.head("/export").status_code == 200
        assert http.get("/healthz").status_code == 404  # the server carries on
        assert len(made) < 5
        assert len(http.get("/export").content.splitlines()) == 1000


# --- Editor API keys ---------------------------------------------------------------------------


def add_editor_probe(app: FastAPI) -> str:
    """A route behind EditorDep, so the key check is tested whatever editor routes exist."""

    async def probe(editor: EditorDep) -> dict[str, str]:
        return {"name": editor.name}

    app.add_api_route("/api/v1/_probe", probe, methods=["GET"])
    return "/api/v1/_probe"


async def test_guessed_and_revoked_api_keys_get_401(
    client: httpx.AsyncClient, app: FastAPI, session: AsyncSession
) -> None:
    path = add_editor_probe(app)
    _, key = await editors.create_api_key(session, name="newsroom")
    _, old = await editors.create_api_key(session, name="former")
    await session.commit()
    await editors.revoke_api_key(session, name="former")
    await session.commit()

    ok = await client.get(path, headers={"Authorization": f"Bearer {key}"})
    assert ok.status_code == 200
    assert ok.json() == {"name": "newsroom"}
    for headers in (
        {},
        {"Authorization": ""},
        {"Authorization": "Bearer"},
        {"Authorization": "Bearer "},
        {"Authorization": f"Bearer {old}"},  # revoked
        {"Authorization": f"Bearer {key[:-1]}"},  # truncated
        {"Authorization": f"Bearer {key}x"},
        {"Authorization": f"Bearer {key.upper()}"},
        {"Authorization": f"Bearer nl_{secrets.token_urlsafe(32)}"},  # guessed
        {"Authorization": f"Basic {key}"},
        {"Authorization": f"Token {key}"},
        {"Authorization": "Bearer " + "k" * 10_000},
        {"Authorization": "Bearer ' OR '1'='1"},
        {"X-Api-Key": key},
    ):
        try:
            response = await client.get(path, headers=headers)
        except httpx.LocalProtocolError:
            continue  # the client refuses to send it at all
        assert response.status_code == 401, headers
        assert response.headers["www-authenticate"] == "Bearer"
        assert "newsroom" not in response.text


async def test_every_documented_editor_operation_refuses_a_guessed_key(
    client: httpx.AsyncClient, app: FastAPI
) -> None:
    """Covers the editor routes others add: every operation documented as needing the bearer key
    answers 401 to a guessed key, before looking at anything else."""
    schema = app.openapi()
    guessed = {"Authorization": f"Bearer nl_{secrets.token_urlsafe(32)}"}
    checked = 0
    for path, operations in schema["paths"].items():
        for method, operation in operations.items():
            if not operation.get("security"):
                continue
            concrete = path
            for parameter in operation.get("parameters", []):
                if parameter["in"] == "path":
                    concrete = concrete.replace("{" + parameter["name"] + "}", "1")
            response = await client.request(method.upper(), concrete, headers=guessed, json={})
            assert response.status_code == 401, (method, path)
            checked += 1
    public = {"/subscribe", "/api/v1/subscriptions", "/healthz", "/metrics"}
    editor_paths = [p for p in schema["paths"] if p.startswith("/api/v1/") and p not in public]
    assert checked >= len(editor_paths)


# --- CORS --------------------------------------------------------------------------------------


@pytest.mark.parametrize("path", ["/subscribe", "/api/v1/subscriptions"])
@pytest.mark.parametrize("origin", [SITE, "https://partner.test"])
async def test_cors_allows_the_site_on_public_signup(
    client: httpx.AsyncClient, path: str, origin: str
) -> None:
    preflight = await client.options(
        path,
        headers={
            "Origin": origin,
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "content-type",
        },
    )
    assert preflight.status_code == 200
    assert preflight.headers["access-control-allow-origin"] == origin
    assert "POST" in preflight.headers["access-control-allow-methods"]
    assert "access-control-allow-credentials" not in preflight.headers

    if path == "/subscribe":
        simple = await client.post(
            path, data={"email": "a@example.org"}, headers={"Origin": origin}
        )
    else:
        simple = await client.post(
            path, json={"email": "a@example.org"}, headers={"Origin": origin}
        )
    assert simple.status_code in (200, 202)
    assert simple.headers["access-control-allow-origin"] == origin


@pytest.mark.parametrize("path", ["/subscribe", "/api/v1/subscriptions"])
@pytest.mark.parametrize(
    "origin",
    ["https://evil.test", "https://www.dzaleu.test.evil.test", "http://www.dzaleu.test", "null"],
)
async def test_cors_refuses_unlisted_origins(
    client: httpx.AsyncClient, path: str, origin: str
) -> None:
    preflight = await client.options(
        path, headers={"Origin": origin, "Access-Control-Request-Method": "POST"}
    )
    assert "access-control-allow-origin" not in preflight.headers
    simple = await client.post(path, json={"email": "a@example.org"}, headers={"Origin": origin})
    assert "access-control-allow-origin" not in simple.headers


@pytest.mark.parametrize(
    "path",
    [
        "/api/v1/articles",
        "/api/v1/digests",
        "/api/v1/digests/1/send",
        "/api/v1/subscribers",
        "/api/v1/bounces",
        "/api/v1/feeds",
        "/api/v1/subscriptions/",
        "/metrics",
        "/healthz",
        "/confirm/x",
        "/unsubscribe/x",
    ],
)
async def test_cors_never_on_editor_or_other_endpoints(
    client: httpx.AsyncClient, path: str
) -> None:
    for method in ("GET", "POST", "DELETE", "PATCH"):
        preflight = await client.options(
            path,
            headers={
                "Origin": SITE,
                "Access-Control-Request-Method": method,
                "Access-Control-Request-Headers": "authorization",
            },
        )
        assert "access-control-allow-origin" not in preflight.headers, (path, method)
    simple = await client.get(path, headers={"Origin": SITE, "Authorization": "Bearer x"})
    assert "access-control-allow-origin" not in simple.headers


async def test_cors_preflight_refuses_the_authorization_header_on_public_endpoints(
    client: httpx.AsyncClient,
) -> None:
    preflight = await client.options(
        "/api/v1/subscriptions",
        headers={
            "Origin": SITE,
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "authorization",
        },
    )
    assert preflight.status_code == 400


# --- Security headers --------------------------------------------------------------------------


def csp_directives(response: httpx.Response) -> dict[str, str]:
    csp = response.headers["content-security-policy"]
    return {
        part.strip().split(" ", 1)[0]: part.strip().partition(" ")[2]
        for part in csp.split(";")
        if part.strip()
    }


async def test_signup_form_is_embeddable_by_the_site_only(client: httpx.AsyncClient) -> None:
    for response in (
        await client.get("/subscribe"),
        await client.get("/subscribe?lang=en"),
        await client.post("/subscribe", data={"email": "a@example.org"}),
        await client.post("/subscribe", data={"email": "bad"}),
    ):
        assert response.headers["x-content-type-options"] == "nosniff"
        assert response.headers["referrer-policy"] == "no-referrer"
        assert "x-frame-options" not in response.headers
        csp = csp_directives(response)
        assert csp["frame-ancestors"].split() == ["'self'", SITE, "https://partner.test"]
        assert csp["script-src"] == "'none'"
        assert csp["default-src"] == "'self'"
        assert csp["base-uri"] == "'none'"
        assert csp["form-action"] == "'self'"


async def test_other_pages_cannot_be_framed(
    client: httpx.AsyncClient, app: FastAPI, session: AsyncSession
) -> None:
    subscriber = await make_subscriber(session, app.state.tokens)
    assert subscriber.id is not None
    token = app.state.tokens.unsubscribe_token(subscriber.id, subscriber.email_hash)
    for response in (
        await client.get(f"/unsubscribe/{token}"),
        await client.post(f"/unsubscribe/{token}"),
        await client.get("/confirm/forged"),
        await client.get("/healthz"),
        await client.get("/metrics"),
        await client.get("/nowhere"),
        await client.get("/static/pages.css"),
    ):
        assert response.headers["x-frame-options"] == "DENY", response.url
        assert response.headers["x-content-type-options"] == "nosniff"
        assert response.headers["referrer-policy"] == "no-referrer"
        assert csp_directives(response)["frame-ancestors"] == "'none'"


async def test_html_pages_load_nothing_from_elsewhere(client: httpx.AsyncClient) -> None:
    page = await client.get("/subscribe")
    assert "<script" not in page.text
    assert 'href="/static/pages.css"' in page.text
    assert 'content="no-referrer"' in page.text


async def test_only_the_confirmation_page_runs_a_script_and_only_ours(
    client: httpx.AsyncClient, app: FastAPI, session: AsyncSession
) -> None:
    pending = await make_subscriber(session, app.state.tokens, status=SubscriberStatus.pending)
    assert pending.id is not None
    page = await client.get(
        f"/confirm/{app.state.tokens.confirm_token(pending.id, pending.email_hash)}"
    )
    assert page.status_code == 200
    assert csp_directives(page)["script-src"] == "'self'"  # no inline script, no other host
    assert re.findall(r"<script[^>]*>", page.text) == ['<script src="/static/confirm.js" defer>']
    script = await client.get("/static/confirm.js")
    assert script.status_code == 200
    assert "javascript" in script.headers["content-type"]
    for other in ("/subscribe", "/confirm/forged", "/healthz"):
        assert csp_directives(await client.get(other))["script-src"] == "'none'", other


async def test_security_headers_also_on_errors(client: httpx.AsyncClient) -> None:
    response = await client.post("/api/v1/subscriptions", json={"email": "x"})
    assert response.status_code == 422
    assert response.headers["x-content-type-options"] == "nosniff"


async def test_signup_answer_does_not_reveal_membership(
    client: httpx.AsyncClient, app: FastAPI, session: AsyncSession
) -> None:
    await make_subscriber(session, app.state.tokens, email="known@example.org")
    known = await client.post("/api/v1/subscriptions", json={"email": "known@example.org"})
    unknown = await client.post("/api/v1/subscriptions", json={"email": "new@example.org"})
    assert known.status_code == unknown.status_code == 202
    assert known.json() == unknown.json()
    count = (await session.exec(select(func.count()).select_from(Subscriber))).one()
    assert count == 2


def test_link_tokens_are_what_itsdangerous_signs_and_reads() -> None:
    """Unsubscribe and preferences links are signed by a fast path (security._LinkSigner):
    the same token as itsdangerous's dumps, read back by its loads, with rotated keys too."""
    tokens = Tokens(SECRET, confirm_max_age_seconds=60, fallback_keys=["an older key" * 4])
    rng = secrets.SystemRandom()
    for _ in range(500):
        subscriber_id = rng.randint(1, 10**9)
        email_hash = secrets.token_hex(32)
        unsubscribe = tokens.unsubscribe_token(subscriber_id, email_hash)
        assert unsubscribe == tokens._unsubscribe.dumps([subscriber_id, email_hash[:16]])
        assert tokens.read_unsubscribe_token(unsubscribe) == (subscriber_id, email_hash[:16])
        preferences = tokens.preferences_token(subscriber_id, email_hash)
        assert tokens.read_preferences_token(preferences) == (subscriber_id, email_hash[:16])
    # A payload zlib would shrink: itsdangerous compresses it, the fast path does not; both
    # forms are read.
    compressible = tokens.unsubscribe_token(7, "0" * 64)
    assert tokens._unsubscribe.dumps([7, "0" * 16]).startswith(".")
    assert tokens.read_unsubscribe_token(compressible) == (7, "0" * 16)
    # Signed with the newest key: a server that knows only it reads the token.
    assert Tokens(SECRET, confirm_max_age_seconds=60).read_unsubscribe_token(compressible)
