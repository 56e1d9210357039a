"""Per-client rate limits on public endpoints (the `limits` library; memory or Redis storage)."""

from __future__ import annotations

import math
import time

from limits import RateLimitItem, parse_many
from limits.aio.strategies import MovingWindowRateLimiter
from limits.storage import storage_from_string


class RateLimited(Exception):
    def __init__(self, retry_after: int) -> None:
        super().__init__(f"rate limited, retry after {retry_after}s")
        self.retry_after = retry_after


class RateLimiter:
    def __init__(self, spec: str, storage_uri: str) -> None:
        uri = storage_uri if storage_uri.startswith("async+") else f"async+{storage_uri}"
        self._items: list[RateLimitItem] = parse_many(spec) if spec.strip() else []
        self._limiter = MovingWindowRateLimiter(storage_from_string(uri))

    async def hit(self, scope: str, key: str) -> None:
        """Count one request; raise RateLimited with the seconds to wait when over a limit."""
        for item in self._items:
            if not await self._limiter.hit(item, scope, key):
                stats = await self._limiter.get_window_stats(item, scope, key)
                raise RateLimited(max(1, math.ceil(stats.reset_time - time.time())))
