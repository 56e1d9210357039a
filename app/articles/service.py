"""Articles in: upsert from feeds and the editor API (key: guid, else URL); out only by an
editor's hand (`remove_article`).

Re-importing a feed creates nothing twice and updates what changed; no import deletes an
article, so a broken or truncated feed cannot empty the archive.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, Literal

import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError
from sqlmodel import col, func, or_, select
from sqlmodel.ext.asyncio.session import AsyncSession

from app.articles.feeds import FeedEntry, parse_feed_elsewhere
from app.articles.fetch import DEFAULT_MAX_ITEMS, FeedLimits, FeedUnreachable, fetch_feed

__all__ = ["FeedLimits", "FeedUnreachable"]  # the errors and limits of an import, in one place
from app.models import Article, Digest, DigestArticle, DigestStatus, Feed, as_utc, utcnow

_CHUNK = 500

Outcome = Literal["created", "updated", "unchanged"]


@dataclass(slots=True)
class ImportResult:
    created: int = 0
    updated: int = 0
    unchanged: int = 0
    skipped: int = 0
    not_modified: bool = False  # HTTP 304: nothing fetched, nothing to do
    warning: str | None = None

    def summary(self) -> str:
        if self.not_modified:
            return "not modified since the last fetch"
        line = f"{self.created} created, {self.updated} updated, {self.unchanged} unchanged"
        if self.skipped:
            line += f", {self.skipped} skipped (no link or title)"
        return line


# --- Upsert ------------------------------------------------------------------------------------


def _fields(entry: FeedEntry) -> dict[str, Any]:
    return {
        "title": entry.title,
        "summary": entry.summary,
        "content_html": entry.content_html,
        "author": entry.author,
        "categories": list(entry.categories),
        "image_url": entry.image_url,
        "image_alt": entry.image_alt,
        "published_at": entry.published_at,
    }


def _same(current: Any, new: Any) -> bool:
    if isinstance(current, datetime) and isinstance(new, datetime):
        return as_utc(current) == as_utc(new)
    return bool(current == new)


async def _existing(session: AsyncSession, entries: Sequence[FeedEntry]) -> list[Article]:
    guids = sorted({e.guid for e in entries if e.guid})
    urls = sorted({e.url for e in entries})
    found: dict[int, Article] = {}
    for start in range(0, max(len(guids), len(urls)), _CHUNK):
        condition = or_(
            col(Article.guid).in_(guids[start : start + _CHUNK]),
            col(Article.url).in_(urls[start : start + _CHUNK]),
        )
        for article in (await session.exec(select(Article).where(condition))).all():
            assert article.id is not None
            found[article.id] = article
    return list(found.values())


def _apply(article: Article, entry: FeedEntry, *, url_taken: bool, replace_missing: bool) -> bool:
    """Copy what changed onto `article`; True if anything did."""
    changed = False
    for name, value in _fields(entry).items():
        if value is None and not replace_missing:
            continue  # a field this source does not give keeps its value
        if not _same(getattr(article, name), value):
            setattr(article, name, value)
            changed = True
    if entry.url != article.url and not url_taken:
        article.url = entry.url  # the post's permalink changed; the guid still names it
        changed = True
    if entry.guid and article.guid is None:
        article.guid = entry.guid
        changed = True
    if changed:
        article.updated_at = utcnow()
    return changed


async def upsert_articles(
    session: AsyncSession, *, entries: Sequence[FeedEntry], replace_missing: bool = False
) -> tuple[ImportResult, list[tuple[Article, Outcome]]]:
    """Create or update each entry, matched by guid, else by URL. `replace_missing`: an entry's
    empty optional field clears the stored one (the editor API), instead of keeping it (feeds,
    whose excerpts may omit what an earlier import had)."""
    existing = await _existing(session, entries)
    by_guid = {a.guid: a for a in existing if a.guid}
    by_url = {a.url: a for a in existing}
    result = ImportResult()
    outcomes: list[tuple[Article, Outcome]] = []
    for entry in entries:
        article = (by_guid.get(entry.guid) if entry.guid else None) or by_url.get(entry.url)
        if article is None:
            article, outcome = await _insert(session, entry)
            if outcome != "created":
                outcome = _update(article, entry, by_url, replace_missing)
        else:
            outcome = _update(article, entry, by_url, replace_missing)
        by_url[article.url] = article
        if article.guid:
            by_guid[article.guid] = article
        setattr(result, outcome, getattr(result, outcome) + 1)
        outcomes.append((article, outcome))
    await session.flush()
    return result, outcomes


def _update(
    article: Article, entry: FeedEntry, by_url: dict[str, Article], replace_missing: bool
) -> Outcome:
    owner = by_url.get(entry.url)
    url_taken = owner is not None and owner is not article
    if _apply(article, entry, url_taken=url_taken, replace_missing=replace_missing):
        return "updated"
    return "unchanged"


async def _insert(session: AsyncSession, entry: FeedEntry) -> tuple[Article, Outcome]:
    article = Article(url=entry.url, guid=entry.guid, **_fields(entry))
    try:
        # A savepoint: the poller and an editor importing the same feed at the same moment
        # must end with one article, not a 500.
        async with session.begin_nested():
            session.add(article)
            await session.flush()
        return article, "created"
    except IntegrityError:
        condition = col(Article.url) == entry.url
        if entry.guid:
            condition = or_(condition, col(Article.guid) == entry.guid)
        winner = (await session.exec(select(Article).where(condition))).first()
        if winner is None:
            raise
        return winner, "unchanged"


async def upsert_article(session: AsyncSession, *, entry: FeedEntry) -> tuple[Article, Outcome]:
    """The editor API: create or update one article by URL."""
    _, outcomes = await upsert_articles(session, entries=[entry], replace_missing=True)
    return outcomes[0]


async def list_articles(
    session: AsyncSession,
    *,
    limit: int,
    offset: int,
    q: str | None = None,
    include_hidden: bool = True,
) -> tuple[list[Article], int]:
    """Newest first: by publication date, else by when the article arrived. `q`: part of the
    title (case-insensitive, wildcards matched literally)."""
    newest = func.coalesce(col(Article.published_at), col(Article.created_at))
    where: list[Any] = [] if include_hidden else [col(Article.hidden_at).is_(None)]
    if q:
        escaped = q.lower().replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
        where.append(func.lower(col(Article.title)).like(f"%{escaped}%", escape="\\"))
    rows = await session.exec(
        select(Article)
        .where(*where)
        .order_by(newest.desc(), col(Article.id).desc())
        .limit(limit)
        .offset(offset)
    )
    total = (await session.exec(select(func.count()).select_from(Article).where(*where))).one()
    return list(rows.all()), int(total)


# --- Feeds -------------------------------------------------------------------------------------


async def import_feed_document(
    session: AsyncSession,
    *,
    data: bytes,
    url: str | None = None,
    content_type: str | None = None,
    max_items: int = DEFAULT_MAX_ITEMS,
) -> ImportResult:
    """Parse (in another process) and upsert a feed document. Raises MalformedFeed."""
    parsed = await parse_feed_elsewhere(
        data, url=url, content_type=content_type, max_items=max_items
    )
    result, _ = await upsert_articles(session, entries=parsed.entries)
    result.skipped = parsed.skipped
    result.warning = parsed.warning
    return result


async def _feed_row(session: AsyncSession, url: str) -> Feed:
    feed = (await session.exec(select(Feed).where(Feed.url == url))).first()
    if feed is not None:
        return feed
    feed = Feed(url=url)
    try:
        async with session.begin_nested():
            session.add(feed)
            await session.flush()
    except IntegrityError:
        feed = (await session.exec(select(Feed).where(Feed.url == url))).one()
    return feed


async def import_feed_url(
    session: AsyncSession,
    *,
    url: str,
    conditional: bool = False,
    limits: FeedLimits = FeedLimits(),
) -> ImportResult:
    """Fetch and import a feed; remember its validators. `conditional`: send the stored ETag /
    Last-Modified, so an unchanged feed costs one 304. Raises FeedUnreachable, MalformedFeed."""
    feed = await _feed_row(session, url)
    fetched = await fetch_feed(
        url,
        etag=feed.etag if conditional else None,
        modified=feed.modified if conditional else None,
        limits=limits,
    )
    feed.last_polled_at = utcnow()
    if fetched.content is None:
        result = ImportResult(not_modified=True)
    else:
        result = await import_feed_document(
            session,
            data=fetched.content,
            url=url,
            content_type=fetched.content_type,
            max_items=limits.max_items,
        )
        feed.etag = (fetched.etag or "")[:500] or None
        feed.modified = (fetched.modified or "")[:100] or None
    feed.last_error = None
    feed.failures = 0
    session.add(feed)
    await session.flush()
    return result


async def import_feed_source(
    session: AsyncSession, *, source: str, limits: FeedLimits = FeedLimits()
) -> ImportResult:
    """The CLI (the only place a local file may be read): an http(s) URL, or a path."""
    if source.lower().startswith(("http://", "https://")):
        return await import_feed_url(session, url=source, limits=limits)
    try:
        data = await asyncio.to_thread(Path(source).read_bytes)
    except OSError as exc:
        raise FeedUnreachable(
            f"{source}: {exc.strerror or exc} (give a feed file or an http(s) URL)"
        ) from exc
    return await import_feed_document(session, data=data, max_items=limits.max_items)


async def record_feed_error(session: AsyncSession, *, url: str, error: str) -> int:
    """Remember a failed poll; the failures in a row, this one included."""
    feed = await _feed_row(session, url)
    feed.last_polled_at = utcnow()
    feed.last_error = error[:2000]
    feed.failures += 1
    session.add(feed)
    await session.flush()
    return feed.failures


async def claim_feed_poll(session: AsyncSession, *, url: str, interval: timedelta) -> bool:
    """True if this worker should poll now. With several workers, the conditional UPDATE lets
    one of them win each round instead of all fetching the feed."""
    await _feed_row(session, url)
    now = utcnow()
    due_before = now - interval / 2
    result = await session.execute(
        sa.update(Feed)
        .where(
            col(Feed.url) == url,
            or_(col(Feed.last_polled_at).is_(None), col(Feed.last_polled_at) <= due_before),
        )
        .values(last_polled_at=now)
        .execution_options(synchronize_session=False)
    )
    return bool(getattr(result, "rowcount", 0))


# --- Delete or hide ----------------------------------------------------------------------------


class ArticleNotFound(LookupError):
    pass


class ArticleInSentDigest(Exception):
    """A digest whose send has started holds the article: it can be hidden, not deleted."""

    def __init__(self, digest_ids: Sequence[int]) -> None:
        listed = ", ".join(str(i) for i in digest_ids)
        super().__init__(
            f"digest {listed} went out with this article: it can be hidden "
            "(POST /api/v1/articles/{id}/hide), not deleted"
        )
        self.digest_ids = list(digest_ids)


async def set_hidden(session: AsyncSession, *, article_id: int, hidden: bool) -> Article:
    """Hidden: kept, offered to no new digest, not brought back by a feed's update."""
    article = await session.get(Article, article_id)
    if article is None:
        raise ArticleNotFound(f"no article {article_id}")
    if hidden and article.hidden_at is None:
        article.hidden_at = utcnow()
    elif not hidden:
        article.hidden_at = None
    session.add(article)
    await session.flush()
    await session.refresh(article)
    return article


async def delete_article(session: AsyncSession, *, article_id: int) -> None:
    """Delete the article; drafts keep their frozen copy. Refused when a digest whose send
    started holds it (its archive and statistics still point to it), a cancelled one that went
    out to some readers included: hide it instead."""
    article = await session.get(Article, article_id, with_for_update=True)
    if article is None:
        raise ArticleNotFound(f"no article {article_id}")
    started = (
        await session.exec(
            select(Digest.id)
            .join(DigestArticle, col(DigestArticle.digest_id) == col(Digest.id))
            .where(
                col(DigestArticle.article_id) == article_id,
                sa.or_(
                    col(Digest.status).in_(
                        [DigestStatus.sending, DigestStatus.paused, DigestStatus.sent]
                    ),
                    col(Digest.send_started_at).is_not(None),
                ),
            )
            .order_by(col(Digest.id))
        )
    ).all()
    if started:
        raise ArticleInSentDigest([i for i in started if i is not None])
    # Drafts keep their copy, detached (the foreign key says SET NULL; SQLite may not enforce).
    await session.execute(
        sa.update(DigestArticle)
        .where(col(DigestArticle.article_id) == article_id)
        .values(article_id=None)
        .execution_options(synchronize_session=False)
    )
    await session.delete(article)
    await session.flush()
