"""Editor API shapes for articles and feed imports."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, StringConstraints

from app.articles.sanitize import is_http_url
from app.models import as_utc


def _http_url(value: str) -> str:
    if not is_http_url(value):
        raise ValueError("must be an absolute http:// or https:// URL")
    return value


def to_utc(value: datetime | None) -> datetime | None:
    # Stored in UTC (SQLite keeps no zone); a date without one is taken as UTC.
    if value is None:
        return None
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


# Answers always carry the zone: SQLite hands back naive datetimes, stored in UTC.
UtcDatetime = Annotated[datetime, AfterValidator(as_utc)]
HttpUrlStr = Annotated[
    str, StringConstraints(strip_whitespace=True, max_length=2000), AfterValidator(_http_url)
]
Category = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=100)]


class ArticleIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    title: Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=1000)]
    url: HttpUrlStr = Field(description="The article's permalink: the key of create-or-update")
    summary: str | None = Field(
        default=None, max_length=5000, description="Plain text; cut to 500 characters"
    )
    content_html: str | None = Field(
        default=None, max_length=500_000, description="Sanitised: no scripts, iframes, styles"
    )
    author: Annotated[str, StringConstraints(strip_whitespace=True, max_length=300)] | None = None
    categories: list[Category] = Field(default_factory=list, max_length=20)
    published_at: Annotated[datetime | None, AfterValidator(to_utc)] = None
    image_url: HttpUrlStr | None = None


class ArticlePublic(BaseModel):
    id: int
    url: str
    guid: str | None
    title: str
    summary: str | None
    author: str | None
    categories: list[str]
    image_url: str | None
    published_at: UtcDatetime | None
    created_at: UtcDatetime
    updated_at: UtcDatetime


class ArticleDetail(ArticlePublic):
    content_html: str | None


class ArticleList(BaseModel):
    items: list[ArticlePublic]
    total: int
    limit: int
    offset: int


class FeedImportIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    url: HttpUrlStr


class FeedImportResult(BaseModel):
    url: str
    created: int
    updated: int
    unchanged: int
    skipped: int
    not_modified: bool
    warning: str | None
