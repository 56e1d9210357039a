"""Editor API: articles and feed import (Bearer API key)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, HTTPException, Query, Response, status

from app.articles import service
from app.articles.feeds import FeedEntry, MalformedFeed
from app.articles.sanitize import sanitize_html, summary_text
from app.articles.schemas import (
    ArticleDetail,
    ArticleIn,
    ArticleList,
    ArticlePublic,
    FeedImportIn,
    FeedImportResult,
)
from app.audit.deps import AuditDep
from app.deps import EditorDep, IdPath, OffsetQuery, SessionDep, SettingsDep
from app.models import Article

router = APIRouter(prefix="/api/v1", tags=["articles"])

AUTH_RESPONSES: dict[int | str, dict[str, str]] = {
    401: {"description": "Missing, wrong or revoked API key"}
}


def _detail(article: Article) -> ArticleDetail:
    return ArticleDetail.model_validate(article, from_attributes=True)


@router.post(
    "/articles",
    response_model=ArticleDetail,
    status_code=status.HTTP_201_CREATED,
    responses={
        **AUTH_RESPONSES,
        200: {
            "description": "An article with this URL existed and was updated",
            "model": ArticleDetail,
        },
        422: {"description": "Invalid field"},
    },
)
async def put_article(
    body: ArticleIn, session: SessionDep, audit: AuditDep, response: Response
) -> ArticleDetail:
    """Create an article, or update the one with the same URL (201 created, 200 updated)."""
    content_html = sanitize_html(body.content_html)
    entry = FeedEntry(
        url=body.url,
        title=body.title,
        summary=summary_text(body.summary, content_html),
        content_html=content_html,
        author=body.author or None,
        categories=list(dict.fromkeys(body.categories)),
        image_url=body.image_url,
        published_at=body.published_at,
    )
    article, outcome = await service.upsert_article(session, entry=entry)
    audit.on("article", article.id, detail=f"article {outcome}")
    if outcome != "created":
        response.status_code = status.HTTP_200_OK
    return _detail(article)


@router.get("/articles", response_model=ArticleList, responses=AUTH_RESPONSES)
async def list_articles(
    session: SessionDep,
    _editor: EditorDep,
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
    offset: OffsetQuery = 0,
) -> ArticleList:
    """Newest first (publication date, else arrival)."""
    articles, total = await service.list_articles(session, limit=limit, offset=offset)
    return ArticleList(
        items=[ArticlePublic.model_validate(a, from_attributes=True) for a in articles],
        total=total,
        limit=limit,
        offset=offset,
    )


@router.get(
    "/articles/{article_id}",
    response_model=ArticleDetail,
    responses={**AUTH_RESPONSES, 404: {"description": "No such article"}},
)
async def get_article(article_id: IdPath, session: SessionDep, _editor: EditorDep) -> ArticleDetail:
    article = await session.get(Article, article_id)
    if article is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, detail=f"no article {article_id}")
    return _detail(article)


@router.post(
    "/feeds/import",
    response_model=FeedImportResult,
    responses={
        **AUTH_RESPONSES,
        422: {"description": "Invalid URL, or the document is not a readable RSS/Atom feed"},
        502: {"description": "The feed could not be fetched"},
    },
)
async def import_feed(
    body: FeedImportIn, session: SessionDep, settings: SettingsDep, audit: AuditDep
) -> FeedImportResult:
    """Fetch an RSS/Atom feed now and upsert its articles. Re-importing creates no duplicates.
    Addresses in private networks are refused unless FEED_ALLOW_PRIVATE_NETWORKS is set."""
    try:
        result = await service.import_feed_url(
            session, url=body.url, limits=service.FeedLimits.from_settings(settings)
        )
    except service.FeedUnreachable as exc:
        raise HTTPException(status.HTTP_502_BAD_GATEWAY, detail=f"feed unreachable: {exc}") from exc
    except MalformedFeed as exc:
        raise HTTPException(
            status.HTTP_422_UNPROCESSABLE_CONTENT, detail=f"malformed feed: {exc}"
        ) from exc
    audit.on("feed", body.url, detail=result.summary())
    return FeedImportResult(
        url=body.url,
        created=result.created,
        updated=result.updated,
        unchanged=result.unchanged,
        skipped=result.skipped,
        not_modified=result.not_modified,
        warning=result.warning,
    )
