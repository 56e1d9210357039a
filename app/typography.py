"""French typography for text we did not write (feed titles and summaries, editors' intros),
applied at render time to plain text, never to URLs (nor to markup: callers pass text nodes).

The rules of the Imprimerie nationale as every French newsroom applies them: a narrow no-break
space (U+202F) before ; : ! ? and inside « », typographic apostrophe ’, straight double quotes
to « », so a line never starts with a colon or a closing quote.
"""

from __future__ import annotations

import re

NNBSP = "\u202f"  # narrow no-break space
NBSP = "\u00a0"

# What is left alone: URLs, addresses, e-mail addresses, times (12:30) and ratios (3:2).
_PROTECTED = re.compile(r"(?:https?://|www\.|mailto:)\S+|\S+@\S+\.\S+|\d+:\d+")
# Spaces (or none) before a run of ; : ! ? that ends a word (followed by space, quote or end),
# after something that is not already a space or an opening bracket.
_BEFORE_HIGH_PUNCTUATION = re.compile(r"(?<=[^\s(\[«])[ \u00a0\u202f]?([;:!?]+)(?=[\s»)\]\"]|$)")
_MARK = "\ue010"  # Unicode private use: no feed text has it
_MARKED = re.compile(f"{_MARK}(\\d+){_MARK}")
_APOSTROPHE = re.compile(r"(?<=\w)'(?=\w)")
_DOUBLE_QUOTED = re.compile(r'"\s*([^"\n]{1,400}?)\s*"')
_GUILLEMET_OPEN = re.compile(r"«[ \u00a0\u202f]?")
_GUILLEMET_CLOSE = re.compile(r"[ \u00a0\u202f]?»")


def _french_segment(text: str) -> str:
    text = _APOSTROPHE.sub("\u2019", text)
    text = _DOUBLE_QUOTED.sub(lambda m: f"«{m.group(1)}»", text)
    text = _GUILLEMET_OPEN.sub(f"«{NNBSP}", text)
    text = _GUILLEMET_CLOSE.sub(f"{NNBSP}»", text)
    return _BEFORE_HIGH_PUNCTUATION.sub(lambda m: f"{NNBSP}{m.group(1)}", text)


def french(text: str) -> str:
    """`text` with French spacing and quotes, URLs, addresses and times untouched."""
    if not text:
        return text
    # Protected runs are set aside (a private-use mark stands in, which the rules see as a
    # word) and put back after.
    kept: list[str] = []

    def set_aside(match: re.Match[str]) -> str:
        kept.append(match.group(0))
        return f"{_MARK}{len(kept) - 1}{_MARK}"

    out = _french_segment(_PROTECTED.sub(set_aside, text))
    return _MARKED.sub(lambda m: kept[int(m.group(1))], out) if kept else out


def for_language(text: str, language: str, *, enabled: bool = True) -> str:
    """French rules for French text when `enabled` (FRENCH_TYPOGRAPHY); others untouched."""
    return french(text) if enabled and language == "fr" else text
