"""Editor API: articles and feed import (Bearer API key)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Body, HTTPException, Query, Response, status
from sqlmodel.ext.asyncio.session import AsyncSession

from app.articles import service
from app.articles.feeds import FeedEntry, MalformedFeed
from app.articles.sanitize import sanitize_html, summary_text
from app.articles.schemas import (
    ArticleActionIn,
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


# Optional: no body, or `{}`.
ActionBody = Annotated[ArticleActionIn | None, Body()]


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
        image_alt=body.image_alt or None,
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


@router.delete(
    "/articles/{article_id}",
    status_code=status.HTTP_204_NO_CONTENT,
    responses={
        **AUTH_RESPONSES,
        404: {"description": "No such article"},
        409: {"description": "A digest went out with it: it can be hidden, not deleted"},
    },
)
async def delete_article(article_id: IdPath, session: SessionDep, _audit: AuditDep) -> Response:
    """Delete an article. Drafts that hold it keep their copy. A digest whose send started
    holds it: 409 (hide it instead). An article still in the feed comes back at the next
    import: hide it to keep it out of digests for good."""
    try:
        await service.delete_article(session, article_id=article_id)
    except service.ArticleNotFound as exc:
        raise HTTPException(status.HTTP_404_NOT_FOUND, detail=str(exc)) from exc
    except service.ArticleInSentDigest as exc:
        raise HTTPException(status.HTTP_409_CONFLICT, detail=str(exc)) from exc
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.post(
    "/articles/{article_id}/hide",
    response_model=ArticleDetail,
    responses={**AUTH_RESPONSES, 404: {"description": "No such article"}},
)
async def hide_article(
    article_id: IdPath, session: SessionDep, _audit: AuditDep, _body: ActionBody = None
) -> ArticleDetail:
    """Keep the article (and the digests that hold it) but offer it to no new digest; a feed's
    update does not bring it back. Allowed whatever digests hold it."""
    return await _set_hidden(session, article_id, hidden=True)


@router.post(
    "/articles/{article_id}/unhide",
    response_model=ArticleDetail,
    responses={**AUTH_RESPONSES, 404: {"description": "No such article"}},
)
async def unhide_article(
    article_id: IdPath, session: SessionDep, _audit: AuditDep, _body: ActionBody = None
) -> ArticleDetail:
    """Offer a hidden article to new digests again."""
    return await _set_hidden(session, article_id, hidden=False)


async def _set_hidden(session: AsyncSession, article_id: int, *, hidden: bool) -> ArticleDetail:
    try:
        article = await service.set_hidden(session, article_id=article_id, hidden=hidden)
    except service.ArticleNotFound as exc:
        raise HTTPException(status.HTTP_404_NOT_FOUND, detail=str(exc)) from exc
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
