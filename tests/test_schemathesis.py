"""Schemathesis against the real app, as a client would run it.

`st run <server>/openapi.json --checks all`: every operation of the document the app serves
(routes added later are covered without touching this file), every check, every phase
(examples, coverage, fuzzing, and the stateful phase that follows the document's links), with
an editor key and seeded data (the sample feed imported, a subscriber), against the app served
by uvicorn with its sender running. What the checks may excuse is in schemathesis.toml, each
entry with its reason; the only 5xx allowed is the documented 502 of an unfetchable feed.
The seed is fixed so a failure reproduces; `st run` without `--seed` explores further.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
from fastapi import FastAPI

from app import editors, keys
from app.articles import service as articles
from app.config import ROOT
from app.db import make_engine, make_sessionmaker
from app.main import create_app
from tests.conftest import TEST_DATABASE_URL, make_settings
from tests.factories import make_subscriber
from tests.live_server import LiveServer
from tests.smtp_server import SmtpServer

MAX_EXAMPLES = 15
SEED = 20261129
ST = Path(sys.executable).parent / "st"
SAMPLE = ROOT / "samples" / "wordpress-feed-fr.xml"


async def _seed(app: FastAPI) -> str:
    """An editor key, the sample feed's articles and a confirmed reader."""
    engine = make_engine(app.state.settings.database_url)
    try:
        await keys.ensure_hashing_key(app.state.tokens, engine)
        async with make_sessionmaker(engine)() as session:
            _, key = await editors.create_api_key(session, name="schemathesis")
            await articles.import_feed_document(session, data=SAMPLE.read_bytes())
            await make_subscriber(session, app.state.tokens, email="lectrice@example.org")
            await session.commit()
            return key
    finally:
        await engine.dispose()


@pytest.mark.slow
def test_every_check_passes_on_every_operation(
    backend: str, database_url: str, smtp_server: SmtpServer, tmp_path: Path
) -> None:
    if backend == "sqlite" and TEST_DATABASE_URL:
        pytest.skip("a minute of requests: run once, on PostgreSQL when it is there")
    settings = make_settings(database_url, smtp_server, tmp_path)
    app = create_app(settings, run_worker=True)
    key = asyncio.run(_seed(app))
    with LiveServer(app) as live:
        run = subprocess.run(
            [
                str(ST),
                "--no-color",
                "run",
                f"{live.url}/openapi.json",
                "--checks",
                "all",
                "--header",
                f"Authorization: Bearer {key}",
                "--max-examples",
                str(MAX_EXAMPLES),
                "--seed",
                str(SEED),
                # One worker: with two threads, CPython 3.11's ast.parse (Hypothesis reads lambda
                # sources with it) can fail with "AST constructor recursion depth mismatch"
                # (python/cpython#106905), a crash of the tool, not a finding.
                "--workers",
                "1",
            ],
            cwd=ROOT,  # schemathesis.toml
            capture_output=True,
            text=True,
            timeout=600,
        )
    report = run.stdout + run.stderr
    assert run.returncode == 0, report
    assert "Stateful" in report
    for phase in ("Coverage", "Fuzzing", "Stateful"):
        assert f"✅ {phase}" in report, report


def test_common_answers_are_documented_on_every_operation() -> None:
    document = _document()
    for path, item in document["paths"].items():
        for method, operation in item.items():
            responses = operation["responses"]
            if operation.get("security"):
                assert "401" in responses, (method, path)
            if "requestBody" in operation:
                assert "413" in responses, (method, path)
                assert "application/json" in responses["400"]["content"], (method, path)
            for status, response in responses.items():
                if int(status) >= 400:
                    assert response.get("content"), (method, path, status)  # a media type
    assert "Error" in document["components"]["schemas"]


def test_urls_and_addresses_say_what_is_accepted() -> None:
    schemas = _document()["components"]["schemas"]
    for model, field in (("ArticleIn", "url"), ("FeedImportIn", "url")):
        url = schemas[model]["properties"][field]
        assert url["format"] == "uri"
        assert url["pattern"].startswith("^[Hh][Tt][Tt][Pp][Ss]?://")
    assert schemas["SubscriptionCreate"]["properties"]["email"]["format"] == "email"
    assert schemas["TestSendIn"]["properties"]["emails"]["items"]["format"] == "email"


def test_links_lead_through_the_editor_workflows() -> None:
    paths = _document()["paths"]
    created = paths["/api/v1/digests"]["post"]["responses"]["201"]["links"]
    targets = {link["operationId"] for link in created.values()}
    digest = "/api/v1/digests/{digest_id}"
    for method, path in (
        ("get", digest),
        ("get", f"{digest}/preview"),
        ("post", f"{digest}/test"),
        ("post", f"{digest}/send"),
        ("post", f"{digest}/pause"),
        ("post", f"{digest}/resume"),
        ("post", f"{digest}/cancel"),
    ):
        assert paths[path][method]["operationId"] in targets, (method, path)
    for link in created.values():
        assert link["parameters"] == {"digest_id": "$response.body#/id"}
    article = paths["/api/v1/articles"]["post"]["responses"]["201"]["links"]
    assert article["DigestOfArticle"]["requestBody"] == {"article_ids": ["$response.body#/id"]}
    signup = paths["/api/v1/subscriptions"]["post"]["responses"]["202"]["links"]
    assert signup["GetSubscriber"]["parameters"] == {"email": "$request.body#/email"}
    assert (
        signup["EraseSubscriber"]["operationId"]
        == (paths["/api/v1/subscribers/{email}"]["delete"]["operationId"])
    )


@pytest.mark.parametrize(
    ("method", "path", "allowed"),
    [
        ("OPTIONS", "/api/v1/articles", "GET, HEAD, POST"),
        ("OPTIONS", "/api/v1/digests", "GET, HEAD, POST"),
        ("PUT", "/api/v1/subscribers/a@example.org", "DELETE, GET, HEAD"),
        ("OPTIONS", "/subscribe", "GET, HEAD, POST"),
        ("DELETE", "/unsubscribe/x", "GET, HEAD, POST"),
        ("PATCH", "/confirm/x", "GET, HEAD, POST"),
        ("OPTIONS", "/api/v1/digests/1/send", "POST"),
        ("HEAD", "/api/v1/digests/1/send", "POST"),
    ],
)
async def test_405_lists_every_method_of_the_resource(
    client: httpx.AsyncClient, method: str, path: str, allowed: str
) -> None:
    response = await client.request(method, path)
    assert response.status_code == 405
    assert response.headers["allow"] == allowed


def _document() -> dict:
    # The document depends on code, not on data: an app with throwaway settings serves it.
    app = create_app(make_settings("sqlite://", None, Path("/nonexistent")))
    return app.openapi()
