"""Per-recipient fill-in of a message rendered once per digest and language.

Templates are rendered with sentinel placeholders for the few parts that differ per reader
(name, unsubscribe link); each copy is then a handful of `str.replace` calls, never a Jinja
render. Sentinels use Unicode private-use characters, which no escaping changes and no feed
text contains.
"""

from __future__ import annotations

import html
import re
from collections.abc import Mapping

from markupsafe import Markup

_OPEN, _CLOSE = "\ue000", "\ue001"
# link0, link1...: each article link of a digest, which click tracking makes per reader.
MAX_LINKS = 64
LINK_FIELDS = tuple(f"link{i}" for i in range(MAX_LINKS))
READER_FIELDS = ("name", "greeting_name", "unsubscribe_url", "preferences_url", "email")
FIELDS = (*READER_FIELDS, "open_url", *LINK_FIELDS)


def placeholder(field: str) -> Markup:
    """The marker to pass to a template in place of a per-recipient value."""
    assert field in FIELDS, field
    return Markup(f"{_OPEN}{field}{_CLOSE}")


def placeholders() -> dict[str, Markup]:
    return {field: placeholder(field) for field in READER_FIELDS}


def link_field(position: int) -> str:
    """The placeholder name of a digest's article link at `position`."""
    return LINK_FIELDS[position]


_PATTERN = re.compile(
    f"{_OPEN}(name|greeting_name|unsubscribe_url|preferences_url|email|open_url|link[0-9]{{1,2}})"
    f"{_CLOSE}"
)


def split_placeholders(rendered: str) -> list[str]:
    """[static, field, static, field, ..., static]: what `fill` would replace, pre-split."""
    return _PATTERN.split(rendered)


def fill(rendered: str, values: Mapping[str, str], *, escape_html: bool) -> str:
    if _OPEN not in rendered:
        return rendered
    for field, value in values.items():
        rendered = rendered.replace(
            f"{_OPEN}{field}{_CLOSE}", html.escape(value, quote=True) if escape_html else value
        )
    return rendered
