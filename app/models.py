"""All tables and status enums; Alembic's target metadata. The schema changes only by migration."""

from __future__ import annotations

from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

import sqlalchemy as sa
from sqlmodel import Field, SQLModel


def utcnow() -> datetime:
    return datetime.now(UTC)


def as_utc(value: datetime) -> datetime:
    """SQLite hands back naive datetimes for timezone-aware columns; they were stored in UTC."""
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value


def _ts(**kwargs: Any) -> Any:
    """A timezone-aware timestamp column."""
    return Field(sa_type=sa.DateTime(timezone=True), **kwargs)


class SubscriberStatus(StrEnum):
    pending = "pending"
    confirmed = "confirmed"
    unsubscribed = "unsubscribed"
    bounced = "bounced"
    complained = "complained"


SUPPRESSED_STATUSES = (
    SubscriberStatus.unsubscribed,
    SubscriberStatus.bounced,
    SubscriberStatus.complained,
)


class SubscriberEventType(StrEnum):
    """What a subscriber's history records (`subscriber_event.event`)."""

    signup = "signup"
    resignup = "resignup"  # an unsubscribed, bounced or erased address signed up again
    confirmed = "confirmed"
    unsubscribed = "unsubscribed"
    resubscribed = "resubscribed"
    hard_bounce = "hard_bounce"
    soft_bounce = "soft_bounce"
    complaint = "complaint"
    bounced = "bounced"  # the status change a hard bounce (or soft ones) caused
    complained = "complained"
    unbounced = "unbounced"  # a bounce undone (a relay refused everyone by mistake)
    clicked = "clicked"  # TRACK_CLICKS=per_reader only: a link of a digest followed
    erased = "erased"


class Language(StrEnum):
    fr = "fr"
    en = "en"


class ConsentSource(StrEnum):
    form = "form"
    api = "api"
    import_ = "import"


class DigestStatus(StrEnum):
    draft = "draft"
    sending = "sending"
    paused = "paused"
    sent = "sent"
    cancelled = "cancelled"


class DeliveryStatus(StrEnum):
    queued = "queued"
    sending = "sending"
    sent = "sent"
    failed = "failed"
    skipped = "skipped"


class DeliveryKind(StrEnum):
    confirmation = "confirmation"
    digest = "digest"
    test = "test"
    alert = "alert"


class Cadence(StrEnum):
    """How often a reader wants a digest; a schedule serves one cadence."""

    daily = "daily"
    weekly = "weekly"


class ScheduleRunOutcome(StrEnum):
    running = "running"  # claimed by a worker (under a lease), not finished yet
    sent = "sent"
    skipped_not_enough_articles = "skipped_not_enough_articles"
    failed = "failed"


class BounceType(StrEnum):
    hard = "hard"
    soft = "soft"
    complaint = "complaint"


# --- Subscribers -------------------------------------------------------------------------------


class SubscriberBase(SQLModel):
    name: str | None = Field(default=None, max_length=200)
    language: str = Field(default=Language.fr, max_length=8)
    # The digests a reader gets: those of schedules of this cadence (editors' digests go to all).
    cadence: str = Field(default=Cadence.weekly, max_length=16)
    # Category names (spelled as in TOPICS); empty means every article.
    topics: list[str] = Field(default_factory=list, sa_type=sa.JSON)


class Subscriber(SubscriberBase, table=True):
    # Look-ups at a million rows: newest first, of all or of one status; a name's prefix in any
    # case (`lower(name) LIKE 'abc%'`; PostgreSQL needs text_pattern_ops for LIKE on an index).
    # The desk's counts of listed (not erased) subscribers, all or per status: the partial index
    # alone answers them, with no visit to a million rows.
    __table_args__ = (
        sa.Index("ix_subscriber_newest", "created_at", "id"),
        sa.Index("ix_subscriber_status_newest", "status", "created_at", "id"),
        sa.Index(
            "ix_subscriber_listed_status",
            "status",
            postgresql_where=sa.text("erased_at IS NULL"),
            sqlite_where=sa.text("erased_at IS NULL"),
        ),
        sa.Index(
            "ix_subscriber_name_prefix",
            sa.func.lower(sa.text("name")).label("name_lower"),
            postgresql_ops={"name_lower": "text_pattern_ops"},
        ),
    )

    id: int | None = Field(default=None, primary_key=True)
    # The normalised (lower-cased) address; NULL once erased. email_hash (keyed HMAC of the
    # normalised address) is what uniqueness and suppression rely on, so it survives erasure.
    email: str | None = Field(default=None, max_length=320)
    email_hash: str = Field(max_length=64, sa_column_kwargs={"unique": True})
    status: str = Field(default=SubscriberStatus.pending, max_length=16, index=True)
    # ix_subscriber_newest serves the newest-first list and the desk's signups per day.
    created_at: datetime = _ts(default_factory=utcnow)
    updated_at: datetime = _ts(default_factory=utcnow)
    confirmed_at: datetime | None = _ts(default=None)
    unsubscribed_at: datetime | None = _ts(default=None, index=True)  # unsubscribes per day
    bounced_at: datetime | None = _ts(default=None)
    erased_at: datetime | None = _ts(default=None)
    # Consent record: when, from where, how, in which language.
    consent_at: datetime | None = _ts(default=None)
    consent_ip: str | None = Field(default=None, max_length=64)
    consent_user_agent: str | None = Field(default=None, max_length=512)
    consent_source: str | None = Field(default=None, max_length=16)


class SubscriberEvent(SQLModel, table=True):
    """Status history of a subscriber (GDPR access: what happened, when, why)."""

    __tablename__ = "subscriber_event"
    __table_args__ = (
        sa.Index("ix_subscriber_event_event_created", "event", "created_at"),
        # A digest's unsubscribes: the few events that name it, whatever the list's size.
        sa.Index(
            "ix_subscriber_event_digest",
            "digest_id",
            "event",
            postgresql_where=sa.text("digest_id IS NOT NULL"),
            sqlite_where=sa.text("digest_id IS NOT NULL"),
        ),
    )

    id: int | None = Field(default=None, primary_key=True)
    subscriber_id: int = Field(foreign_key="subscriber.id", index=True, ondelete="CASCADE")
    created_at: datetime = _ts(default_factory=utcnow)
    event: str = Field(max_length=32)
    detail: str | None = Field(default=None, max_length=1000)
    # An unsubscribe: the digest of the reader's last copy before leaving (what made them
    # leave, as far as we can tell); counted in that digest's figures.
    digest_id: int | None = Field(default=None)


# --- Editors -----------------------------------------------------------------------------------


class ApiKey(SQLModel, table=True):
    __tablename__ = "api_key"

    id: int | None = Field(default=None, primary_key=True)
    name: str = Field(max_length=100, sa_column_kwargs={"unique": True})
    # SHA-256 of the key: keys are long random strings, so a fast hash is enough.
    key_hash: str = Field(max_length=64, sa_column_kwargs={"unique": True})
    prefix: str = Field(max_length=16)
    created_at: datetime = _ts(default_factory=utcnow)
    last_used_at: datetime | None = _ts(default=None)
    revoked_at: datetime | None = _ts(default=None)


class Editor(SQLModel, table=True):
    """A person who signs in to the desk (`newsletter editors add`)."""

    id: int | None = Field(default=None, primary_key=True)
    email: str = Field(max_length=320, sa_column_kwargs={"unique": True})
    # Argon2 (pwdlib): the hash carries its own salt and parameters.
    password_hash: str = Field(max_length=500)
    is_admin: bool = False
    created_at: datetime = _ts(default_factory=utcnow)


class EditorSession(SQLModel, table=True):
    """A signed-in browser. Stored server-side so removing an editor or resetting a password
    ends it at once; the cookie holds a random token whose SHA-256 is the key here."""

    __tablename__ = "editor_session"

    token_hash: str = Field(primary_key=True, max_length=64)
    editor_id: int = Field(foreign_key="editor.id", index=True, ondelete="CASCADE")
    csrf_token: str = Field(max_length=64)
    created_at: datetime = _ts(default_factory=utcnow)
    last_seen_at: datetime = _ts(default_factory=utcnow)


# --- Articles and digests ----------------------------------------------------------------------


class Article(SQLModel, table=True):
    id: int | None = Field(default=None, primary_key=True)
    guid: str | None = Field(default=None, max_length=1000, sa_column_kwargs={"unique": True})
    url: str = Field(max_length=2000, sa_column_kwargs={"unique": True})
    title: str = Field(max_length=1000)
    summary: str | None = Field(default=None, sa_type=sa.Text)
    content_html: str | None = Field(default=None, sa_type=sa.Text)
    author: str | None = Field(default=None, max_length=300)
    categories: list[str] = Field(default_factory=list, sa_type=sa.JSON)
    image_url: str | None = Field(default=None, max_length=2000)
    image_alt: str | None = Field(default=None, max_length=500)
    # Hidden: kept for the digests that hold it, offered to no new digest.
    hidden_at: datetime | None = _ts(default=None)
    published_at: datetime | None = _ts(default=None, index=True)
    created_at: datetime = _ts(default_factory=utcnow)
    updated_at: datetime = _ts(default_factory=utcnow)


class Feed(SQLModel, table=True):
    """A polled feed: HTTP caching validators and the last outcome."""

    id: int | None = Field(default=None, primary_key=True)
    url: str = Field(max_length=2000, sa_column_kwargs={"unique": True})
    etag: str | None = Field(default=None, max_length=500)
    modified: str | None = Field(default=None, max_length=100)
    last_polled_at: datetime | None = _ts(default=None)
    last_error: str | None = Field(default=None, max_length=2000)
    # Polls that failed in a row (reset by a good one): past ALERT_FEED_FAILURES, an alert.
    failures: int = 0


class Digest(SQLModel, table=True):
    # The archive lists sent digests newest first.
    __table_args__ = (sa.Index("ix_digest_archive", "status", "archived", "sent_at"),)

    id: int | None = Field(default=None, primary_key=True)
    subject: str | None = Field(default=None, max_length=300)  # every language
    # Per language ({"fr": ..., "en": ...}): a language here wins over `subject`.
    subject_translations: dict[str, str] = Field(default_factory=dict, sa_type=sa.JSON)
    # The editor's introduction: {"*": text} for every language, or per language.
    intro: dict[str, str] = Field(default_factory=dict, sa_type=sa.JSON)
    status: str = Field(default=DigestStatus.draft, max_length=16, index=True)
    created_at: datetime = _ts(default_factory=utcnow)
    send_started_at: datetime | None = _ts(default=None)
    sent_at: datetime | None = _ts(default=None)
    cancelled_at: datetime | None = _ts(default=None)
    # A draft scheduled by an editor: a worker sends it when this time comes (then clears it).
    send_at: datetime | None = _ts(default=None)
    paused_reason: str | None = Field(default=None, max_length=2000)
    recipients: int = 0
    # Shown in the public archive once sent (`archive: false` at creation leaves it out).
    archived: bool = Field(default=True, sa_column_kwargs={"server_default": sa.true()})
    # Set for a schedule's digest: it goes only to readers of this cadence. None: to everyone.
    cadence: str | None = Field(default=None, max_length=16)
    schedule_id: int | None = Field(
        default=None, foreign_key="schedule.id", index=True, ondelete="SET NULL"
    )


class DigestArticle(SQLModel, table=True):
    """A frozen copy of an article as it stood when the digest was composed."""

    __tablename__ = "digest_article"
    __table_args__ = (sa.UniqueConstraint("digest_id", "position"),)

    id: int | None = Field(default=None, primary_key=True)
    digest_id: int = Field(foreign_key="digest.id", index=True, ondelete="CASCADE")
    article_id: int | None = Field(
        default=None, foreign_key="article.id", index=True, ondelete="SET NULL"
    )
    position: int
    title: str = Field(max_length=1000)
    url: str = Field(max_length=2000)
    summary: str | None = Field(default=None, sa_type=sa.Text)
    author: str | None = Field(default=None, max_length=300)
    categories: list[str] = Field(default_factory=list, sa_type=sa.JSON)
    image_url: str | None = Field(default=None, max_length=2000)
    image_alt: str | None = Field(default=None, max_length=500)
    published_at: datetime | None = _ts(default=None)


class ClickCount(SQLModel, table=True):
    """Clicks on one article link of a digest (app.clicks), written in batches. Position
    WHOLE_DIGEST (-1) holds the digest's unique readers (a reader who clicked any link)."""

    __tablename__ = "click_count"

    digest_id: int = Field(foreign_key="digest.id", primary_key=True, ondelete="CASCADE")
    position: int = Field(primary_key=True)
    clicks: int = 0  # counted reader clicks
    unique_clicks: int = 0  # distinct copies (readers) among them
    machine_clicks: int = 0  # HEAD, scanner agents, bursts: not readers


class ClickSeen(SQLModel, table=True):
    """A keyed one-way tag of (copy, link) already counted, so a reader counts once per link
    (and once per digest): no subscriber id, time, address or user agent."""

    __tablename__ = "click_seen"

    digest_id: int = Field(foreign_key="digest.id", primary_key=True, ondelete="CASCADE")
    tag: str = Field(primary_key=True, max_length=32)


# --- Schedules ---------------------------------------------------------------------------------


class Schedule(SQLModel, table=True):
    """A recurrence (cron in a time zone) that composes and sends a digest when there is news."""

    id: int | None = Field(default=None, primary_key=True)
    name: str = Field(max_length=200)
    cron: str = Field(max_length=100)
    timezone: str = Field(max_length=64)
    cadence: str = Field(default=Cadence.weekly, max_length=16)
    min_articles: int = 1
    max_articles: int = 15
    categories: list[str] = Field(default_factory=list, sa_type=sa.JSON)
    # As a digest's: one text for every language, or {"fr": ..., "en": ...}; None: the default.
    subject: str | dict[str, str] | None = Field(default=None, sa_type=sa.JSON)
    intro: str | dict[str, str] | None = Field(default=None, sa_type=sa.JSON)
    enabled: bool = True
    # Slots before this instant are never run (set at creation and when re-enabled), so a new
    # schedule does not send at once for a slot that passed before it existed.
    active_since: datetime = _ts(default_factory=utcnow)
    created_at: datetime = _ts(default_factory=utcnow)
    updated_at: datetime = _ts(default_factory=utcnow)


class ScheduleRun(SQLModel, table=True):
    """One slot of one schedule: the unique key makes it run once, whatever the workers."""

    __tablename__ = "schedule_run"
    __table_args__ = (sa.UniqueConstraint("schedule_id", "slot_at", name="uq_schedule_run_slot"),)

    id: int | None = Field(default=None, primary_key=True)
    schedule_id: int = Field(foreign_key="schedule.id", index=True, ondelete="CASCADE")
    slot_at: datetime = _ts()
    outcome: str = Field(default=ScheduleRunOutcome.running, max_length=32)
    started_at: datetime = _ts(default_factory=utcnow)
    finished_at: datetime | None = _ts(default=None)
    # A worker that died mid-run leaves its lease to run out; another takes the slot over.
    lease_until: datetime | None = _ts(default=None)
    leased_by: str | None = Field(default=None, max_length=100)
    digest_id: int | None = Field(
        default=None, foreign_key="digest.id", index=True, ondelete="SET NULL"
    )
    article_count: int = 0
    detail: str | None = Field(default=None, max_length=2000)


# --- The outbox --------------------------------------------------------------------------------


class Delivery(SQLModel, table=True):
    """One email to one address. Every email the service sends is a row here first."""

    __table_args__ = (
        # One copy of a digest per subscriber, whatever the number of send calls or workers.
        sa.UniqueConstraint("digest_id", "subscriber_id", name="uq_delivery_digest_subscriber"),
        # Claim order, queued rows only: a claim reads the head of this index and stops, never
        # sorting the queue (app.outbox.queue.claim_batch). Expired leases: the second one.
        sa.Index(
            "ix_delivery_queued",
            "next_attempt_at",
            "id",
            postgresql_where=sa.text("status = 'queued'"),
            sqlite_where=sa.text("status = 'queued'"),
        ),
        sa.Index(
            "ix_delivery_leased",
            "lease_until",
            postgresql_where=sa.text("status = 'sending'"),
            sqlite_where=sa.text("status = 'sending'"),
        ),
    )

    id: int | None = Field(default=None, primary_key=True)
    kind: str = Field(max_length=16)
    subscriber_id: int | None = Field(
        default=None, foreign_key="subscriber.id", index=True, ondelete="CASCADE"
    )
    digest_id: int | None = Field(default=None, foreign_key="digest.id", ondelete="CASCADE")
    # Only for test sends, which go to an address that need not be a subscriber.
    to_address: str | None = Field(default=None, max_length=320)
    language: str | None = Field(default=None, max_length=8)
    status: str = Field(default=DeliveryStatus.queued, max_length=16)
    attempts: int = 0
    next_attempt_at: datetime = _ts(default_factory=utcnow)
    lease_until: datetime | None = _ts(default=None)
    leased_by: str | None = Field(default=None, max_length=100)
    message_id: str | None = Field(default=None, max_length=300)
    last_error: str | None = Field(default=None, max_length=2000)
    created_at: datetime = _ts(default_factory=utcnow)
    sent_at: datetime | None = _ts(default=None)
    # Alert emails only: the incident told (app.alerts). No foreign key: a column added in
    # place on SQLite (no copy of the largest table); incidents are never deleted.
    alert_id: int | None = Field(default=None, index=True)


class DigestTally(SQLModel, table=True):
    """Signed counts of a digest's copies per delivery status, written by database triggers in
    the transaction of each change (migration 0004_scale): progress sums a few rows, not every
    delivery. Rows are only ever inserted (two workers never wait on one another); the worker
    folds old ones together (app.digests.tally). Deleting deliveries leaves them: figures
    outlive the rows."""

    __tablename__ = "digest_tally"
    __table_args__ = (sa.Index("ix_digest_tally_digest", "digest_id", "status", "created_at"),)

    id: int | None = Field(default=None, primary_key=True)
    digest_id: int = Field(foreign_key="digest.id", ondelete="CASCADE")
    status: str = Field(max_length=16)
    n: int
    created_at: datetime = _ts(default_factory=utcnow)


# --- Bounces -----------------------------------------------------------------------------------


class BounceEvent(SQLModel, table=True):
    __tablename__ = "bounce_event"

    id: int | None = Field(default=None, primary_key=True)
    subscriber_id: int = Field(foreign_key="subscriber.id", index=True, ondelete="CASCADE")
    type: str = Field(max_length=16)
    reason: str | None = Field(default=None, max_length=2000)
    source: str = Field(default="api", max_length=16)
    # Returned mail only: the report's Message-ID or SHA-256 (app.bounces.reports.report_id);
    # unique, so that reading the same mailbox again never applies a report twice.
    report_id: str | None = Field(default=None, max_length=200, unique=True, index=True)
    # The send (digest) the bounce or complaint is about: the one its report names, else the
    # reader's latest copy. Counts toward that send's breakers and a reader's soft-bounce run.
    digest_id: int | None = Field(default=None, index=True)
    created_at: datetime = _ts(default_factory=utcnow, index=True)  # the desk's log, newest first


# --- Deliverability of each send (written by workers and the bounce handling) -----------------


class SendTally(SQLModel, table=True):
    """Outcome counters of one send per recipient domain: a few hundred rows for a million
    readers, so a send's figures and breakers read counters, never the deliveries."""

    __tablename__ = "send_tally"

    kind: str = Field(primary_key=True, max_length=16)
    send_id: int = Field(primary_key=True)
    domain: str = Field(primary_key=True, max_length=255)
    delivered: int = 0  # accepted by the relay
    deferred: int = 0  # a temporary refusal (4xx, throttling): tried again later
    bounced: int = 0  # a hard bounce at send time
    complaints: int = 0  # spam complaints reported about this send


class SendPace(SQLModel, table=True):
    """The pace each worker keeps for a send it is sending (app.worker.pacing), reported after
    each batch: the digest's progress shows it, and whether the relay throttles."""

    __tablename__ = "send_pace"

    kind: str = Field(primary_key=True, max_length=16)
    send_id: int = Field(primary_key=True)
    worker_id: str = Field(primary_key=True, max_length=100)
    rate_per_second: float | None = None  # None: unlimited (never throttled)
    throttled_at: datetime | None = _ts(default=None)  # the relay's last throttling reply
    updated_at: datetime = _ts(default_factory=utcnow)


class SendBreaker(SQLModel, table=True):
    """The counters of a send when it was last resumed: the breakers judge only what came
    since (else a send a breaker paused would pause again at once)."""

    __tablename__ = "send_breaker"

    kind: str = Field(primary_key=True, max_length=16)
    send_id: int = Field(primary_key=True)
    delivered: int = 0
    bounced: int = 0
    complaints: int = 0
    rebased_at: datetime = _ts(default_factory=utcnow)


# --- Keys --------------------------------------------------------------------------------------


class StoredSecret(SQLModel, table=True):
    """A secret the service creates for itself and keeps with its data (app.keys): the
    address-hashing key, which must outlive any rotation of SECRET_KEY."""

    __tablename__ = "stored_secret"

    name: str = Field(primary_key=True, max_length=64)
    value: str = Field(max_length=500)
    created_at: datetime = _ts(default_factory=utcnow)


# --- Operations: alerts, audit, heartbeats -----------------------------------------------------


class WebhookStatus(StrEnum):
    none = "none"  # no ALERT_WEBHOOK_URL when the incident opened
    pending = "pending"
    sent = "sent"
    failed = "failed"


class AlertIncident(SQLModel, table=True):
    """Something the editors must hear of, told once (app.alerts): `key` names the condition
    (`send:12:paused`), so the same condition raised again while open tells nobody again."""

    __tablename__ = "alert_incident"

    id: int | None = Field(default=None, primary_key=True)
    key: str = Field(max_length=200, sa_column_kwargs={"unique": True})
    kind: str = Field(max_length=32)
    params: dict[str, Any] = Field(default_factory=dict, sa_type=sa.JSON)
    opened_at: datetime = _ts(default_factory=utcnow)
    resolved_at: datetime | None = _ts(default=None)
    times_opened: int = 1
    # When the editors were told (outbox rows queued); NULL: a worker tells them soon.
    told_at: datetime | None = _ts(default=None)
    webhook_status: str = Field(default=WebhookStatus.none, max_length=16, index=True)
    webhook_attempts: int = 0
    # Not before: a claim (one worker posts) and, after a failure, the retry's backoff.
    webhook_next_at: datetime | None = _ts(default=None)
    webhook_error: str | None = Field(default=None, max_length=500)


class AuditEvent(SQLModel, table=True):
    """An editor's action: who (API key name, CLI user), from where, what, on what, when."""

    __tablename__ = "audit_event"

    id: int | None = Field(default=None, primary_key=True)
    created_at: datetime = _ts(default_factory=utcnow, index=True)
    actor: str = Field(max_length=200)
    source: str = Field(max_length=16)  # api | cli | desk
    action: str = Field(max_length=64, index=True)
    target_type: str | None = Field(default=None, max_length=32)
    target_id: str | None = Field(default=None, max_length=200)
    detail: str | None = Field(default=None, max_length=2000)


class WorkerHeartbeat(SQLModel, table=True):
    """A running worker's last sign of life (app.background writes it; /healthz reads it)."""

    __tablename__ = "worker_heartbeat"

    worker_id: str = Field(primary_key=True, max_length=100)
    started_at: datetime = _ts(default_factory=utcnow)
    seen_at: datetime = _ts(default_factory=utcnow, index=True)
