"""Response bodies of the subscribers API (GDPR access included)."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

from pydantic import AfterValidator, BaseModel

from app.models import as_utc

# SQLite hands back naive datetimes: every timestamp leaves the API with its UTC offset.
Timestamp = Annotated[datetime, AfterValidator(as_utc)]


class SubscriberPublic(BaseModel):
    email: str | None
    name: str | None
    language: str
    cadence: str
    topics: list[str]
    status: str
    created_at: Timestamp
    confirmed_at: Timestamp | None
    unsubscribed_at: Timestamp | None
    bounced_at: Timestamp | None
    erased_at: Timestamp | None


class SubscriberList(BaseModel):
    total: int
    limit: int
    offset: int
    items: list[SubscriberPublic]


class ConsentPublic(BaseModel):
    at: Timestamp | None
    ip: str | None
    user_agent: str | None
    source: str | None
    language: str


class EventPublic(BaseModel):
    at: Timestamp
    event: str
    detail: str | None


class DeliveryPublic(BaseModel):
    kind: str
    digest_id: int | None
    status: str
    attempts: int
    created_at: Timestamp
    sent_at: Timestamp | None
    message_id: str | None


class BouncePublic(BaseModel):
    at: Timestamp
    type: str
    reason: str | None
    source: str


class SubscriberRecordPublic(BaseModel):
    """Everything the service holds on one person (GDPR access right)."""

    subscriber: SubscriberPublic
    consent: ConsentPublic
    history: list[EventPublic]
    deliveries: list[DeliveryPublic]
    bounces: list[BouncePublic]
