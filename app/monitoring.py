"""Operations endpoints: `/metrics` (Prometheus) and `/healthz` (what is wrong, if anything)."""

from __future__ import annotations

import logging

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST

from app.health import check_health
from app.metrics import Metrics

log = logging.getLogger("app.metrics")

router = APIRouter(tags=["operations"])


@router.get(
    "/metrics",
    response_class=Response,
    responses={
        200: {
            "description": "Prometheus text exposition format",
            "content": {"text/plain": {"schema": {"type": "string"}}},
        },
        503: {
            "description": "The database is unreachable",
            "content": {"text/plain": {"schema": {"type": "string"}}},
        },
    },
)
async def metrics_endpoint(request: Request) -> Response:
    """Counters, send latency, and deliveries / queue depth / subscribers from the database.
    Expose it to your monitoring network only (the proxy should not route it publicly)."""
    metrics: Metrics = request.app.state.metrics
    try:
        await metrics.refresh_from_database(
            request.app.state.engine,
            heartbeat_max_age=request.app.state.settings.health_heartbeat_max_age_seconds,
        )
    except Exception as exc:  # stale gauges would lie: fail the scrape instead, never a 500
        log.warning("metrics: database unavailable: %s", exc)
        return PlainTextResponse("database unavailable\n", status_code=503)
    return Response(metrics.render(), media_type=CONTENT_TYPE_LATEST)


_CHECKS_EXAMPLE = {
    "status": "error",
    "database": "ok",
    "problems": ["relay"],
    "checks": {
        "database": "ok",
        "relay": "connect: ConnectionRefusedError: [Errno 111] Connection refused",
        "workers": {"running": 2, "freshest_heartbeat_seconds": 3.2},
        "queue": {"oldest_due_seconds": 0.0},
    },
}
_HEALTH_SCHEMA = {
    "type": "object",
    "required": ["status", "database"],
    "properties": {
        "status": {"type": "string", "enum": ["ok", "error"]},
        "database": {"type": "string"},
        "problems": {
            "type": "array",
            "items": {"type": "string", "enum": ["database", "relay", "workers", "queue"]},
        },
        "checks": {"type": "object"},
    },
}


@router.get(
    "/healthz",
    response_class=JSONResponse,
    responses={
        200: {
            "description": "Everything checked is fine",
            "content": {"application/json": {"schema": _HEALTH_SCHEMA}},
        },
        503: {
            "description": "Something is wrong: `problems` names the failing checks (database, "
            "relay, workers, queue) and `checks` says what each found",
            "content": {"application/json": {"schema": _HEALTH_SCHEMA, "example": _CHECKS_EXAMPLE}},
        },
    },
)
async def healthz(request: Request) -> JSONResponse:
    """The database answers; the SMTP relay answers a connect + EHLO (probed at most every
    HEALTH_RELAY_PROBE_SECONDS); a worker beat within HEALTH_HEARTBEAT_MAX_AGE_SECONDS (when
    any ran); no sendable row waited more than HEALTH_QUEUE_MAX_AGE_SECONDS. 503 otherwise."""
    healthy, body = await check_health(
        request.app.state.engine, request.app.state.settings, request.app.state.relay_probe
    )
    return JSONResponse(body, status_code=200 if healthy else 503)
