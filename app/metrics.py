"""Prometheus metrics: event counters, SMTP send latency, and gauges read from the database at
scrape time (the database, not any one process, knows the queue and the list).

Each app owns a `Metrics` (its own CollectorRegistry, so test apps never share counters). The
module-level functions (`count_signup`, `observe_send`...) record into the metrics of the app
whose lifespan is running; code with no app around it (the standalone worker, a CLI command)
records into a process-wide default that nobody scrapes.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import sqlalchemy as sa
from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlmodel import col

from app.health import queue_figures
from app.models import Delivery, DeliveryStatus, Subscriber, SubscriberStatus, utcnow

# SMTP answers take from a millisecond (local relay) to tens of seconds (greylisting, slow MX).
SEND_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.signups = Counter(
            "signups", "Accepted signup requests (double opt-in started)", ["source"], registry=r
        )
        self.confirmations = Counter(
            "confirmations", "Addresses that confirmed their subscription", registry=r
        )
        self.unsubscribes = Counter("unsubscribes", "Subscribers who unsubscribed", registry=r)
        self.bounces = Counter("bounces", "Bounces and complaints recorded", ["type"], registry=r)
        self.schedule_runs = Counter(
            "schedule_runs", "Scheduled slots run, by outcome", ["outcome"], registry=r
        )
        self.send_latency = Histogram(
            "send_latency_seconds",
            "Duration of one SMTP send (message accepted by the relay)",
            buckets=SEND_BUCKETS,
            registry=r,
        )
        self.click_redirects = Counter(
            "click_redirects", "Tracked links answered with a redirect (/r/{token})", registry=r
        )
        self.clicks = Counter(
            "clicks",
            "Clicks counted on digest links: by readers, or by machines (scanners, HEAD)",
            ["kind"],
            registry=r,
        )
        self.deliveries = Gauge("deliveries", "Deliveries by status", ["status"], registry=r)
        self.queue_depth = Gauge(
            "queue_depth", "Queued deliveries due now (waiting for a worker)", registry=r
        )
        self.subscribers = Gauge("subscribers", "Subscribers by status", ["status"], registry=r)
        self.queue_age = Gauge(
            "queue_oldest_due_seconds",
            "How long the oldest sendable queued delivery has waited since it was due",
            registry=r,
        )
        self.worker_heartbeat_age = Gauge(
            "worker_heartbeat_age_seconds",
            "Seconds since each worker's last heartbeat",
            ["worker"],
            registry=r,
        )
        self.workers_running = Gauge(
            "workers_running", "Workers whose heartbeat is fresh", registry=r
        )

    async def refresh_from_database(
        self, engine: AsyncEngine, *, heartbeat_max_age: float = 120.0
    ) -> None:
        """Set the gauges from the database; every known status appears, zero included."""
        async with engine.connect() as conn:
            deliveries = dict(
                (
                    await conn.execute(
                        sa.select(col(Delivery.status), sa.func.count()).group_by(
                            col(Delivery.status)
                        )
                    )
                ).all()
            )
            due = (
                await conn.execute(
                    sa.select(sa.func.count()).where(
                        col(Delivery.status) == DeliveryStatus.queued,
                        col(Delivery.next_attempt_at) <= utcnow(),
                    )
                )
            ).scalar_one()
            subscribers = dict(
                (
                    await conn.execute(
                        sa.select(col(Subscriber.status), sa.func.count()).group_by(
                            col(Subscriber.status)
                        )
                    )
                ).all()
            )
            figures = await queue_figures(conn)
        for delivery_status in DeliveryStatus:
            value = deliveries.get(delivery_status.value, 0)
            self.deliveries.labels(status=delivery_status.value).set(value)
        for subscriber_status in SubscriberStatus:
            value = subscribers.get(subscriber_status.value, 0)
            self.subscribers.labels(status=subscriber_status.value).set(value)
        self.queue_depth.set(due)
        self.queue_age.set(figures.oldest_due_seconds)
        self.worker_heartbeat_age.clear()  # workers that left are dropped, not frozen
        for worker, age in figures.heartbeats.items():
            self.worker_heartbeat_age.labels(worker=worker).set(age)
        self.workers_running.set(
            sum(1 for a in figures.heartbeats.values() if a <= heartbeat_max_age)
        )

    def render(self) -> bytes:
        return generate_latest(self.registry)


_default = Metrics()
_current: Metrics = _default


@contextlib.contextmanager
def recording_into(metrics: Metrics) -> Iterator[Metrics]:
    """Make `metrics` the target of the module-level functions (an app's lifespan)."""
    global _current
    previous, _current = _current, metrics
    try:
        yield metrics
    finally:
        _current = previous


def count_signup(source: str) -> None:
    _current.signups.labels(source=source).inc()


def count_confirmation() -> None:
    _current.confirmations.inc()


def count_unsubscribe() -> None:
    _current.unsubscribes.inc()


def count_bounce(bounce_type: str) -> None:
    """For the bounce handling: `hard`, `soft` or `complaint`."""
    _current.bounces.labels(type=bounce_type).inc()


def count_schedule_run(outcome: str) -> None:
    """For the schedules: `sent`, `skipped_not_enough_articles` or `failed`."""
    _current.schedule_runs.labels(outcome=outcome).inc()


def observe_send(seconds: float) -> None:
    """For the sender: the time one message took to be accepted over SMTP."""
    _current.send_latency.observe(seconds)


def count_click_redirect() -> None:
    _current.click_redirects.inc()


def count_clicks(*, readers: int, machines: int) -> None:
    """For the click recorder: clicks classified and written."""
    if readers:
        _current.clicks.labels(kind="reader").inc(readers)
    if machines:
        _current.clicks.labels(kind="machine").inc(machines)
