"""A digest's numbers (delivered, bounced, unsubscribed after, clicks, opens): the one function
both `GET /api/v1/digests/{id}` and the desk's digest page read them through."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict

from sqlmodel.ext.asyncio.session import AsyncSession

from app.clicks import service as click_service
from app.config import Settings
from app.digests import service
from app.digests.schemas import MPP_WARNING, DigestNumbers
from app.models import Digest, DigestArticle


async def digest_numbers(
    session: AsyncSession,
    *,
    digest: Digest,
    settings: Settings,
    counts: service.DigestCounts | None = None,
    articles: Sequence[DigestArticle] | None = None,
) -> DigestNumbers:
    """Outcomes of the copies and the click counters; opens only when TRACK_OPENS is on (with
    the warning that image proxies make them say little). `counts` and `articles`: the
    digest's progress counts and articles, when the caller has them (not read twice)."""
    assert digest.id is not None
    outcomes = await service.digest_outcomes(session, digest=digest, counts=counts)
    clicks = await click_service.digest_clicks(session, digest_id=digest.id, articles=articles)
    return DigestNumbers.model_validate(
        {
            "tracking": settings.track_clicks.value,
            "delivered": outcomes.delivered,
            "bounced": outcomes.bounced,
            "unsubscribed": outcomes.unsubscribed,
            "clicks": {"total": clicks.clicks, "unique": clicks.unique, "machine": clicks.machine},
            "articles": [asdict(a) for a in clicks.articles],
            "opens": (
                {"total": clicks.opens, "unique": clicks.unique_opens, "warning": MPP_WARNING}
                if settings.track_opens
                else None
            ),
        }
    )


async def clicks_csv(session: AsyncSession, *, digest_id: int) -> str:
    """The per-article figures as CSV (the API's clicks.csv and the desk's download).
    DigestNotFound for an unknown digest."""
    await service.get_digest(session, digest_id=digest_id)
    return click_service.clicks_csv(await click_service.digest_clicks(session, digest_id=digest_id))
