"""Feed HTML is untrusted: what may stay in article bodies, and how summaries become plain text."""

from __future__ import annotations

import html
import re
from urllib.parse import urlsplit

import nh3

SUMMARY_MAX_CHARS = 500

# What an article body may keep: structure, emphasis, links and images. No scripts, iframes,
# forms, styles or event handlers; nh3 drops anything not listed here.
ALLOWED_TAGS = {
    "a",
    "abbr",
    "b",
    "blockquote",
    "br",
    "cite",
    "code",
    "em",
    "figcaption",
    "figure",
    "h1",
    "h2",
    "h3",
    "h4",
    "h5",
    "h6",
    "hr",
    "i",
    "img",
    "li",
    "ol",
    "p",
    "pre",
    "q",
    "s",
    "small",
    "strong",
    "sub",
    "sup",
    "u",
    "ul",
}
ALLOWED_ATTRIBUTES = {
    "a": {"href", "title"},
    "img": {"src", "alt", "title", "width", "height"},
    "abbr": {"title"},
    "blockquote": {"cite"},
    "q": {"cite"},
}
_URL_ATTRIBUTES = {("a", "href"), ("img", "src"), ("blockquote", "cite"), ("q", "cite")}
_DROPPED_WITH_CONTENT = {"script", "style", "iframe", "object", "embed", "template", "noscript"}
_BLOCK_END = re.compile(r"<\s*(?:br|/p|/h[1-6]|/li|/div|/blockquote|/tr|/figure)\b[^>]*>", re.I)
# WordPress ends excerpts with "… <a href=...>Lire la suite</a>", "[…]" or "Continue reading".
_READ_MORE_LINK = re.compile(
    r"<a\b[^>]*>\s*(?:lire la suite|continuer la lecture|read more|continue reading)[^<]*</a>\s*$",
    re.I,
)
_TRAILER = re.compile(
    r"(?:\s*(?:\[\s*(?:…|\.\.\.)\s*\]|…|\.\.\.|lire la suite|continue reading|read more)\s*)+$",
    re.I,
)


def is_http_url(value: str) -> bool:
    """An absolute http(s) URL with a host and no whitespace or control characters."""
    if not value or any(ch.isspace() or ord(ch) < 32 for ch in value):
        return False
    try:
        parts = urlsplit(value)
    except ValueError:
        return False
    return parts.scheme.lower() in ("http", "https") and bool(parts.hostname)


def _keep_attribute(tag: str, attribute: str, value: str) -> str | None:
    # Only absolute http(s) URLs survive: a relative link means nothing in an inbox, and this
    # also rules out javascript:, data: and vbscript: whatever their spelling.
    if (tag, attribute) in _URL_ATTRIBUTES:
        return value if is_http_url(value) else None
    return value


def sanitize_html(raw: str | None) -> str | None:
    if not raw or not raw.strip():
        return None
    cleaned = nh3.clean(
        raw,
        tags=ALLOWED_TAGS,
        clean_content_tags=_DROPPED_WITH_CONTENT,
        attributes=ALLOWED_ATTRIBUTES,
        attribute_filter=_keep_attribute,
        url_schemes={"http", "https"},
        link_rel="noopener noreferrer",
        strip_comments=True,
    ).strip()
    return cleaned or None


def plain_text(raw: str | None) -> str:
    """Text of an HTML fragment: tags dropped (script/style with their content), entities
    decoded, whitespace collapsed."""
    if not raw:
        return ""
    spaced = _BLOCK_END.sub(" ", raw)
    text = nh3.clean(spaced, tags=set(), clean_content_tags=_DROPPED_WITH_CONTENT, attributes={})
    return " ".join(html.unescape(text).split())


def truncate(text: str, max_chars: int = SUMMARY_MAX_CHARS) -> str:
    """Cut at a word boundary and mark the cut with an ellipsis."""
    if len(text) <= max_chars:
        return text
    cut = text[: max_chars - 1]
    space = cut.rfind(" ")
    if space > max_chars * 0.6:
        cut = cut[:space]
    return cut.rstrip(" ,;:.-–—") + "…"


def summary_text(
    description: str | None, content: str | None = None, *, max_chars: int = SUMMARY_MAX_CHARS
) -> str | None:
    """A plain-text summary: the feed's description without its "Lire la suite" trailer, else
    the start of the body."""
    text = ""
    if description:
        text = plain_text(_READ_MORE_LINK.sub("", description.strip()))
        text = _TRAILER.sub("", text).strip()
    if not text and content:
        text = plain_text(content)
    return truncate(text, max_chars) if text else None
