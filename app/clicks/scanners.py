"""How a click is told to be a machine's: the rules the README states, in one place.

Corporate mail scanners (Safe Links, Mimecast, Proofpoint, Barracuda...) open every link of a
message seconds after it arrives, to check where it leads. Counted as readers, they make every
click rate meaningless. A click is a machine's when:

- it is a `HEAD` request (a browser following a link asks with GET);
- its User-Agent is empty or names a scanner, a library or a bot (`SCANNER_AGENTS`);
- it comes within DELIVERY_WINDOW_SECONDS of the copy's delivery (no reader opens a message and
  picks a link that fast; scanners do it as the message lands);
- it is part of a burst: the copy's clicks on at least BURST_MIN_LINKS different links (or on
  every link of a shorter digest, at least two) within BURST_SECONDS of each other: a reader
  opens one article at a time, a scanner opens all of them at once.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

DELIVERY_WINDOW_SECONDS = 10.0
BURST_SECONDS = 5.0
BURST_MIN_LINKS = 3

SCANNER_AGENTS = re.compile(
    r"barracuda|mimecast|proofpoint|urldefense|messagelabs|symantec|trend ?micro|fortiguard|"
    r"sophos|ironport|cisco|zscaler|forcepoint|safelinks|microsoft office|ms-office|"
    r"google-safety|googleimageproxy|yahoomailproxy|bitdefender|kaspersky|avast|eset|"
    r"python|curl|wget|go-http-client|java/|okhttp|libwww|httpclient|axios|node-fetch|"
    r"scrapy|headless|phantomjs|bot\b|bot/|spider|crawler|scanner|preview|monitor|check",
    re.IGNORECASE,
)


def agent_reason(method: str, user_agent: str | None) -> str | None:
    """Decided at the request: `HEAD`, or a scanner's user agent."""
    if method == "HEAD":
        return "head"
    if not user_agent or not user_agent.strip() or SCANNER_AGENTS.search(user_agent):
        return "agent"
    return None


@dataclass(frozen=True, slots=True)
class TimedClick:
    position: int
    at: datetime


def burst_positions(clicks: Sequence[TimedClick], *, link_count: int) -> bool:
    """Whether one copy's clicks (in time order) hold a scanner's burst."""
    needed = max(2, min(BURST_MIN_LINKS, link_count))
    for start, first in enumerate(clicks):
        seen = {
            c.position for c in clicks[start:] if (c.at - first.at).total_seconds() <= BURST_SECONDS
        }
        if len(seen) >= needed:
            return True
    return False


def too_soon(at: datetime, delivered_at: datetime | None) -> bool:
    if delivered_at is None:
        return False
    return 0 <= (at - delivered_at).total_seconds() < DELIVERY_WINDOW_SECONDS
