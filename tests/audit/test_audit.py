"""The audit log: every state-changing editor route records who did what to what, the CLI's
editor commands too; admins read it over the API and export it."""

from __future__ import annotations

import csv
import io
import json
from datetime import datetime, timedelta
from typing import Any

import httpx
from fastapi import FastAPI
from fastapi.dependencies.models import Dependant
from fastapi.routing import APIRoute
from sqlmodel.ext.asyncio.session import AsyncSession

from app.audit.deps import audited_editor
from app.deps import require_editor
from app.main import create_app
from tests.factories import cli_env, run_cli
from tests.worker.test_send_promises import add_readers, start_digest

STATE_CHANGING = {"POST", "PUT", "PATCH", "DELETE"}


def _calls(dependant: Dependant) -> set[object]:
    found: set[object] = set()
    for sub in dependant.dependencies:
        found.add(sub.call)
        found |= _calls(sub)
    return found


def api_routes(routes: list[Any]) -> list[APIRoute]:
    """Every APIRoute, through included routers (FastAPI keeps them nested)."""
    found: list[APIRoute] = []
    for route in routes:
        if isinstance(route, APIRoute):
            found.append(route)
        elif hasattr(route, "original_router"):
            found += api_routes(route.original_router.routes)
    return found


def test_every_state_changing_editor_route_is_audited() -> None:
    """Walks the real app: a route added later that changes state with an editor key but does
    not take AuditDep fails here."""
    app = create_app()
    checked = []
    for route in api_routes(app.routes):
        if not ((route.methods or set()) & STATE_CHANGING):
            continue
        calls = _calls(route.dependant)
        if require_editor not in calls:
            continue
        checked.append(route.path)
        assert audited_editor in calls, f"{route.methods} {route.path}: take AuditDep"
    assert len(checked) >= 8, checked  # the walk sees the routes (digests, articles, ...)


async def test_actions_are_logged_with_who_what_and_target(
    app: FastAPI,
    client: httpx.AsyncClient,
    session: AsyncSession,
    editor_headers: dict[str, str],
) -> None:
    await add_readers(session, app.state.tokens, 3)
    digest_id = await start_digest(client, session, editor_headers)
    paused = await client.post(f"/api/v1/digests/{digest_id}/pause", headers=editor_headers)
    assert paused.status_code == 200
    # A refused action (already paused) leaves no row: it rolled back.
    again = await client.post(f"/api/v1/digests/{digest_id}/pause", headers=editor_headers)
    assert again.status_code == 409
    erased = await client.delete("/api/v1/subscribers/reader1@example.org", headers=editor_headers)
    assert erased.status_code == 204

    log = await client.get("/api/v1/audit", headers=editor_headers)
    assert log.status_code == 200, log.text
    body = log.json()
    actions = [(e["action"], e["target_type"], e["target_id"]) for e in body["items"]]
    assert actions[:4] == [
        ("erase_subscriber", "subscriber", actions[0][2]),
        ("pause", "digest", str(digest_id)),
        ("send", "digest", str(digest_id)),
        ("create_digest", "digest", str(digest_id)),
    ]
    assert body["total"] == 4
    assert {e["actor"] for e in body["items"]} == {"api-key:tests"}
    assert all("reader1" not in json.dumps(e) for e in body["items"])  # no address kept

    only = await client.get(
        "/api/v1/audit",
        params={
            "target_type": "digest",
            "target_id": str(digest_id),
            "limit": 1,
            "offset": 1,
            "since": "2000-01-01T00:00:00Z",
            "until": "2999-01-01T00:00:00+01:00",
        },
        headers=editor_headers,
    )
    assert only.json()["total"] == 3
    assert [e["action"] for e in only.json()["items"]] == ["send"]
    assert (await client.get("/api/v1/audit")).status_code == 401
    for bad in (
        {"since": "0001-01-01T00:00:00+14:00"},
        {"until": "0.5"},
        {"since": "2026-11-01"},
        {"actor": "a\x00b"},
    ):
        refused = await client.get("/api/v1/audit", params=bad, headers=editor_headers)
        assert refused.status_code == 422, (bad, refused.text)


async def test_cli_commands_are_logged_and_exported(app: FastAPI) -> None:
    env = cli_env(app.state.settings)
    created = await run_cli(["create-api-key", "desk"], env)
    assert created.exit_code == 0, created.output
    revoked = await run_cli(["revoke-api-key", "desk"], env)
    assert revoked.exit_code == 0, revoked.output

    exported = await run_cli(["audit", "export", "--format", "jsonl"], env)
    assert exported.exit_code == 0, exported.output
    events = [json.loads(line) for line in exported.stdout.splitlines() if line.startswith("{")]
    assert [(e["action"], e["source"], e["detail"]) for e in events] == [
        ("create_api_key", "cli", "desk"),
        ("revoke_api_key", "cli", "desk"),
    ]
    assert all(e["actor"].startswith("cli:") for e in events)
    # UTC said on every backend: SQLite gave "2026-11-29T15:10:02.702712", a time without a zone.
    assert all(datetime.fromisoformat(e["created_at"]).utcoffset() == timedelta(0) for e in events)

    as_csv = await run_cli(["audit", "export", "--since", "2000-01-01T00:00:00Z"], env)
    assert as_csv.exit_code == 0, as_csv.output
    rows = list(csv.DictReader(io.StringIO(as_csv.stdout)))
    assert [r["action"] for r in rows] == ["create_api_key", "revoke_api_key"]
    later = await run_cli(["audit", "export", "--since", "2999-01-01T00:00:00Z"], env)
    assert list(csv.DictReader(io.StringIO(later.stdout))) == []

    # A name that a spreadsheet would run as a formula is text in the CSV, as typed in JSONL.
    formula = '=HYPERLINK("https://evil.example","x")'
    assert (await run_cli(["create-api-key", formula], env)).exit_code == 0
    as_csv = await run_cli(["audit", "export"], env)
    assert list(csv.DictReader(io.StringIO(as_csv.stdout)))[-1]["detail"] == "'" + formula
    as_jsonl = await run_cli(["audit", "export", "--format", "jsonl"], env)
    assert json.loads(as_jsonl.stdout.splitlines()[-1])["detail"] == formula


def test_openapi_links_lead_from_an_action_to_its_audit_trail() -> None:
    paths = create_app().openapi()["paths"]
    audit = paths["/api/v1/audit"]["get"]
    for path, status in (("send", "202"), ("pause", "200")):
        operation = paths[f"/api/v1/digests/{{digest_id}}/{path}"]["post"]
        link = operation["responses"][status]["links"]["AuditOfDigest"]
        assert link["operationId"] == audit["operationId"]
        assert link["parameters"] == {
            "target_type": "digest",
            "target_id": "$request.path.digest_id",
        }
    assert set(audit["responses"]) >= {"200", "401", "422"}
