"""The schedules API: create, read with next_run_at and runs, change, delete; a bad cron or zone
is a 422 naming the field."""

from __future__ import annotations

from datetime import datetime

import httpx
import pytest
from fastapi import FastAPI

from app.models import utcnow
from tests.factories import cli_env, make_article, run_cli

WEEKLY = {
    "name": "Vendredi",
    "cron": "0 8 * * 5",
    "timezone": "Europe/Paris",
    "cadence": "weekly",
    "min_articles": 3,
    "max_articles": 15,
    "categories": ["International", "Économie"],
    "subject": {"fr": "La semaine", "en": "The week"},
    "intro": "Bonne lecture.",
}


async def test_create_read_update_delete(
    client: httpx.AsyncClient, editor_headers: dict[str, str]
) -> None:
    created = await client.post("/api/v1/schedules", json=WEEKLY, headers=editor_headers)
    assert created.status_code == 201, created.text
    body = created.json()
    assert body["cron"] == "0 8 * * 5"
    assert body["enabled"] is True
    assert body["runs"] == []
    next_run = datetime.fromisoformat(body["next_run_at"])
    assert (next_run.weekday(), next_run.hour, next_run.minute) == (4, 8, 0)
    assert next_run.utcoffset() is not None
    assert body["next_run_at"][-6:] in ("+01:00", "+02:00")
    path = f"/api/v1/schedules/{body['id']}"

    listed = await client.get("/api/v1/schedules", headers=editor_headers)
    assert [s["id"] for s in listed.json()["items"]] == [body["id"]]
    assert (await client.get(path, headers=editor_headers)).json()["name"] == "Vendredi"

    changed = await client.patch(
        path,
        json={"enabled": False, "categories": None, "cron": "0  7 * * 1"},
        headers=editor_headers,
    )
    assert changed.status_code == 200, changed.text
    assert changed.json()["enabled"] is False
    assert changed.json()["next_run_at"] is None
    assert changed.json()["categories"] == []
    assert changed.json()["cron"] == "0 7 * * 1"
    again = await client.patch(path, json={"enabled": True}, headers=editor_headers)
    assert datetime.fromisoformat(again.json()["next_run_at"]).weekday() == 0

    assert (await client.delete(path, headers=editor_headers)).status_code == 204
    assert (await client.get(path, headers=editor_headers)).status_code == 404
    assert (await client.delete(path, headers=editor_headers)).status_code == 404
    assert (await client.patch(path, json={}, headers=editor_headers)).status_code == 404


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"cron": "0 8 * *"}, "cron"),
        ({"cron": "0 25 * * *"}, "cron"),
        ({"cron": "every friday"}, "cron"),
        ({"timezone": "Europe/Atlantis"}, "timezone"),
        ({"timezone": "../etc"}, "timezone"),
        ({"min_articles": 20, "max_articles": 10}, "min_articles"),
        ({"cadence": "monthly"}, "cadence"),
        ({"max_articles": 0}, "max_articles"),
    ],
)
async def test_bad_fields_get_a_422_naming_them(
    client: httpx.AsyncClient,
    editor_headers: dict[str, str],
    changes: dict[str, object],
    field: str,
) -> None:
    response = await client.post(
        "/api/v1/schedules", json={**WEEKLY, **changes}, headers=editor_headers
    )
    assert response.status_code == 422, response.text
    assert field in [e["loc"][-1] for e in response.json()["detail"]]


async def test_patch_checks_fields_too(
    client: httpx.AsyncClient, editor_headers: dict[str, str]
) -> None:
    created = (await client.post("/api/v1/schedules", json=WEEKLY, headers=editor_headers)).json()
    path = f"/api/v1/schedules/{created['id']}"
    for changes, field in [
        ({"timezone": "Nowhere/Land"}, "timezone"),
        ({"cron": "* * *"}, "cron"),
        ({"name": None}, "name"),
        ({"max_articles": 2}, "min_articles"),  # below the stored min_articles (3)
        ({"colour": "red"}, "colour"),
    ]:
        response = await client.patch(path, json=changes, headers=editor_headers)
        assert response.status_code == 422, (changes, response.text)
        assert field in [e["loc"][-1] for e in response.json()["detail"]]
    assert (await client.get(path, headers=editor_headers)).json()["max_articles"] == 15


async def test_editor_key_required(client: httpx.AsyncClient) -> None:
    assert (await client.get("/api/v1/schedules")).status_code == 401
    assert (await client.post("/api/v1/schedules", json=WEEKLY)).status_code == 401


async def test_cli_list_and_run_now(
    app: FastAPI,
    client: httpx.AsyncClient,
    editor_headers: dict[str, str],
) -> None:
    env = {**cli_env(app.state.settings), "COLUMNS": "200"}  # rich wraps at 80 otherwise
    created = (await client.post("/api/v1/schedules", json=WEEKLY, headers=editor_headers)).json()

    listed = await run_cli(["schedules", "list"], env)
    assert listed.exit_code == 0, listed.output
    assert "Vendredi" in listed.output
    assert "Europe/Paris" in listed.output

    skipped = await run_cli(["schedules", "run-now", str(created["id"])], env)
    assert skipped.exit_code == 0, skipped.output
    assert "skipped_not_enough_articles, 0 article(s)" in skipped.output

    async with app.state.sessionmaker() as session:
        for i in range(3):
            await make_article(
                session, title=f"Dépêche {i}", published_at=utcnow(), categories=["Économie"]
            )
    sent = await run_cli(["schedules", "run-now", str(created["id"])], env)
    assert sent.exit_code == 0, sent.output
    assert "sent, 3 article(s), digest" in sent.output
    runs = (await client.get(f"/api/v1/schedules/{created['id']}", headers=editor_headers)).json()[
        "runs"
    ]
    assert [r["outcome"] for r in runs] == ["sent", "skipped_not_enough_articles"]
    digest = (
        await client.get(f"/api/v1/digests/{runs[0]['digest_id']}", headers=editor_headers)
    ).json()
    assert digest["subjects"]["fr"] == "La semaine"
    assert digest["subjects"]["en"] == "The week"
    assert digest["article_count"] == 3

    missing = await run_cli(["schedules", "run-now", "999"], env)
    assert missing.exit_code == 1
    assert "no schedule 999" in missing.output
