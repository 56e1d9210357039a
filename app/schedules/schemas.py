"""Editor API shapes for schedules."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, Strict, StringConstraints

from app.articles.schemas import UtcDatetime
from app.digests.schemas import INTRO_DESCRIPTION, SUBJECT_DESCRIPTION, Intro, Subject
from app.models import Cadence, ScheduleRunOutcome
from app.schedules.recurrence import check_cron, parse_zone
from app.schedules.service import MAX_ARTICLES
from app.topics import MAX_TOPIC_LENGTH, MAX_TOPICS, TOPIC_PATTERN

# One line with something in it, without control characters (names, subjects, categories).
ONE_LINE_PATTERN = TOPIC_PATTERN

OneLine = Annotated[
    str,
    StringConstraints(
        strip_whitespace=True, min_length=1, max_length=200, pattern=ONE_LINE_PATTERN
    ),
]


def _cron(value: str) -> str:
    return check_cron(value)  # InvalidCron is a ValueError: a 422 naming `cron`


def _zone(value: str) -> str:
    parse_zone(value)  # InvalidTimezone is a ValueError: a 422 naming `timezone`
    return value


Cron = Annotated[
    str,
    StringConstraints(max_length=100),
    Field(description="Five cron fields, read in `timezone` (e.g. `0 8 * * 5`: Fridays 08:00)"),
    AfterValidator(_cron),
]
Timezone = Annotated[
    str,
    StringConstraints(min_length=1, max_length=64),
    Field(description="An IANA time zone (Europe/Paris)"),
    AfterValidator(_zone),
]
ArticleCount = Annotated[int, Strict(), Field(ge=0, le=MAX_ARTICLES)]
Categories = list[
    Annotated[
        str,
        StringConstraints(
            strip_whitespace=True,
            min_length=1,
            max_length=MAX_TOPIC_LENGTH,
            pattern=ONE_LINE_PATTERN,
        ),
    ]
]


class ScheduleCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: OneLine
    cron: Cron
    timezone: Timezone = "UTC"
    cadence: Cadence = Cadence.weekly
    min_articles: ArticleCount = Field(
        default=1, description="Fewer new articles than this: the slot is skipped (recorded)"
    )
    max_articles: Annotated[int, Strict(), Field(ge=1, le=MAX_ARTICLES)] = 15
    categories: Categories | None = Field(
        default=None, max_length=MAX_TOPICS, description="Only articles in these; omit for all"
    )
    subject: Subject | None = Field(default=None, description=SUBJECT_DESCRIPTION)
    intro: Intro | None = Field(default=None, description=INTRO_DESCRIPTION)
    enabled: Annotated[bool, Strict()] = True


class ScheduleUpdate(BaseModel):
    """Any field; `null` clears `categories`, `subject` and `intro`."""

    model_config = ConfigDict(extra="forbid")

    name: OneLine | None = None
    cron: Cron | None = None
    timezone: Timezone | None = None
    cadence: Cadence | None = None
    min_articles: ArticleCount | None = None
    max_articles: Annotated[int, Strict(), Field(ge=1, le=MAX_ARTICLES)] | None = None
    categories: Categories | None = Field(default=None, max_length=MAX_TOPICS)
    subject: Subject | None = Field(default=None, description=SUBJECT_DESCRIPTION)
    intro: Intro | None = Field(default=None, description=INTRO_DESCRIPTION)
    enabled: Annotated[bool, Strict()] | None = None


class ScheduleRunPublic(BaseModel):
    slot_at: UtcDatetime
    started_at: UtcDatetime
    finished_at: UtcDatetime | None
    outcome: ScheduleRunOutcome
    digest_id: int | None
    article_count: int
    detail: str | None


class SchedulePublic(BaseModel):
    id: int
    name: str
    cron: str
    timezone: str
    cadence: Cadence
    min_articles: int
    max_articles: int
    categories: list[str]
    subject: str | dict[str, str] | None
    intro: str | dict[str, str] | None
    enabled: bool
    next_run_at: datetime | None = Field(
        description="The next slot, ISO 8601 with the zone's offset; null when disabled"
    )
    created_at: UtcDatetime
    updated_at: UtcDatetime
    runs: list[ScheduleRunPublic] = Field(description="The last runs, newest first")


class ScheduleList(BaseModel):
    items: list[SchedulePublic]
