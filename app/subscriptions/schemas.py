"""Bodies of the public signup endpoint."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from app.models import Language
from app.openapi import EMAIL_FORMAT


class SubscriptionCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    email: str = Field(
        max_length=320, description="The reader's email address", json_schema_extra=EMAIL_FORMAT
    )
    name: str | None = Field(default=None, max_length=200)
    language: Language | None = Field(
        default=None, description="The reader's language; left out: DEFAULT_LANGUAGE"
    )
    website: str | None = Field(
        default=None, max_length=500, description="Honeypot: leave empty", exclude=True
    )


class SubscriptionAccepted(BaseModel):
    status: Literal["pending"] = "pending"
