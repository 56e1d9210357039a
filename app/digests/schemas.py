"""Editor API shapes for digests."""

from __future__ import annotations

from typing import Annotated

from pydantic import (
    AfterValidator,
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Field,
    Strict,
    StringConstraints,
)

from app.articles.schemas import BodyDatetime, UtcDatetime
from app.deps import MAX_DB_INT
from app.digests.service import (
    DEFAULT_MAX_ARTICLES,
    MAX_ARTICLES,
    MAX_INTRO_CHARS,
    MAX_TEST_ADDRESSES,
)
from app.models import Language
from app.openapi import EMAIL_FORMAT

# One line of text with something in it; surrounding whitespace (newlines too) is trimmed.
ONE_LINE_PATTERN = r"^\s*[^\x00-\x1f\x7f]*\S[^\x00-\x1f\x7f]*\s*$"


def _one_line(value: str | None) -> str | None:
    if value is not None and any(ord(ch) < 32 or ord(ch) == 127 for ch in value):
        raise ValueError("must be a single line without control characters")
    return value


SubjectText = Annotated[
    str,
    StringConstraints(
        strip_whitespace=True, min_length=1, max_length=300, pattern=ONE_LINE_PATTERN
    ),
    AfterValidator(_one_line),
]
# Plain text (paragraphs split by a blank line, links made clickable) or HTML (sanitised:
# paragraphs, emphasis, lists, links).
IntroText = Annotated[str, StringConstraints(strip_whitespace=True, max_length=MAX_INTRO_CHARS)]
Subject = SubjectText | Annotated[dict[Language, SubjectText], Field(min_length=1)]
Intro = IntroText | Annotated[dict[Language, IntroText], Field(min_length=1)]
SUBJECT_DESCRIPTION = (
    'One subject for every language, or one per language ({"fr": "...", "en": "..."}); a '
    "language left out, or null, gets its default subject"
)
INTRO_DESCRIPTION = (
    "The editor's introduction, above the articles: one text for every language, or one per "
    "language; plain text (a blank line between paragraphs, links made clickable) or HTML "
    "(paragraphs, emphasis, lists and links are kept)"
)


class DigestCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    subject: Subject | None = Field(default=None, description=SUBJECT_DESCRIPTION)
    intro: Intro | None = Field(default=None, description=INTRO_DESCRIPTION)
    article_ids: list[Annotated[int, Strict(), Field(ge=1, le=MAX_DB_INT)]] | None = Field(
        default=None,
        min_length=1,
        max_length=MAX_ARTICLES,
        description="These articles in this order; omit to take the articles not yet sent",
    )
    since: BodyDatetime = Field(
        default=None, description="Without article_ids: only articles published since then"
    )
    max_articles: Annotated[int, Strict()] = Field(
        default=DEFAULT_MAX_ARTICLES, ge=1, le=MAX_ARTICLES
    )
    archive: Annotated[bool, Strict()] = Field(
        default=True, description="Show it in the public archive once sent (ARCHIVE_ENABLED)"
    )


class DigestUpdate(BaseModel):
    """A draft's changes; a field left out is unchanged, a null one back to its default."""

    model_config = ConfigDict(extra="forbid")

    subject: Subject | None = Field(default=None, description=SUBJECT_DESCRIPTION)
    intro: Intro | None = Field(default=None, description=INTRO_DESCRIPTION)
    article_ids: list[Annotated[int, Strict(), Field(ge=1, le=MAX_DB_INT)]] | None = Field(
        default=None,
        min_length=1,
        max_length=MAX_ARTICLES,
        description="These articles in this order, copied afresh; left out or null: unchanged",
    )


class DigestArticlePublic(BaseModel):
    article_id: int | None
    position: int
    title: str
    url: str
    summary: str | None
    author: str | None
    categories: list[str]
    image_url: str | None
    image_alt: str | None
    published_at: UtcDatetime | None


class DigestSummary(BaseModel):
    id: int
    status: str
    subject: str | dict[str, str] | None = Field(
        description="As set (one for every language, or per language); null: the defaults"
    )
    intro: str | dict[str, str] | None = Field(description="As set; null: none")
    subjects: dict[str, str] = Field(description="The subject readers get, per language")
    created_at: UtcDatetime
    send_at: UtcDatetime | None = Field(
        description="A draft scheduled to be sent at this time (by a worker); null: not scheduled"
    )
    send_started_at: UtcDatetime | None
    sent_at: UtcDatetime | None
    cancelled_at: UtcDatetime | None
    paused_reason: str | None
    article_count: int
    recipients: int
    queued: int
    sending: int
    sent: int
    failed: int
    skipped: int
    rate_per_second: float | None = Field(
        description="Messages sent per second over the last minute; null if none were"
    )
    eta_seconds: float | None = Field(
        description="Seconds left at that rate while sending; null without a rate or work left"
    )
    progress: float = Field(
        ge=0,
        le=1,
        description="Share of recipients decided: (sent + failed + skipped) / recipients",
    )
    pace_per_second: float | None = Field(
        description="The pace the workers keep while sending, in messages per second (they "
        "slow down when the relay throttles, speed up while it accepts, never above "
        "SEND_RATE_PER_SECOND); null when unlimited or not sending"
    )
    throttled_by_relay: bool = Field(
        description="The relay answered with a throttling reply within the last minute"
    )
    throttled_at: UtcDatetime | None = Field(
        description="When the relay last throttled this send, within the last minute"
    )
    bounce_rate: float | None = Field(
        description="Hard bounces at send time / (delivered + hard bounces); null before any"
    )
    complaint_rate: float | None = Field(
        description="Spam complaints / delivered copies; null before any delivery"
    )


class ArticleClicksPublic(BaseModel):
    position: int
    title: str
    url: str
    clicks: int = Field(description="Reader clicks (machine clicks excluded)")
    unique: int = Field(description="Readers who followed this link")
    machine: int = Field(description="Clicks by scanners and other machines (not readers)")


class ClicksPublic(BaseModel):
    total: int = Field(description="Reader clicks on the digest's links")
    unique: int = Field(description="Readers who followed at least one link")
    machine: int = Field(description="Clicks by scanners and other machines, counted apart")


class OpensPublic(BaseModel):
    total: int = Field(description="Open pixels fetched")
    unique: int = Field(description="Copies whose pixel was fetched")
    warning: str


MPP_WARNING = (
    "Apple Mail Privacy Protection and other image proxies fetch every copy's images when the "
    "message arrives, whether or not anyone reads it: opens are inflated and say little."
)


class DigestNumbers(BaseModel):
    """What became of the digest. Clicks are counted in batches: a click shows within seconds."""

    tracking: str = Field(description="TRACK_CLICKS: off, aggregate or per_reader")
    delivered: int = Field(description="Copies accepted by the relay")
    bounced: int = Field(description="Copies refused, and bounces reported after delivery")
    unsubscribed: int = Field(description="Readers who left after their copy, before the next")
    clicks: ClicksPublic
    articles: list[ArticleClicksPublic]
    opens: OpensPublic | None = Field(description="TRACK_OPENS only (null when off)")


class DigestPublic(DigestSummary):
    articles: list[DigestArticlePublic]
    numbers: DigestNumbers


class DigestList(BaseModel):
    items: list[DigestSummary]
    total: int
    limit: int
    offset: int


class DomainFiguresPublic(BaseModel):
    domain: str = Field(description="The recipient domain, lower-cased")
    delivered: int = Field(description="Copies the relay accepted")
    deferred: int = Field(description="Temporary refusals (4xx, throttling), each tried again")
    bounced: int = Field(description="Hard bounces at send time")
    complaints: int = Field(description="Spam complaints about this digest")


class DeliverabilityPublic(BaseModel):
    digest_id: int
    delivered: int
    deferred: int
    bounced: int
    complaints: int
    bounce_rate: float | None = Field(description="bounced / (delivered + bounced)")
    complaint_rate: float | None = Field(description="complaints / delivered")
    domains: list[DomainFiguresPublic] = Field(
        description="The largest recipient domains, by copies tried, largest first"
    )
    domain_count: int = Field(description="How many recipient domains in all")


class TestSendIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    emails: list[
        Annotated[str, StringConstraints(max_length=320), Field(json_schema_extra=EMAIL_FORMAT)]
    ] = Field(min_length=1, max_length=MAX_TEST_ADDRESSES)
    language: Language = Language.fr


class TestSendAccepted(BaseModel):
    queued: int


class DigestActionIn(BaseModel):
    """The body of pause, resume, cancel and unschedule: optional, and empty. It exists so that
    a field these actions do not take is a 422 naming it instead of being ignored while the
    action happens at once."""

    model_config = ConfigDict(extra="forbid", title="DigestAction")


class DigestSendIn(BaseModel):
    """The body of send: optional. Without `at` (or without a body) the send starts now."""

    model_config = ConfigDict(extra="forbid", title="DigestSend")

    at: AwareDatetime | None = Field(
        default=None,
        description=(
            "Send at this time instead of now: ISO 8601 with its offset "
            "(2026-12-01T07:00:00+01:00), in the future. The digest stays a draft until then "
            "(editable, cancellable; `POST .../unschedule` takes the time back)."
        ),
    )
