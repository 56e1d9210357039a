"""Compose a digest (a frozen copy of recent articles), queue its send, follow its progress."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import sqlalchemy as sa
from sqlmodel import col, func, or_, select
from sqlmodel.ext.asyncio.session import AsyncSession

from app.addresses import address_key
from app.alerts import service as alerts
from app.digests.tally import read_tallies
from app.models import (
    Article,
    BounceEvent,
    BounceType,
    Delivery,
    DeliveryKind,
    DeliveryStatus,
    Digest,
    DigestArticle,
    DigestStatus,
    DigestTally,
    Subscriber,
    SubscriberEvent,
    SubscriberEventType,
    SubscriberStatus,
    as_utc,
    utcnow,
)
from app.outbox import breakers, signals, tally
from app.outbox import queue as outbox

DEFAULT_MAX_ARTICLES = 15
MAX_ARTICLES = 50
MAX_TEST_ADDRESSES = 10
MAX_INTRO_CHARS = 5000
# A digest whose send has started: its articles have reached (some) readers already.
STARTED_STATUSES = (DigestStatus.sending, DigestStatus.paused, DigestStatus.sent)
COUNTED_STATUSES = tuple(s.value for s in DeliveryStatus)
# The statuses in which a send can still be stopped for good.
CANCELLABLE_STATUSES = (DigestStatus.draft, DigestStatus.sending, DigestStatus.paused)
EDITOR_PAUSE_REASON = "paused by an editor"
CANCELLED_REASON = "digest cancelled"
RATE_WINDOW_SECONDS = 60
ALL_LANGUAGES = "*"  # the key of a text meant for every language (`Digest.intro`)
# A subject or intro: one text for every language, or one per language.
PerLanguage = str | Mapping[str, str]


class NoNewArticles(ValueError):
    pass


class UnknownArticles(ValueError):
    def __init__(self, ids: Sequence[int]) -> None:
        super().__init__(f"unknown article ids: {', '.join(str(i) for i in ids)}")
        self.ids = list(ids)


class DigestNotFound(LookupError):
    pass


class DigestNotDraft(Exception):
    """Send or edit of a digest that is not a draft any more: nothing is added or changed."""

    def __init__(self, status: str, *, edited: bool = False) -> None:
        outcome = "nothing was changed" if edited else "nothing was queued"
        super().__init__(f"the digest is {status}, not draft: {outcome}")
        self.status = status


class DigestStatusConflict(Exception):
    """Pause, resume or cancel asked of a digest whose status does not allow it."""

    def __init__(self, action: str, status: str, allowed: Sequence[str]) -> None:
        super().__init__(
            f"cannot {action} a digest that is {status} (only when {' or '.join(allowed)})"
        )
        self.status = status


@dataclass(frozen=True, slots=True)
class DigestCounts:
    queued: int = 0
    sending: int = 0
    sent: int = 0
    failed: int = 0
    skipped: int = 0


@dataclass(frozen=True, slots=True)
class DigestProgress:
    counts: DigestCounts
    # Messages per second over the last RATE_WINDOW_SECONDS (or since the send started, when
    # that is sooner); None when none went out then.
    rate_per_second: float | None
    # Seconds until queued + sending are done at that rate; None without a rate, with nothing
    # left, or when the digest is not sending (a paused send has no end in sight).
    eta_seconds: float | None
    progress: float  # decided (sent, failed, skipped) / recipients, 0..1
    # The pace the workers keep for this send (app.worker.pacing), summed; None: unlimited.
    pace_per_second: float | None = None
    # When the relay last answered with a throttling reply (within the last minute), else None.
    throttled_at: datetime | None = None
    bounce_rate: float | None = None  # hard bounces / (delivered + hard bounces)
    complaint_rate: float | None = None  # complaints / delivered copies

    def figures(self) -> dict[str, object]:
        """The progress fields every reader of a send shows (the API's digest, the desk's
        progress bar), by their API names."""
        counts = self.counts
        return {
            "queued": counts.queued,
            "sending": counts.sending,
            "sent": counts.sent,
            "failed": counts.failed,
            "skipped": counts.skipped,
            "rate_per_second": self.rate_per_second,
            "eta_seconds": self.eta_seconds,
            "progress": self.progress,
            "pace_per_second": self.pace_per_second,
            "throttled_by_relay": self.throttled_at is not None,
            "throttled_at": self.throttled_at,
            "bounce_rate": self.bounce_rate,
            "complaint_rate": self.complaint_rate,
        }


@dataclass(frozen=True, slots=True)
class DomainFigures:
    domain: str
    delivered: int
    deferred: int
    bounced: int
    complaints: int


@dataclass(frozen=True, slots=True)
class Deliverability:
    delivered: int
    deferred: int
    bounced: int
    complaints: int
    bounce_rate: float | None
    complaint_rate: float | None
    domains: list[DomainFigures]
    domain_count: int  # all the domains, of which `domains` are the largest


def _rates(counts: tally.Counts) -> tuple[float | None, float | None]:
    bounce = counts.bounced / counts.attempts if counts.attempts else None
    complaint = counts.complaints / counts.delivered if counts.delivered else None
    return bounce, complaint


# --- Compose -----------------------------------------------------------------------------------


async def _new_articles(
    session: AsyncSession, *, since: datetime | None, limit: int
) -> list[Article]:
    """Articles not in any digest whose send has started, newest first."""
    already_sent = (
        select(DigestArticle.article_id)
        .join(Digest, col(Digest.id) == col(DigestArticle.digest_id))
        .where(col(Digest.status).in_(STARTED_STATUSES), col(DigestArticle.article_id).is_not(None))
    )
    newest = func.coalesce(col(Article.published_at), col(Article.created_at))
    query = select(Article).where(
        col(Article.id).not_in(already_sent), col(Article.hidden_at).is_(None)
    )
    if since is not None:
        query = query.where(newest >= since)
    query = query.order_by(newest.desc(), col(Article.id).desc()).limit(limit)
    return list((await session.exec(query)).all())


async def _chosen_articles(session: AsyncSession, *, article_ids: Sequence[int]) -> list[Article]:
    wanted = list(dict.fromkeys(article_ids))  # the editor's order, each once
    found = {
        a.id: a
        for a in (await session.exec(select(Article).where(col(Article.id).in_(wanted)))).all()
    }
    missing = [i for i in wanted if i not in found]
    if missing:
        raise UnknownArticles(missing)
    return [found[i] for i in wanted]


async def create_digest(
    session: AsyncSession,
    *,
    subject: PerLanguage | None = None,
    intro: PerLanguage | None = None,
    article_ids: Sequence[int] | None = None,
    since: datetime | None = None,
    max_articles: int = DEFAULT_MAX_ARTICLES,
    cadence: str | None = None,
    schedule_id: int | None = None,
    archived: bool = True,
) -> Digest:
    """A draft digest with a frozen copy of its articles, so later edits do not change it.
    `subject` None: each language gets its default subject at render time. `cadence`: a
    schedule's digest, for the readers of that cadence only."""
    if article_ids:
        articles = await _chosen_articles(session, article_ids=article_ids)
    else:
        articles = await _new_articles(session, since=since, limit=max_articles)
    if not articles:
        raise NoNewArticles("no new articles: every article is already in a sent digest")
    digest = Digest(cadence=cadence, schedule_id=schedule_id, archived=archived)
    _set_subject(digest, subject)
    digest.intro = _per_language(intro)
    session.add(digest)
    await session.flush()
    assert digest.id is not None
    _freeze(session, digest_id=digest.id, articles=articles)
    await session.flush()
    return digest


def _freeze(session: AsyncSession, *, digest_id: int, articles: Sequence[Article]) -> None:
    """The digest's copies of `articles`, in this order."""
    for position, article in enumerate(articles):
        session.add(
            DigestArticle(
                digest_id=digest_id,
                article_id=article.id,
                position=position,
                title=article.title,
                url=article.url,
                summary=article.summary,
                author=article.author,
                categories=list(article.categories or []),
                image_url=article.image_url,
                image_alt=article.image_alt,
                published_at=article.published_at,
            )
        )


def _per_language(value: PerLanguage | None) -> dict[str, str]:
    """A string for every language is {"*": text}; a mapping is kept per language."""
    if value is None:
        return {}
    if isinstance(value, str):
        return {ALL_LANGUAGES: value}
    return {str(language): text for language, text in value.items()}


def _set_subject(digest: Digest, subject: PerLanguage | None) -> None:
    if isinstance(subject, str) or subject is None:
        digest.subject, digest.subject_translations = subject, {}
    else:
        digest.subject, digest.subject_translations = None, _per_language(subject)


UNSET: Any = object()


async def update_draft(
    session: AsyncSession,
    *,
    digest_id: int,
    subject: PerLanguage | None = UNSET,
    intro: PerLanguage | None = UNSET,
    article_ids: Sequence[int] | None = UNSET,
) -> Digest:
    """Change a draft: its subject, intro, articles (these, in this order, copied afresh).

    The conditional UPDATE on the digest row comes first and is the lock: a send that starts
    meanwhile waits for this transaction (PostgreSQL) and sends the edited draft; an edit after
    the send started changes nothing and gets DigestNotDraft (409).
    """
    locked = await session.execute(
        sa.update(Digest)
        .where(col(Digest.id) == digest_id, col(Digest.status) == DigestStatus.draft)
        .values(status=DigestStatus.draft)
        .execution_options(synchronize_session=False)
    )
    digest = await get_digest(session, digest_id=digest_id)  # DigestNotFound first
    await session.refresh(digest)
    if getattr(locked, "rowcount", 0) != 1:
        raise DigestNotDraft(digest.status, edited=True)
    if subject is not UNSET:
        _set_subject(digest, subject)
    if intro is not UNSET:
        digest.intro = _per_language(intro)
    if article_ids is not UNSET and article_ids is not None:
        articles = await _chosen_articles(session, article_ids=article_ids)
        await session.execute(
            sa.delete(DigestArticle)
            .where(col(DigestArticle.digest_id) == digest_id)
            .execution_options(synchronize_session=False)
        )
        _freeze(session, digest_id=digest_id, articles=articles)
    session.add(digest)
    await session.flush()
    return digest


async def get_digest(session: AsyncSession, *, digest_id: int) -> Digest:
    digest = await session.get(Digest, digest_id)
    if digest is None:
        raise DigestNotFound(f"no digest {digest_id}")
    return digest


async def digest_articles(session: AsyncSession, *, digest_id: int) -> list[DigestArticle]:
    rows = await session.exec(
        select(DigestArticle)
        .where(DigestArticle.digest_id == digest_id)
        .order_by(col(DigestArticle.position))
    )
    return list(rows.all())


async def articles_of_digests(
    session: AsyncSession, *, digest_ids: Sequence[int]
) -> dict[int, list[DigestArticle]]:
    """The frozen articles of several digests, in one query (a list page is not N+1)."""
    found: dict[int, list[DigestArticle]] = {i: [] for i in digest_ids}
    if not digest_ids:
        return found
    rows = await session.exec(
        select(DigestArticle)
        .where(col(DigestArticle.digest_id).in_(list(digest_ids)))
        .order_by(col(DigestArticle.digest_id), col(DigestArticle.position))
    )
    for article in rows.all():
        found[article.digest_id].append(article)
    return found


async def list_digests(
    session: AsyncSession, *, limit: int, offset: int
) -> tuple[list[Digest], int]:
    rows = await session.exec(
        select(Digest)
        .order_by(col(Digest.created_at).desc(), col(Digest.id).desc())
        .limit(limit)
        .offset(offset)
        # Rows changed by an UPDATE in this transaction read as they now are.
        .execution_options(populate_existing=True)
    )
    total = (await session.exec(select(func.count()).select_from(Digest))).one()
    return list(rows.all()), int(total)


# --- Send --------------------------------------------------------------------------------------


async def send_digest(session: AsyncSession, *, digest_id: int) -> Digest:
    """Queue one delivery per confirmed subscriber, in the caller's transaction.

    The conditional UPDATE is the lock: of two simultaneous calls, one moves the digest from
    draft to sending, the other updates nothing and gets DigestNotDraft (PostgreSQL makes the
    second wait on the row lock and re-check the WHERE; SQLite has one writer at a time). The
    unique (digest_id, subscriber_id) constraint is the last guard: nobody gets two copies.
    """
    now = utcnow()
    claimed = await session.execute(
        sa.update(Digest)
        .where(col(Digest.id) == digest_id, col(Digest.status) == DigestStatus.draft)
        .values(status=DigestStatus.sending, send_started_at=now, send_at=None)
        .execution_options(synchronize_session=False)
    )
    if getattr(claimed, "rowcount", 0) != 1:
        digest = await get_digest(session, digest_id=digest_id)
        await session.refresh(digest)
        raise DigestNotDraft(digest.status)

    # One INSERT ... SELECT: 100,000 subscribers stay one statement, not 100,000 round trips.
    # Who confirms after this statement is not added. A schedule's digest goes to the readers
    # of its cadence; an editor's to everyone.
    cadence = (await session.exec(select(Digest.cadence).where(col(Digest.id) == digest_id))).one()
    recipients = sa.select(col(Subscriber.id), col(Subscriber.language)).where(
        col(Subscriber.status) == SubscriberStatus.confirmed,
        col(Subscriber.email).is_not(None),
    )
    if cadence is not None:
        recipients = recipients.where(col(Subscriber.cadence) == cadence)
    count = await outbox.enqueue_selected(
        session, kind=DeliveryKind.digest, recipients=recipients, digest_id=digest_id, now=now
    )
    await outbox.refresh_statistics(session)
    # Each batch of copies looks its readers up by id: without statistics (a list loaded since
    # the last autovacuum, or autovacuum off) PostgreSQL read the whole table for every batch
    # (35 ms a batch at 60,000 readers).
    await session.execute(sa.text("ANALYZE subscriber"))
    values: dict[str, object] = {"recipients": count}
    if count == 0:  # nobody to send to: the send is over as soon as it starts
        values.update(status=DigestStatus.sent, sent_at=now)
    await session.execute(
        sa.update(Digest)
        .where(col(Digest.id) == digest_id)
        .values(**values)
        .execution_options(synchronize_session=False)
    )
    digest = await get_digest(session, digest_id=digest_id)
    await session.refresh(digest)
    return digest


class SendTimePassed(ValueError):
    """A scheduled send at a time that has already come, or more than MAX_SCHEDULE_AHEAD on."""


MAX_SCHEDULE_AHEAD = timedelta(days=366)


async def schedule_send(
    session: AsyncSession, *, digest_id: int, at: datetime, now: datetime | None = None
) -> Digest:
    """Have a draft sent at `at` (timezone-aware) by a worker, or move its time. SendTimePassed
    for a time not in the future; DigestNotDraft once it is sent or cancelled."""
    now = now or utcnow()
    try:
        at = at.astimezone(UTC)
    except OverflowError as exc:  # 9999-12-31T23:59-01:00 is past the last datetime
        raise SendTimePassed("the time is out of range") from exc
    if at <= now:
        raise SendTimePassed(f"{at.isoformat()} is not in the future")
    if at > now + MAX_SCHEDULE_AHEAD:
        raise SendTimePassed("a scheduled send is at most a year ahead")
    return await _set_send_at(session, digest_id=digest_id, at=at)


async def unschedule_send(session: AsyncSession, *, digest_id: int) -> Digest:
    """A scheduled draft stays a draft, unscheduled (a draft not scheduled: unchanged).
    DigestNotDraft once it is sent or cancelled (too late)."""
    return await _set_send_at(session, digest_id=digest_id, at=None)


async def _set_send_at(session: AsyncSession, *, digest_id: int, at: datetime | None) -> Digest:
    """A draft's send time, in one UPDATE that only a draft passes: DigestNotFound, then
    DigestNotDraft."""
    await get_digest(session, digest_id=digest_id)
    changed = await session.execute(
        sa.update(Digest)
        .where(col(Digest.id) == digest_id, col(Digest.status) == DigestStatus.draft)
        .values(send_at=at)
        .execution_options(synchronize_session=False)
    )
    digest = await _reloaded(session, digest_id)
    if getattr(changed, "rowcount", 0) != 1:
        raise DigestNotDraft(digest.status)
    return digest


async def due_digests(session: AsyncSession, *, now: datetime) -> list[int]:
    """Drafts whose scheduled time has come, oldest time first (the worker sends them)."""
    rows = await session.exec(
        select(Digest.id)
        .where(
            col(Digest.status) == DigestStatus.draft,
            col(Digest.send_at).is_not(None),
            col(Digest.send_at) <= now,
        )
        .order_by(col(Digest.send_at), col(Digest.id))
    )
    return [digest_id for digest_id in rows.all() if digest_id is not None]


async def send_if_due(session: AsyncSession, *, digest_id: int, now: datetime) -> Digest | None:
    """Send a scheduled draft whose time has come, in the caller's transaction; None when it is
    not due any more (another worker sent it, an editor unscheduled, cancelled or sent it).

    The conditional UPDATE is the claim: of two workers, the second waits on the row lock
    (PostgreSQL) or for the single writer (SQLite), then finds `send_at` cleared and updates
    nothing. send_digest's own draft -> sending UPDATE is a second guard."""
    claimed = await session.execute(
        sa.update(Digest)
        .where(
            col(Digest.id) == digest_id,
            col(Digest.status) == DigestStatus.draft,
            col(Digest.send_at).is_not(None),
            col(Digest.send_at) <= now,
        )
        .values(send_at=None)
        .execution_options(synchronize_session=False)
    )
    if getattr(claimed, "rowcount", 0) != 1:
        return None
    return await send_digest(session, digest_id=digest_id)


async def queue_test_sends(
    session: AsyncSession, *, digest_id: int, emails: Sequence[str], language: str
) -> int:
    """Test copies to any address (normalised by the caller), whatever the digest's status."""
    await get_digest(session, digest_id=digest_id)
    # One copy per mailbox: addresses that differ only in case are the same editor's.
    unique: dict[str, str] = {}
    for email in emails:
        unique.setdefault(address_key(email), email)
    for email in unique.values():
        outbox.enqueue(
            session,
            kind=DeliveryKind.test,
            digest_id=digest_id,
            to_address=email,
            language=language,
        )
    await session.flush()
    return len(unique)


# --- Control -----------------------------------------------------------------------------------
# Each change is one conditional UPDATE on the digest row: of two racing calls (two editors, an
# editor and a worker pausing a broken setup) exactly one wins, the other sees the new status.


async def _conflict(
    session: AsyncSession, *, digest_id: int, action: str, allowed: Sequence[str]
) -> DigestStatusConflict:
    digest = await get_digest(session, digest_id=digest_id)  # DigestNotFound first
    await session.refresh(digest)
    return DigestStatusConflict(action, digest.status, allowed)


async def pause_digest(
    session: AsyncSession, *, digest_id: int, reason: str, by_editor: bool = False
) -> bool:
    """`sending` -> `paused` with the reason; False when the digest was not sending. The sender
    claims only deliveries of `sending` digests, so queued rows simply wait. Every pause that
    is not an editor's (broken relay or setup, a breaker) tells the editors (app.alerts)."""
    result = await session.execute(
        sa.update(Digest)
        .where(col(Digest.id) == digest_id, col(Digest.status) == DigestStatus.sending)
        .values(status=DigestStatus.paused, paused_reason=reason[:2000])
        .execution_options(synchronize_session=False)
    )
    if not getattr(result, "rowcount", 0):
        return False
    # Workers stop at once the copies they hold (they hear it when this commits).
    await signals.publish(session, signals.halt_signal(digest_id))
    if not by_editor:
        await alerts.send_paused(session, digest_id=digest_id, reason=reason)
    return True


async def pause_send(session: AsyncSession, *, digest_id: int) -> Digest:
    """An editor's pause: rows a worker already holds go back to the queue within half a second
    (the worker checks its digests while a batch is on the wire)."""
    if not await pause_digest(
        session, digest_id=digest_id, reason=EDITOR_PAUSE_REASON, by_editor=True
    ):
        raise await _conflict(session, digest_id=digest_id, action="pause", allowed=["sending"])
    return await _reloaded(session, digest_id)


async def resume_send(session: AsyncSession, *, digest_id: int) -> Digest:
    """`paused` -> `sending`. Rows the sender put back with a backoff (broken setup) are made
    due now, so sending restarts at once rather than after the last backoff."""
    now = utcnow()
    result = await session.execute(
        sa.update(Digest)
        .where(col(Digest.id) == digest_id, col(Digest.status) == DigestStatus.paused)
        .values(status=DigestStatus.sending, paused_reason=None)
        .execution_options(synchronize_session=False)
    )
    if not getattr(result, "rowcount", 0):
        raise await _conflict(session, digest_id=digest_id, action="resume", allowed=["paused"])
    await signals.publish(session, signals.resume_signal(digest_id))
    await alerts.send_resumed(session, digest_id=digest_id)
    # The editor resumes knowing the figures: the breakers judge what comes from here on.
    await breakers.rebase(session, kind=DeliveryKind.digest, send_id=digest_id)
    await session.execute(
        sa.update(Delivery)
        .where(
            col(Delivery.digest_id) == digest_id,
            col(Delivery.kind) == DeliveryKind.digest,
            col(Delivery.status) == DeliveryStatus.queued,
            col(Delivery.next_attempt_at) > now,
        )
        .values(next_attempt_at=now)
        .execution_options(synchronize_session=False)
    )
    await finish_completed_digests(session)  # the rows a worker held may have been the last
    return await _reloaded(session, digest_id)


async def cancel_send(session: AsyncSession, *, digest_id: int) -> Digest:
    """`draft`, `sending` or `paused` -> `cancelled`; every delivery still waiting is skipped,
    in the same transaction. Rows a worker holds right now are skipped as it lets go of them,
    within half a second; only messages already on the wire still go out."""
    now = utcnow()
    result = await session.execute(
        sa.update(Digest)
        .where(col(Digest.id) == digest_id, col(Digest.status).in_(CANCELLABLE_STATUSES))
        .values(status=DigestStatus.cancelled, cancelled_at=now, paused_reason=None)
        .execution_options(synchronize_session=False)
    )
    if not getattr(result, "rowcount", 0):
        raise await _conflict(
            session,
            digest_id=digest_id,
            action="cancel",
            allowed=[s.value for s in CANCELLABLE_STATUSES],
        )
    await skip_cancelled_copies(session, digest_id=digest_id, now=now)
    await alerts.send_resumed(session, digest_id=digest_id)  # nothing left to fix
    await signals.publish(session, signals.halt_signal(digest_id))
    return await _reloaded(session, digest_id)


async def skip_cancelled_copies(
    session: AsyncSession,
    *,
    digest_id: int | None = None,
    ids: Sequence[int] | None = None,
    now: datetime | None = None,
) -> None:
    """The one rule for a cancelled digest's copies: every copy nobody holds is `skipped`
    (queued, or leased by a worker that died). Copies a live worker holds are settled by that
    worker (sent if they went out, else given back, then skipped here). `digest_id`: the copies
    of one digest (the cancel); `ids`: of these rows, those of any cancelled digest."""
    now = now or utcnow()
    where = [
        col(Delivery.kind) == DeliveryKind.digest,
        or_(
            col(Delivery.status) == DeliveryStatus.queued,
            # A dead worker's rows: nobody would take them over for a cancelled digest.
            sa.and_(
                col(Delivery.status) == DeliveryStatus.sending, col(Delivery.lease_until) < now
            ),
        ),
    ]
    if digest_id is not None:
        where.append(col(Delivery.digest_id) == digest_id)
    if ids is not None:
        if not ids:
            return
        cancelled = select(Digest.id).where(Digest.status == DigestStatus.cancelled)
        where += [col(Delivery.id).in_(ids), col(Delivery.digest_id).in_(cancelled)]
    await session.execute(
        sa.update(Delivery)
        .where(*where)
        .values(
            status=DeliveryStatus.skipped,
            lease_until=None,
            leased_by=None,
            last_error=CANCELLED_REASON,
        )
        .execution_options(synchronize_session=False)
    )


async def _reloaded(session: AsyncSession, digest_id: int) -> Digest:
    """The digest as the database has it now (one read, even when the session holds it)."""
    digest = await session.get(Digest, digest_id, populate_existing=True)
    if digest is None:
        raise DigestNotFound(f"no digest {digest_id}")
    return digest


# --- Progress ----------------------------------------------------------------------------------


async def finish_completed_digests(
    session: AsyncSession, *, digest_ids: Iterable[int] | None = None
) -> int:
    """Mark `sent` every sending digest (of `digest_ids`, or all) with no delivery left queued
    or sending (one UPDATE); returns how many. Test copies do not count. The worker calls it
    after each batch, and resume; reads never do."""
    # From the tally, not an EXISTS over `delivery`: near a send's end that scanned every row
    # already sent, after every batch.
    pending = (
        sa.select(func.coalesce(func.sum(col(DigestTally.n)), 0))
        .where(
            col(DigestTally.digest_id) == col(Digest.id),
            col(DigestTally.status).in_((DeliveryStatus.queued, DeliveryStatus.sending)),
        )
        .scalar_subquery()
        > 0
    )
    where = [col(Digest.status) == DigestStatus.sending, ~pending]
    if digest_ids is not None:
        wanted = list(digest_ids)
        if not wanted:
            return 0
        where.append(col(Digest.id).in_(wanted))
    result = await session.execute(
        sa.update(Digest)
        .where(*where)
        .values(status=DigestStatus.sent, sent_at=utcnow())
        .execution_options(synchronize_session=False)
    )
    return int(getattr(result, "rowcount", 0) or 0)


async def digest_progress(
    session: AsyncSession, *, digests: Sequence[Digest], now: datetime | None = None
) -> dict[int, DigestProgress]:
    """Counts per delivery status, rate, ETA and progress of each digest, from its tally
    (app.digests.tally: a few rows, whatever the size of the send; test copies do not count).
    The rate is what was recorded sent over the last minute, by every worker."""
    ids = [d.id for d in digests if d.id is not None]
    if not ids:
        return {}
    now = now or utcnow()
    since = now - timedelta(seconds=RATE_WINDOW_SECONDS)
    tallies = await read_tallies(session, digest_ids=ids, since=since)
    paces = await tally.pace_of(session, kind=DeliveryKind.digest, send_ids=ids, now=now)
    totals = await tally.totals_of(session, kind=DeliveryKind.digest, send_ids=ids)
    progress: dict[int, DigestProgress] = {}
    for d in digests:
        if d.id is None:
            continue
        counted = tallies[d.id]
        counts = {s: n for s, n in counted.counts.items() if s in COUNTED_STATUSES}
        base = _progress(d, DigestCounts(**counts), counted.sent_since, now=now)
        pace = paces.get(d.id)
        throttled_at = as_utc(pace.throttled_at) if pace and pace.throttled_at else None
        if throttled_at is not None and throttled_at < now - tally.PACE_FRESH:
            throttled_at = None
        bounce_rate, complaint_rate = _rates(totals.get(d.id, tally.Counts()))
        progress[d.id] = DigestProgress(
            counts=base.counts,
            rate_per_second=base.rate_per_second,
            eta_seconds=base.eta_seconds,
            progress=base.progress,
            pace_per_second=(
                pace.rate_per_second
                if pace is not None and d.status == DigestStatus.sending
                else None
            ),
            throttled_at=throttled_at,
            bounce_rate=bounce_rate,
            complaint_rate=complaint_rate,
        )
    return progress


async def deliverability(session: AsyncSession, *, digest_id: int, domains: int) -> Deliverability:
    """The send's outcome counters, in all and for its `domains` largest recipient domains:
    reads the counters workers keep (one row per domain), never the deliveries."""
    await get_digest(session, digest_id=digest_id)
    totals = await tally.totals(session, kind=DeliveryKind.digest, send_id=digest_id)
    rows, count = await tally.by_domain(
        session, kind=DeliveryKind.digest, send_id=digest_id, limit=domains
    )
    bounce_rate, complaint_rate = _rates(totals)
    return Deliverability(
        delivered=totals.delivered,
        deferred=totals.deferred,
        bounced=totals.bounced,
        complaints=totals.complaints,
        bounce_rate=bounce_rate,
        complaint_rate=complaint_rate,
        domains=[
            DomainFigures(domain, c.delivered, c.deferred, c.bounced, c.complaints)
            for domain, c in rows
        ],
        domain_count=count,
    )


def _progress(
    digest: Digest, counts: DigestCounts, sent_recently: int, *, now: datetime
) -> DigestProgress:
    # In a send's first minute the window is the time since it started: dividing by 60 then
    # would show a fraction of the real rate and an ETA many times too long.
    window = float(RATE_WINDOW_SECONDS)
    if digest.send_started_at is not None:
        elapsed = (now - as_utc(digest.send_started_at)).total_seconds()
        window = min(window, max(1.0, elapsed))
    rate = sent_recently / window if sent_recently else None
    remaining = counts.queued + counts.sending
    eta = None
    if rate and remaining and digest.status == DigestStatus.sending:
        eta = remaining / rate
    decided = counts.sent + counts.failed + counts.skipped
    if digest.recipients:
        progress = min(1.0, decided / digest.recipients)
    else:
        progress = 1.0 if digest.status == DigestStatus.sent else 0.0
    return DigestProgress(counts=counts, rate_per_second=rate, eta_seconds=eta, progress=progress)


async def digest_with_progress(
    session: AsyncSession, *, digest_id: int
) -> tuple[Digest, DigestProgress]:
    """The digest as it stands now and its progress (read-only: the worker finishes sends)."""
    digest = await _reloaded(session, digest_id)
    return digest, (await digest_progress(session, digests=[digest]))[digest_id]


async def list_digests_with_progress(
    session: AsyncSession, *, limit: int, offset: int
) -> tuple[list[tuple[Digest, DigestProgress]], int]:
    digests, total = await list_digests(session, limit=limit, offset=offset)
    progress = await digest_progress(session, digests=digests)
    return [(d, progress[d.id]) for d in digests if d.id is not None], total


async def halted_digests(session: AsyncSession, *, digest_ids: Iterable[int]) -> set[int]:
    """Of these digests, those no longer `sending` (paused, cancelled)."""
    rows = await session.exec(
        select(Digest.id).where(
            col(Digest.id).in_(list(digest_ids)), col(Digest.status) != DigestStatus.sending
        )
    )
    return {digest_id for digest_id in rows.all() if digest_id is not None}


# --- Numbers -----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class DigestOutcomes:
    delivered: int  # copies accepted by the relay
    bounced: int  # copies refused at send, and bounces reported after a copy was delivered
    unsubscribed: int  # readers of a copy who left before the next digest went out


async def digest_outcomes(
    session: AsyncSession, *, digest: Digest, counts: DigestCounts | None = None
) -> DigestOutcomes:
    """What became of a digest's copies (`counts`: its progress's, when the caller read it).
    `bounced`: the readers with a hard or soft bounce on this digest (a 5xx at send, a 4xx
    until the last attempt, or a report naming it or arriving after it was their last copy);
    `unsubscribed`: the readers who left with this digest as their last copy. Both read the
    events that name the digest, so they outlive delivery retention."""
    assert digest.id is not None
    # From the per-digest tallies, not a count of the delivery rows: a few rows' read for a
    # million-reader send, and the figures outlive the rows DELIVERY_RETENTION_DAYS deletes.
    if counts is None:
        tally = (await read_tallies(session, digest_ids=[digest.id], since=utcnow()))[digest.id]
        sent = int(tally.counts.get(DeliveryStatus.sent, 0))
    else:
        sent = counts.sent
    left = (
        select(func.count(sa.distinct(col(SubscriberEvent.subscriber_id))))
        .where(
            col(SubscriberEvent.digest_id) == digest.id,
            col(SubscriberEvent.event) == SubscriberEventType.unsubscribed,
        )
        .scalar_subquery()
    )
    bounced = (
        select(func.count(sa.distinct(col(BounceEvent.subscriber_id))))
        .where(
            col(BounceEvent.digest_id) == digest.id,
            col(BounceEvent.type).in_([BounceType.hard, BounceType.soft]),
        )
        .scalar_subquery()
    )
    # Both counts in one read: a digest's page and the API's digest ask on every refresh.
    unsubscribed, bounces = (await session.execute(sa.select(left, bounced))).one()
    return DigestOutcomes(delivered=sent, bounced=int(bounces), unsubscribed=int(unsubscribed))
