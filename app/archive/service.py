"""Which digests the archive shows, and what each shows: sent ones (never drafts, cancelled
digests or test copies), not left out at creation, from their frozen copy of the articles."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

import sqlalchemy as sa
from sqlmodel import col, func, select
from sqlmodel.ext.asyncio.session import AsyncSession

from app.digests.links import SLUG_LANGUAGE, archive_path
from app.digests.render import digest_date, digest_subject
from app.digests.service import articles_of_digests, digest_articles
from app.models import Digest, DigestArticle, DigestStatus, as_utc

PAGE_SIZE = 20
FEED_ENTRIES = 50


class NotArchived(LookupError):
    """No such digest, or one the archive does not show."""


@dataclass(frozen=True, slots=True)
class Issue:
    digest: Digest
    articles: list[DigestArticle]

    @property
    def id(self) -> int:
        assert self.digest.id is not None
        return self.digest.id

    def subject(self, language: str) -> str:
        return digest_subject(self.digest, self.articles, language)

    @property
    def path(self) -> str:
        return archive_path(self.id, self.subject(SLUG_LANGUAGE))

    @property
    def date(self) -> datetime:
        return digest_date(self.digest, self.articles)

    @property
    def sent_at(self) -> datetime:
        return as_utc(self.digest.sent_at or self.digest.created_at)


def _archived() -> sa.ColumnElement[bool]:
    return sa.and_(col(Digest.status) == DigestStatus.sent, col(Digest.archived).is_(True))


async def archive_page(
    session: AsyncSession, *, page: int, per_page: int = PAGE_SIZE
) -> tuple[list[Issue], int]:
    """One page of the archive, newest first, and how many issues there are in all."""
    total = (await session.exec(select(func.count()).select_from(Digest).where(_archived()))).one()
    digests = list(
        (
            await session.exec(
                select(Digest)
                .where(_archived())
                .order_by(col(Digest.sent_at).desc().nulls_last(), col(Digest.id).desc())
                .offset((page - 1) * per_page)
                .limit(per_page)
            )
        ).all()
    )
    articles = await articles_of_digests(session, digest_ids=[d.id for d in digests if d.id])
    return [Issue(d, articles[d.id]) for d in digests if d.id is not None], int(total)


async def archived_issue(session: AsyncSession, *, digest_id: int) -> Issue:
    digest = await session.get(Digest, digest_id)
    if digest is None or digest.status != DigestStatus.sent or not digest.archived:
        raise NotArchived(f"no archived digest {digest_id}")
    return Issue(digest, await digest_articles(session, digest_id=digest_id))


def etag(*parts: object) -> str:
    """A strong validator of what a page is made of (its body, in practice)."""
    return '"' + hashlib.sha256("\x1f".join(map(str, parts)).encode()).hexdigest()[:32] + '"'


def newest(issues: Sequence[Issue]) -> datetime | None:
    return max((i.sent_at for i in issues), default=None)
