"""Operations: /metrics (Prometheus), /healthz, JSON logs in production."""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from fastapi import FastAPI
from prometheus_client.parser import text_string_to_metric_families
from sqlmodel.ext.asyncio.session import AsyncSession

from app import metrics
from app.main import create_app
from tests.conftest import make_settings
from tests.factories import drain_outbox, link_in, make_subscriber
from tests.smtp_server import SmtpServer


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """{(sample name, sorted labels): value} from a Prometheus text exposition."""
    out: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return out


async def scrape(client: httpx.AsyncClient) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    response = await client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    return samples(response.text)


async def test_metrics_count_the_reader_path_and_read_the_database(
    client: httpx.AsyncClient, app: FastAPI, session: AsyncSession, smtp_server: SmtpServer
) -> None:
    before = await scrape(client)
    assert before[("queue_depth", ())] == 0
    assert before[("subscribers", (("status", "confirmed"),))] == 0
    assert before[("deliveries", (("status", "sent"),))] == 0

    await client.post("/subscribe", data={"email": "a@example.org"})
    await client.post("/api/v1/subscriptions", json={"email": "b@example.org"})
    await client.post("/api/v1/subscriptions", json={"email": "c@example.org"})
    queued = await scrape(client)
    assert queued[("signups_total", (("source", "form"),))] == 1
    assert queued[("signups_total", (("source", "api"),))] == 2
    assert queued[("queue_depth", ())] == 3
    assert queued[("deliveries", (("status", "queued"),))] == 3
    assert queued[("subscribers", (("status", "pending"),))] == 3

    report = await drain_outbox(app)
    assert report.sent == 3
    link = link_in(smtp_server.messages_to("a@example.org")[0], "confirm")
    assert (await client.get(link)).status_code == 200  # the page: counts nothing
    assert (await client.post(link)).status_code == 200
    assert (await client.post(link)).status_code == 200  # a second click is not a second count

    reader = await make_subscriber(session, app.state.tokens, email="leaving@example.org")
    assert reader.id is not None
    token = app.state.tokens.unsubscribe_token(reader.id, reader.email_hash)
    assert (await client.post(f"/unsubscribe/{token}")).status_code == 200
    assert (await client.post(f"/unsubscribe/{token}")).status_code == 200

    after = await scrape(client)
    assert after[("confirmations_total", ())] == 1
    assert after[("unsubscribes_total", ())] == 1
    assert after[("queue_depth", ())] == 0
    assert after[("deliveries", (("status", "sent"),))] == 3
    assert after[("subscribers", (("status", "confirmed"),))] == 1
    assert after[("subscribers", (("status", "pending"),))] == 2
    assert after[("subscribers", (("status", "unsubscribed"),))] == 1
    assert after[("send_latency_seconds_count", ())] == 3
    assert after[("send_latency_seconds_sum", ())] > 0


async def test_each_app_has_its_own_registry(client: httpx.AsyncClient, app: FastAPI) -> None:
    metrics.count_bounce("hard")
    metrics.count_bounce("complaint")
    metrics.observe_send(0.02)
    values = await scrape(client)
    assert values[("bounces_total", (("type", "hard"),))] == 1
    assert values[("bounces_total", (("type", "complaint"),))] == 1
    assert values[("send_latency_seconds_bucket", (("le", "0.025"),))] == 1
    other = create_app(app.state.settings)
    assert "bounces_total{" not in other.state.metrics.render().decode()


async def test_metrics_and_healthz_answer_503_when_the_database_is_down(tmp_path: Path) -> None:
    # Nothing listens on port 1: every connection attempt is refused at once.
    settings = make_settings("postgresql://postgres@127.0.0.1:1/nowhere", None, tmp_path)
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as c:
            health = await c.get("/healthz")
            assert health.status_code == 503
            assert health.json()["status"] == "error"
            scraped = await c.get("/metrics")
            assert scraped.status_code == 503


async def test_healthz_ok(client: httpx.AsyncClient) -> None:
    response = await client.get("/healthz")
    assert response.status_code == 200
    body = response.json()
    assert (body["status"], body["database"], body["problems"]) == ("ok", "ok", [])
    assert body["checks"]["relay"] == "ok"
    assert body["checks"]["queue"] == {"oldest_due_seconds": 0.0}


@pytest.fixture
def restore_logging() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


@pytest.mark.usefixtures("restore_logging")
def test_production_logs_are_one_json_object_per_line(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from app.cli import load_settings

    monkeypatch.setenv("APP_ENV", "production")
    monkeypatch.setenv("SECRET_KEY", "a-long-production-secret-0123456789")
    load_settings()
    logging.getLogger("app.worker").info(
        "batch done", extra={"worker": "host:1:abc", "count": 3, "errors": ["451 later"]}
    )
    try:
        raise RuntimeError("boom")
    except RuntimeError:
        logging.getLogger("app").exception("batch failed: %s", "détail")

    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(lines) == 2
    first, second = (json.loads(line) for line in lines)
    assert first["message"] == "batch done"
    assert first["level"] == "info"
    assert first["logger"] == "app.worker"
    assert first["worker"] == "host:1:abc"
    assert first["count"] == 3
    assert first["errors"] == ["451 later"]
    assert first["time"].endswith("+00:00")
    assert second["level"] == "error"
    assert second["message"] == "batch failed: détail"
    assert "RuntimeError: boom" in second["exception"]


@pytest.mark.usefixtures("restore_logging")
def test_development_logs_are_text(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from app.cli import load_settings

    monkeypatch.setenv("APP_ENV", "development")
    load_settings()
    logging.getLogger("app").warning("hello", extra={"worker": "w1"})
    line = capsys.readouterr().err.strip()
    assert "WARNING app: hello worker=w1" in line
    with pytest.raises(json.JSONDecodeError):
        json.loads(line)


# uvicorn logs these with a coloured copy of the message in `extra`, for its own formatter.
UVICORN_STARTED = "Started server process [\x1b[36m%d\x1b[0m]"


@pytest.mark.usefixtures("restore_logging")
@pytest.mark.parametrize("app_env", ["development", "production"])
def test_log_lines_carry_no_terminal_escapes(
    app_env: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from app.cli import load_settings

    monkeypatch.setenv("APP_ENV", app_env)
    monkeypatch.setenv("SECRET_KEY", "a-long-production-secret-0123456789")
    load_settings()
    logging.getLogger("uvicorn.error").info(
        "Started server process [%d]", 4242, extra={"color_message": UVICORN_STARTED}
    )
    logging.getLogger("app").warning("\x1b[31mred\x1b[0m text", extra={"peer": "\x1b[1mx\x1b[0m"})
    err = capsys.readouterr().err
    assert "Started server process [4242]" in err
    assert "red text" in err
    assert "\x1b" not in err
    assert "color_message" not in err


@pytest.mark.usefixtures("restore_logging")
def test_logging_after_an_in_process_command_finds_the_current_stderr(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """CliRunner swaps stderr for a buffer it closes afterwards; a handler bound to that buffer
    made every later log line (an SMTP test server's thread) print '--- Logging error ---'."""
    from typer.testing import CliRunner

    from app.cli import cli

    result = CliRunner().invoke(
        cli,
        ["migrate"],
        env={"DATABASE_URL": f"sqlite:///{tmp_path / 'db.sqlite'}", "APP_ENV": "development"},
    )
    assert result.exit_code == 0, result.output
    logging.getLogger("mail.log").warning("a line logged after the command")
    err = capsys.readouterr().err
    assert "Logging error" not in err
    assert "closed file" not in err
    assert "a line logged after the command" in err


async def test_api_docs_are_served_by_the_app(client: httpx.AsyncClient) -> None:
    """/docs works offline: the page and every file it loads come from the app."""
    page = await client.get("/docs")
    assert page.status_code == 200
    assert re.findall(r"https?://", page.text) == []  # no CDN, no validator, no other host
    assets = re.findall(r'(?:src|href)="([^"]+)"', page.text)
    assert "/docs/assets/swagger-ui-bundle.js" in assets
    assert "/docs/assets/swagger-ui.css" in assets
    for asset in assets:
        loaded = await client.get(asset)
        assert loaded.status_code == 200, asset
        assert len(loaded.content) > 0
    assert (await client.get("/openapi.json")).status_code == 200
    assert (await client.get("/redoc")).status_code == 404  # it loaded from a CDN: removed
    csp = page.headers["content-security-policy"]
    assert "default-src 'self'" in csp
    assert "http" not in csp
