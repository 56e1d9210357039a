"""Operations endpoints: `/metrics` (Prometheus) and `/healthz` (the load balancer's probe)."""

from __future__ import annotations

import logging

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST
from sqlalchemy import text

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
        await metrics.refresh_from_database(request.app.state.engine)
    except Exception as exc:  # stale gauges would lie: fail the scrape instead, never a 500
        log.warning("metrics: database unavailable: %s", exc)
        return PlainTextResponse("database unavailable\n", status_code=503)
    return Response(metrics.render(), media_type=CONTENT_TYPE_LATEST)


@router.get("/healthz")
async def healthz(request: Request) -> JSONResponse:
    try:
        async with request.app.state.engine.connect() as conn:
            await conn.execute(text("SELECT 1"))
    except Exception as exc:  # any database failure means "not healthy", never a 500
        return JSONResponse({"status": "error", "database": str(exc)[:200]}, status_code=503)
    return JSONResponse({"status": "ok", "database": "ok"})
