"""Request and response bodies of the bounces API."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, Strict

from app.articles.schemas import json_datetime, to_utc
from app.deps import MAX_DB_INT
from app.models import BounceType


class BounceCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    email: str = Field(max_length=320, description="The address that bounced or complained")
    type: BounceType
    reason: str | None = Field(default=None, max_length=2000, description="e.g. the SMTP reply")


class BounceAccepted(BaseModel):
    status: Literal["accepted"] = "accepted"


class UnbounceIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    since: Annotated[datetime, BeforeValidator(json_datetime), AfterValidator(to_utc)] = Field(
        description="Restore readers marked bounced at or after this time (ISO 8601)"
    )
    digest_id: Annotated[int, Strict()] | None = Field(
        default=None, ge=1, le=MAX_DB_INT, description="Only readers whose copy of it failed"
    )
    # Strict: `"dry_run": 0` is not a boolean, and a mistyped dry run must not restore anyone.
    dry_run: Annotated[bool, Strict()] = Field(
        default=False, description="List them, change nothing"
    )


class UnbouncedPublic(BaseModel):
    email: str | None
    bounced_at: datetime | None
    restored_to: str


class UnbounceOut(BaseModel):
    dry_run: bool
    count: int
    subscribers: list[UnbouncedPublic]
