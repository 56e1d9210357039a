"""Editor API shapes for articles and feed imports."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Annotated

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StringConstraints,
)

from app.articles.sanitize import is_http_url
from app.models import as_utc

# An absolute http(s) URI (RFC 3986) of ASCII characters: a host name, an IPv4 address or a
# bracketed IPv6 one, an optional port, then path, query and fragment with other characters
# percent-encoded. The
# OpenAPI document publishes this same pattern, so a client knows exactly what is accepted.
# A host name is not bounded to DNS's 253 characters here (a JSON Schema pattern can only say so
# with a lookahead, which generators of test data cannot honour); nothing after the pattern
# refuses a longer one either: what the pattern admits is accepted.
_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
# RFC 3986's IPv6address, so that a bracketed host the pattern admits is one the URL parser
# takes (`[0]` or `[1.2.3.4]` are not addresses).
_H16 = r"[0-9A-Fa-f]{1,4}"
_OCTET = r"(?:25[0-5]|2[0-4][0-9]|1[0-9]{2}|[1-9]?[0-9])"
_LS32 = rf"(?:{_H16}:{_H16}|{_OCTET}(?:\.{_OCTET}){{3}})"
_IPV6 = "|".join(
    (
        rf"(?:{_H16}:){{6}}{_LS32}",
        rf"::(?:{_H16}:){{5}}{_LS32}",
        rf"(?:{_H16})?::(?:{_H16}:){{4}}{_LS32}",
        rf"(?:(?:{_H16}:){{0,1}}{_H16})?::(?:{_H16}:){{3}}{_LS32}",
        rf"(?:(?:{_H16}:){{0,2}}{_H16})?::(?:{_H16}:){{2}}{_LS32}",
        rf"(?:(?:{_H16}:){{0,3}}{_H16})?::{_H16}:{_LS32}",
        rf"(?:(?:{_H16}:){{0,4}}{_H16})?::{_LS32}",
        rf"(?:(?:{_H16}:){{0,5}}{_H16})?::{_H16}",
        rf"(?:(?:{_H16}:){{0,6}}{_H16})?::",
    )
)
_PCHARS = r"(?:[A-Za-z0-9._~!$&'()*+,;=:@/-]|%[0-9A-Fa-f]{2})*"
_QCHARS = r"(?:[A-Za-z0-9._~!$&'()*+,;=:@/?-]|%[0-9A-Fa-f]{2})*"
HTTP_URL_PATTERN = (
    rf"^[Hh][Tt][Tt][Pp][Ss]?://(?:{_LABEL}(?:\.{_LABEL})*\.?|\[(?:{_IPV6})\])(?::[0-9]{{1,5}})?"
    rf"(?:/{_PCHARS})?(?:\?{_QCHARS})?(?:#{_QCHARS})?$"
)
_HTTP_URL = re.compile(HTTP_URL_PATTERN.removeprefix("^").removesuffix("$"))


def _http_url(value: str) -> str:
    if not _HTTP_URL.fullmatch(value) or not is_http_url(value):
        raise ValueError(
            "must be an absolute http:// or https:// URL (other characters than ASCII letters, "
            "digits and URL punctuation percent-encoded)"
        )
    return value


def json_datetime(value: object) -> object:
    """A date-time in a JSON body is an RFC 3339 string, as the schema says: pydantic would also
    take a number of seconds (`0` became 1970-01-01)."""
    if value is not None and not isinstance(value, str | datetime):
        raise ValueError("must be a date-time string (RFC 3339)")
    return value


def to_utc(value: datetime | None) -> datetime | None:
    # Stored in UTC (SQLite keeps no zone); a date without one is taken as UTC.
    if value is None:
        return None
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


# Answers always carry the zone: SQLite hands back naive datetimes, stored in UTC.
UtcDatetime = Annotated[datetime, AfterValidator(as_utc)]
HttpUrlStr = Annotated[
    str,
    StringConstraints(max_length=2000),
    Field(json_schema_extra={"format": "uri", "pattern": HTTP_URL_PATTERN}),
    AfterValidator(_http_url),
]
# Surrounding whitespace is trimmed; the pattern says something else must be there.
Category = Annotated[
    str, StringConstraints(strip_whitespace=True, min_length=1, max_length=100, pattern=r"\S")
]
BodyDatetime = Annotated[datetime | None, BeforeValidator(json_datetime), AfterValidator(to_utc)]


class ArticleIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    title: Annotated[
        str, StringConstraints(strip_whitespace=True, min_length=1, max_length=1000, pattern=r"\S")
    ]
    url: HttpUrlStr = Field(description="The article's permalink: the key of create-or-update")
    summary: str | None = Field(
        default=None, max_length=5000, description="Plain text; cut to 500 characters"
    )
    content_html: str | None = Field(
        default=None, max_length=500_000, description="Sanitised: no scripts, iframes, styles"
    )
    author: Annotated[str, StringConstraints(strip_whitespace=True, max_length=300)] | None = None
    categories: list[Category] = Field(default_factory=list, max_length=20)
    published_at: BodyDatetime = None
    image_url: HttpUrlStr | None = None
    image_alt: Annotated[str, StringConstraints(strip_whitespace=True, max_length=500)] | None = (
        Field(default=None, description="What the image shows (its alt text); default: the title")
    )


class ArticlePublic(BaseModel):
    id: int
    url: str
    guid: str | None
    title: str
    summary: str | None
    author: str | None
    categories: list[str]
    image_url: str | None
    image_alt: str | None
    hidden_at: UtcDatetime | None = Field(description="Hidden from new digests since then")
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


class ArticleActionIn(BaseModel):
    """The body of hide and unhide: optional, and empty; any field is a 422 naming it."""

    model_config = ConfigDict(extra="forbid", title="ArticleAction")
