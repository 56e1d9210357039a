"""Bodies of the public signup endpoint."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints

from app.models import Cadence, Language
from app.openapi import EMAIL_FORMAT
from app.topics import MAX_TOPIC_LENGTH, MAX_TOPICS, TOPIC_PATTERN

Topic = Annotated[
    str, StringConstraints(min_length=1, max_length=MAX_TOPIC_LENGTH, pattern=TOPIC_PATTERN)
]


class SubscriptionCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    email: str = Field(
        max_length=320, description="The reader's email address", json_schema_extra=EMAIL_FORMAT
    )
    name: str | None = Field(default=None, max_length=200)
    language: Language | None = Field(
        default=None, description="The reader's language; left out: DEFAULT_LANGUAGE"
    )
    cadence: Cadence | None = Field(default=None, description="Omit for DEFAULT_CADENCE")
    topics: list[Topic] | None = Field(
        default=None,
        max_length=MAX_TOPICS,
        description="Category names, among TOPICS when it is set; omit or [] for every article",
    )
    website: str | None = Field(
        default=None, max_length=500, description="Honeypot: leave empty", exclude=True
    )


class SubscriptionAccepted(BaseModel):
    status: Literal["pending"] = "pending"
