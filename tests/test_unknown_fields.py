"""Every JSON body refuses a field it does not know: 422 naming it, never silently ignored (a
`send_at` on the send endpoint once answered 202 and sent at once)."""

from __future__ import annotations

import re

import httpx
from fastapi import FastAPI

UNKNOWN = "zz_not_a_field"
WRITES = ("post", "put", "patch")


def json_operations(app: FastAPI) -> list[tuple[str, str]]:
    found = []
    for path, item in app.openapi()["paths"].items():
        for method, operation in item.items():
            content = operation.get("requestBody", {}).get("content", {})
            if "application/json" in content:
                found.append((method, path))
    return found


async def test_send_refuses_a_field_it_does_not_take(
    client: httpx.AsyncClient, editor_headers: dict[str, str]
) -> None:
    await client.post(
        "/api/v1/articles",
        json={"title": "Un article", "url": "https://www.example.org/a"},
        headers=editor_headers,
    )
    draft = (await client.post("/api/v1/digests", json={}, headers=editor_headers)).json()
    url = f"/api/v1/digests/{draft['id']}/send"
    refused = await client.post(
        url, json={"send_at": "2030-01-01T08:00:00Z"}, headers=editor_headers
    )
    assert refused.status_code == 422, refused.text
    [error] = refused.json()["detail"]
    assert error["loc"] == ["body", "send_at"]
    assert error["type"] == "extra_forbidden"
    digest = (await client.get(f"/api/v1/digests/{draft['id']}", headers=editor_headers)).json()
    assert digest["status"] == "draft"  # nothing was sent
    # An empty body, `{}` and no body at all still send (the second and third get 409: once only).
    assert (await client.post(url, json={}, headers=editor_headers)).status_code == 202
    assert (await client.post(url, headers=editor_headers)).status_code == 409
    assert (await client.post(url, content=b"", headers=editor_headers)).status_code == 409


async def test_every_json_body_refuses_unknown_fields(
    app: FastAPI, client: httpx.AsyncClient, editor_headers: dict[str, str]
) -> None:
    operations = json_operations(app)
    assert ("post", "/api/v1/digests/{digest_id}/send") in operations
    for method, path in operations:
        url = re.sub(r"\{[^}]+\}", "1", path)
        response = await client.request(
            method.upper(), url, json={UNKNOWN: 1}, headers=editor_headers
        )
        assert response.status_code == 422, (method, path, response.text)
        locations = [error["loc"] for error in response.json()["detail"]]
        assert ["body", UNKNOWN] in locations, (method, path, locations)


def test_every_api_write_declares_its_body(app: FastAPI) -> None:
    """An editor endpoint that takes no body still declares an (empty) one, so that anything
    sent to it is checked rather than ignored."""
    document = app.openapi()
    for path, item in document["paths"].items():
        if not path.startswith("/api/"):
            continue
        for method, operation in item.items():
            if method in WRITES:
                assert "application/json" in operation.get("requestBody", {}).get("content", {}), (
                    method,
                    path,
                )
