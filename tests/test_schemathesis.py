"""Property-based tests of every operation in the service's own OpenAPI document (Schemathesis).

The schema is read from the app at test time, so routes added later are covered without
touching this file. Each operation gets a fresh migrated database and a valid editor API key;
the examples are bounded and derandomized so a failure reproduces on the next run.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest
import schemathesis
from fastapi import FastAPI
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error
from schemathesis.python import asgi
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from app import editors
from app.config import Settings
from app.db import make_engine, make_sessionmaker
from app.main import create_app
from tests.conftest import SECRET

MAX_EXAMPLES = 25
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
]


async def _create_editor_key(database_url: str) -> str:
    engine = make_engine(database_url)
    try:
        async with make_sessionmaker(engine)() as session:
            _, key = await editors.create_api_key(session, name="schemathesis")
            await session.commit()
            return key
    finally:
        await engine.dispose()


@pytest.fixture
def editor_key(settings: Settings) -> str:
    return asyncio.run(_create_editor_key(settings.database_url))


@pytest.fixture
def app(settings: Settings) -> Iterator[FastAPI]:
    """The app under test, on this test's own database. Schemathesis runs it (lifespan included)
    in its own event-loop thread; its lifespan is shut down after the test."""
    yield create_app(settings)
    asgi.shutdown_lifespans()


# The document is read from an app with throwaway settings: it depends on code, not on data.
schema = schemathesis.openapi.from_dict(
    create_app(Settings(_env_file=None, database_url="sqlite://", secret_key=SECRET)).openapi()
)


@schema.parametrize()
@settings(
    max_examples=MAX_EXAMPLES,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=list(HealthCheck),
)
def test_api_conforms_to_its_schema(case: schemathesis.Case, app: FastAPI, editor_key: str) -> None:
    case.call_and_validate(
        app=app, headers={"Authorization": f"Bearer {editor_key}"}, checks=CHECKS
    )


def test_common_answers_are_documented_on_every_operation() -> None:
    document = schema.raw_schema
    for path, item in document["paths"].items():
        for method, operation in item.items():
            responses = operation["responses"]
            if operation.get("security"):
                assert "401" in responses, (method, path)
            if "requestBody" in operation:
                assert "413" in responses, (method, path)
                assert "application/json" in responses["400"]["content"], (method, path)
    assert "Error" in document["components"]["schemas"]
