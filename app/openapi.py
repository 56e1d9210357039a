"""The OpenAPI document tells the whole truth: answers that middleware or shared dependencies give
(401 for editor routes, 413 for bodies over the limit) are added to every operation they apply
to, so routes added later are documented without repeating it (and Schemathesis checks it)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from fastapi import FastAPI

ERROR_SCHEMA = {
    "title": "Error",
    "type": "object",
    "properties": {"detail": {"title": "Detail", "type": "string"}},
    "required": ["detail"],
}


def json_error(description: str) -> dict[str, Any]:
    return {
        "description": description,
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}},
    }


def html_page(description: str) -> dict[str, Any]:
    return {"description": description, "content": {"text/html": {"schema": {"type": "string"}}}}


UNAUTHORIZED = json_error("Missing, unknown or revoked editor API key")
BAD_BODY = json_error("The body could not be decoded")
TOO_LARGE = json_error("Request body over MAX_REQUEST_BYTES")
RATE_LIMITED_JSON = json_error("Too many requests from this client; see Retry-After")
RATE_LIMITED_PAGE = html_page("Too many requests from this client (a page); see Retry-After")
INVALID_LINK_PAGE = html_page("Invalid, expired or cross-purpose link (a page)")
FORM_ERRORS = {
    "description": "A field is invalid: the form again, with the message next to the field "
    "(or a JSON validation error for a value no form could send)",
    "content": {
        "text/html": {"schema": {"type": "string"}},
        "application/json": {"schema": {"$ref": "#/components/schemas/HTTPValidationError"}},
    },
}


def add_common_responses(schema: dict[str, Any]) -> dict[str, Any]:
    for path_item in schema.get("paths", {}).values():
        for operation in path_item.values():
            if not isinstance(operation, dict) or "responses" not in operation:
                continue
            responses = operation["responses"]
            if operation.get("security"):
                responses.setdefault("401", UNAUTHORIZED)
            if "requestBody" in operation:
                responses.setdefault("413", TOO_LARGE)
                # FastAPI answers 400 (JSON) to a body it cannot decode, e.g. invalid UTF-8.
                bad_body = responses.setdefault("400", {"description": BAD_BODY["description"]})
                bad_body.setdefault("content", {}).update(BAD_BODY["content"])
    schema.setdefault("components", {}).setdefault("schemas", {}).setdefault("Error", ERROR_SCHEMA)
    return schema


def install(app: FastAPI) -> None:
    generate: Callable[[], dict[str, Any]] = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            add_common_responses(generate())  # FastAPI caches the dict it returns; amend it once
        assert app.openapi_schema is not None
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
