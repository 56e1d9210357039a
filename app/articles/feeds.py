"""Parse RSS 2.0 / Atom with feedparser into plain entries. No database, no network."""

from __future__ import annotations

import asyncio
import functools
import html
import io
import multiprocessing
import re
import time
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import feedparser

from app.articles.sanitize import is_http_url, plain_text, sanitize_html, summary_text

MAX_CATEGORIES = 20
_IMG_TAG = re.compile(r"<img\b[^>]*>", re.I)
_IMG_ATTRIBUTE = {name: re.compile(rf'\b{name}="([^"]*)"', re.I) for name in ("src", "alt")}


class MalformedFeed(ValueError):
    """Not an RSS or Atom feed we can read; the message says why."""


@dataclass(frozen=True, slots=True)
class FeedEntry:
    url: str
    title: str
    guid: str | None = None
    summary: str | None = None
    content_html: str | None = None
    author: str | None = None
    categories: list[str] = field(default_factory=list)
    image_url: str | None = None
    image_alt: str | None = None
    published_at: datetime | None = None


@dataclass(frozen=True, slots=True)
class ParsedFeed:
    title: str | None
    entries: list[FeedEntry]
    skipped: int  # entries without a usable link or title
    warning: str | None = None  # a problem feedparser recovered from


def parse_feed(
    data: bytes,
    *,
    url: str | None = None,
    content_type: str | None = None,
    max_items: int | None = None,
) -> ParsedFeed:
    """Parse a feed document. The encoding comes from the HTTP header, the XML declaration or a
    BOM (feedparser follows RFC 3023); relative links resolve against `url`. Only the first
    `max_items` items are read (a feed lists its newest first)."""
    headers = {}
    if url:
        headers["content-location"] = url
    if content_type:
        headers["content-type"] = content_type
    # A stream, never a str: feedparser would fetch a str that looks like a URL, or open a path.
    parsed = feedparser.parse(io.BytesIO(data), response_headers=headers)
    problem = parsed.get("bozo_exception")
    entries: list[FeedEntry] = []
    skipped = 0
    raw_entries = parsed.entries
    dropped = 0
    if max_items is not None and len(raw_entries) > max_items:
        dropped = len(raw_entries) - max_items
        raw_entries = raw_entries[:max_items]
    for raw in raw_entries:
        entry = _entry(raw)
        if entry is None:
            skipped += 1
        else:
            entries.append(entry)
    if not parsed.get("version") and not entries:
        reason = f": {_reason(problem)}" if problem else ""
        raise MalformedFeed(f"not an RSS or Atom feed{reason}")
    if problem is not None and not entries:
        raise MalformedFeed(f"the feed could not be read: {_reason(problem)}")
    title = plain_text(parsed.feed.get("title")) or None
    warnings = [_reason(problem)] if problem is not None else []
    if dropped:
        warnings.append(
            f"the feed has {len(parsed.entries)} items: only the first {max_items} were read "
            "(FEED_MAX_ITEMS)"
        )
    return ParsedFeed(
        title=title, entries=entries, skipped=skipped, warning="; ".join(warnings) or None
    )


# One process parses at a time, away from the server's event loop: feedparser and the HTML
# sanitiser are CPU-bound (a 10 MB feed takes seconds) and, in a thread, would still hold the
# GIL against the loop. A fresh process per document gives its memory back afterwards.
_parser: ProcessPoolExecutor | None = None


def _parser_pool() -> ProcessPoolExecutor:
    global _parser
    if _parser is None:
        _parser = ProcessPoolExecutor(
            max_workers=1, mp_context=multiprocessing.get_context("spawn"), max_tasks_per_child=1
        )
    return _parser


async def parse_feed_elsewhere(
    data: bytes,
    *,
    url: str | None = None,
    content_type: str | None = None,
    max_items: int | None = None,
) -> ParsedFeed:
    """parse_feed in a separate process, so the server keeps answering meanwhile."""
    global _parser
    work = functools.partial(
        parse_feed, data, url=url, content_type=content_type, max_items=max_items
    )
    try:
        # Submitted from a thread: starting the process (fork, exec) stays off the loop too.
        future = await asyncio.to_thread(_parser_pool().submit, work)
        return await asyncio.wrap_future(future)
    except BrokenProcessPool as exc:  # the parser died (out of memory, killed): start afresh
        _parser = None
        raise MalformedFeed("the feed could not be parsed") from exc


def _reason(problem: object) -> str:
    text = str(problem).strip() or problem.__class__.__name__
    return text[:500]


def _entry(raw: Any) -> FeedEntry | None:
    url = (raw.get("link") or "").strip()
    guid = (raw.get("id") or "").strip() or None
    if not is_http_url(url) and guid and raw.get("guidislink") and is_http_url(guid):
        url = guid
    title = plain_text(raw.get("title"))
    if not is_http_url(url) or not title or len(url) > 2000:
        return None
    content_html = sanitize_html(_content(raw))
    image_url, image_alt = _image(raw, content_html)
    return FeedEntry(
        url=url,
        title=title[:1000],
        guid=guid[:1000] if guid else None,
        summary=summary_text(raw.get("summary"), content_html),
        content_html=content_html,
        author=(plain_text(raw.get("author")) or None) if raw.get("author") else None,
        categories=_categories(raw),
        image_url=image_url,
        image_alt=image_alt,
        published_at=_date(raw.get("published_parsed") or raw.get("updated_parsed")),
    )


def _content(raw: Any) -> str | None:
    # content:encoded (RSS) or <content> (Atom); prefer HTML over plain text.
    contents = raw.get("content") or []
    html_parts = [c for c in contents if "html" in (c.get("type") or "")]
    chosen = (html_parts or contents)[:1]
    if chosen:
        value = chosen[0].get("value") or ""
        return value if "html" in (chosen[0].get("type") or "") else _paragraph(value)
    return None


def _paragraph(text: str) -> str | None:
    return f"<p>{html.escape(text)}</p>" if text.strip() else None


def _categories(raw: Any) -> list[str]:
    seen: dict[str, None] = {}
    for tag in raw.get("tags") or []:
        term = plain_text(tag.get("term") or tag.get("label") or "")[:100]
        if term and term.casefold() not in {t.casefold() for t in seen}:
            seen[term] = None
    return list(seen)[:MAX_CATEGORIES]


def _image(raw: Any, content_html: str | None) -> tuple[str | None, str | None]:
    """The featured image and its description: media:content, media:thumbnail, an image
    enclosure, else the content's first <img> (WordPress puts it in any of these)."""
    media_alt = plain_text(raw.get("media_description") or raw.get("media_title") or "") or None
    candidates: list[tuple[str, str | None]] = []
    for media in (raw.get("media_content") or []) + (raw.get("media_thumbnail") or []):
        if (media.get("medium") or "image") == "image" or "image" in (media.get("type") or ""):
            candidates.append((media.get("url") or "", media_alt))
    for link in raw.get("links") or []:
        if link.get("rel") == "enclosure" and (link.get("type") or "").startswith("image/"):
            candidates.append((link.get("href") or "", None))
    if content_html:
        match = _IMG_TAG.search(content_html)
        if match:
            src = _IMG_ATTRIBUTE["src"].search(match.group(0))
            described = _IMG_ATTRIBUTE["alt"].search(match.group(0))
            if src:
                candidates.append(
                    (
                        html.unescape(src.group(1)),
                        plain_text(html.unescape(described.group(1))) if described else None,
                    )
                )
    for candidate, alt in candidates:
        if is_http_url(candidate) and len(candidate) <= 2000:
            return candidate, alt[:500] if alt else None
    return None, None


def _date(parsed: time.struct_time | None) -> datetime | None:
    # feedparser normalises every date it understands to a UTC struct_time.
    if not parsed:
        return None
    try:
        return datetime(*parsed[:6], tzinfo=UTC)
    except (TypeError, ValueError):
        return None
