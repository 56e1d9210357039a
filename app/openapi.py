"""The OpenAPI document tells the whole truth: answers that middleware or shared dependencies give
(401 for editor routes, 413 for bodies over the limit) are added to every operation they apply
to, so routes added later are documented without repeating it (and Schemathesis checks it)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import swagger_ui_bundle
from fastapi import FastAPI
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles

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


# Addresses are checked with email-validator (and must not need SMTPUTF8): `format: email`
# says so to clients; the 422 names the field when the check says no.
EMAIL_FORMAT: dict[str, Any] = {"format": "email"}

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


# A 422 is FastAPI's list of field errors, or our `{"detail": "..."}` for a request that is
# well formed but cannot be done (no new articles, a document that is not a feed).
VALIDATION_OR_ERROR = {
    "anyOf": [
        {"$ref": "#/components/schemas/HTTPValidationError"},
        {"$ref": "#/components/schemas/Error"},
    ]
}

DIGEST = "/api/v1/digests/{digest_id}"
_DIGEST_ID = {"digest_id": "$response.body#/id"}
_DIGEST_LINKS = {
    "GetDigest": ("get", DIGEST, _DIGEST_ID),
    "EditDigest": ("patch", DIGEST, _DIGEST_ID),
    "PreviewDigest": ("get", f"{DIGEST}/preview", _DIGEST_ID),
    "DigestDeliverability": ("get", f"{DIGEST}/deliverability", _DIGEST_ID),
    "TestDigest": ("post", f"{DIGEST}/test", _DIGEST_ID),
    "SendDigest": ("post", f"{DIGEST}/send", _DIGEST_ID),
    "PauseDigest": ("post", f"{DIGEST}/pause", _DIGEST_ID),
    "ResumeDigest": ("post", f"{DIGEST}/resume", _DIGEST_ID),
    "CancelDigest": ("post", f"{DIGEST}/cancel", _DIGEST_ID),
    "UnscheduleDigest": ("post", f"{DIGEST}/unschedule", _DIGEST_ID),
}
_ARTICLE_ID = {"article_id": "$response.body#/id"}
_ARTICLE_LINKS = {
    "GetArticle": ("get", "/api/v1/articles/{article_id}", _ARTICLE_ID),
    "DeleteArticle": ("delete", "/api/v1/articles/{article_id}", _ARTICLE_ID),
    "HideArticle": ("post", "/api/v1/articles/{article_id}/hide", _ARTICLE_ID),
    "DigestOfArticle": ("post", "/api/v1/digests", {}, {"article_ids": ["$response.body#/id"]}),
}
SCHEDULE = "/api/v1/schedules/{schedule_id}"
_SCHEDULE_ID = {"schedule_id": "$response.body#/id"}
_SCHEDULE_LINKS = {
    "GetSchedule": ("get", SCHEDULE, _SCHEDULE_ID),
    "UpdateSchedule": ("patch", SCHEDULE, _SCHEDULE_ID),
    "DeleteSchedule": ("delete", SCHEDULE, _SCHEDULE_ID),
}
SUBSCRIBER = "/api/v1/subscribers/{email}"
# What was done to a digest, by whom (the audit log).
_AUDIT_OF_DIGEST: dict[str, tuple[Any, ...]] = {
    "AuditOfDigest": (
        "get",
        "/api/v1/audit",
        {"target_type": "digest", "target_id": "$request.path.digest_id"},
    )
}
# OpenAPI links (3.1, 4.8.20): how one answer feeds the next request, so that clients and
# Schemathesis's stateful phase can follow whole editor workflows. (method, path, status) ->
# name -> (method, path, parameters[, request body]).
LINKS: dict[tuple[str, str, str], dict[str, tuple[Any, ...]]] = {
    ("post", "/api/v1/digests", "201"): _DIGEST_LINKS,
    ("get", DIGEST, "200"): _DIGEST_LINKS,
    ("post", f"{DIGEST}/resume", "200"): _DIGEST_LINKS,
    ("post", f"{DIGEST}/cancel", "200"): {"GetDigest": _DIGEST_LINKS["GetDigest"]},
    ("post", "/api/v1/schedules", "201"): _SCHEDULE_LINKS,
    ("patch", SCHEDULE, "200"): _SCHEDULE_LINKS,
    ("patch", DIGEST, "200"): _DIGEST_LINKS,
    ("post", "/api/v1/articles", "201"): _ARTICLE_LINKS,
    ("post", "/api/v1/articles", "200"): _ARTICLE_LINKS,
    ("get", "/api/v1/articles/{article_id}", "200"): {
        "DigestOfArticle": _ARTICLE_LINKS["DigestOfArticle"]
    },
    ("post", f"{DIGEST}/pause", "200"): {**_DIGEST_LINKS, **_AUDIT_OF_DIGEST},
    ("post", f"{DIGEST}/send", "202"): {**_DIGEST_LINKS, **_AUDIT_OF_DIGEST},
    ("post", f"{DIGEST}/unschedule", "200"): _DIGEST_LINKS,
    ("post", "/api/v1/subscriptions", "202"): {
        "GetSubscriber": ("get", SUBSCRIBER, {"email": "$request.body#/email"}),
        "EraseSubscriber": ("delete", SUBSCRIBER, {"email": "$request.body#/email"}),
    },
}


def add_links(schema: dict[str, Any]) -> None:
    paths = schema.get("paths", {})
    for (method, path, status), links in LINKS.items():
        response = paths.get(path, {}).get(method, {}).get("responses", {}).get(status)
        if response is None:
            continue  # an operation of another branch, not here (yet)
        for name, (target_method, target_path, parameters, *body) in links.items():
            target = paths.get(target_path, {}).get(target_method)
            if target is None:
                continue
            link: dict[str, Any] = {"operationId": target["operationId"]}
            if parameters:
                link["parameters"] = parameters
            if body:
                link["requestBody"] = body[0]
            response.setdefault("links", {})[name] = link


def document_error_bodies(schema: dict[str, Any]) -> None:
    """Every error answer of the JSON API is `{"detail": ...}`: say so where a route gave only
    a description, and let a 422 be either shape."""
    for path_item in schema.get("paths", {}).values():
        for operation in path_item.values():
            if not isinstance(operation, dict):
                continue
            for status, response in operation.get("responses", {}).items():
                if not status.isdigit() or int(status) < 400:
                    continue
                content = response.setdefault("content", {})
                body = VALIDATION_OR_ERROR if status == "422" else {"$ref": ERROR_REF}
                if not content:
                    content["application/json"] = {"schema": body}
                elif status == "422" and "application/json" in content:
                    content["application/json"]["schema"] = body


ERROR_REF = "#/components/schemas/Error"


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
    document_error_bodies(schema)
    add_links(schema)
    return schema


def install(app: FastAPI) -> None:
    generate: Callable[[], dict[str, Any]] = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            add_common_responses(generate())  # FastAPI caches the dict it returns; amend it once
        assert app.openapi_schema is not None
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]


DOCS_ASSETS = "/docs/assets"
# Swagger UI's page is FastAPI's, with one inline script; everything else comes from the app.
DOCS_CSP = (
    "default-src 'self'; script-src 'self' 'unsafe-inline'; style-src 'self' 'unsafe-inline'; "
    "img-src 'self' data:; connect-src 'self'; base-uri 'none'; frame-ancestors 'none'"
)


def install_docs(app: FastAPI) -> None:
    """/docs with Swagger UI's files served by the app (a pip package), not from a CDN: the page
    works offline and behind a strict firewall. (Create the app with docs_url=None.)"""
    app.mount(
        DOCS_ASSETS, StaticFiles(directory=swagger_ui_bundle.swagger_ui_path), name="docs-assets"
    )

    @app.get("/docs", include_in_schema=False)
    async def swagger_ui() -> HTMLResponse:
        page = get_swagger_ui_html(
            openapi_url=app.openapi_url or "/openapi.json",
            title=f"{app.title} API",
            swagger_js_url=f"{DOCS_ASSETS}/swagger-ui-bundle.js",
            swagger_css_url=f"{DOCS_ASSETS}/swagger-ui.css",
            swagger_favicon_url=f"{DOCS_ASSETS}/favicon-32x32.png",
            swagger_ui_parameters={"validatorUrl": None},  # no call to swagger.io
        )
        page.headers["Content-Security-Policy"] = DOCS_CSP
        return page
