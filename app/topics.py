"""Topics: the feed's category names, matched case- and accent-insensitively ("Économie" is
"economie"), for readers' choices and schedules' categories alike."""

from __future__ import annotations

import unicodedata
from collections.abc import Iterable, Sequence

MAX_TOPICS = 50
MAX_TOPIC_LENGTH = 100
# One line with something in it: no control characters.
TOPIC_PATTERN = r"^[^\x00-\x1f\x7f]*[^\s\x00-\x1f\x7f][^\x00-\x1f\x7f]*$"


class UnknownTopics(ValueError):
    def __init__(self, names: Sequence[str], allowed: Sequence[str]) -> None:
        super().__init__(
            f"unknown topics: {', '.join(names)} (one of: {', '.join(allowed) or 'none offered'})"
        )
        self.names = list(names)


def topic_key(name: str) -> str:
    """What two spellings of one topic have in common: no accents, no case, single spaces."""
    decomposed = unicodedata.normalize("NFKD", name)
    bare = "".join(c for c in decomposed if not unicodedata.combining(c))
    return " ".join(bare.casefold().split())


def topic_keys(names: Iterable[str]) -> frozenset[str]:
    return frozenset(k for k in (topic_key(n) for n in names) if k)


def in_topics(categories: Iterable[str], keys: frozenset[str]) -> bool:
    """Whether an article of these categories is in these topics (empty keys: every article)."""
    return not keys or any(topic_key(c) in keys for c in categories)


def canonical_topics(names: Iterable[str], allowed: Sequence[str]) -> list[str]:
    """The names as spelled in `allowed` (TOPICS), each once; UnknownTopics for the others.
    With nothing allowed (TOPICS unset), any names are kept as given, cleaned."""
    cleaned = [" ".join(n.split()) for n in names if n.strip()]
    if not allowed:
        return list(dict.fromkeys(cleaned))
    spelled = {topic_key(a): a for a in allowed}
    unknown = [n for n in cleaned if topic_key(n) not in spelled]
    if unknown:
        raise UnknownTopics(unknown, allowed)
    return list(dict.fromkeys(spelled[topic_key(n)] for n in cleaned))
