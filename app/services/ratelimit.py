"""Per-API-key rate limit (moving window). Shared across API processes through Redis when
the broker is Redis, in process memory on the embedded default."""

from __future__ import annotations

import time
from functools import lru_cache

from limits import parse
from limits.storage import storage_from_string
from limits.strategies import MovingWindowRateLimiter

from app.settings import get_settings


@lru_cache
def _limiter() -> tuple[MovingWindowRateLimiter, object]:
    settings = get_settings()
    uri = "memory://" if settings.embedded_broker else settings.broker_url
    return MovingWindowRateLimiter(storage_from_string(uri)), parse(settings.rate_limit)


def check(key: str) -> int | None:
    """Count one request for ``key``; None if allowed, else seconds until it would be."""
    limiter, item = _limiter()
    try:
        if limiter.hit(item, key):  # type: ignore[arg-type]
            return None
        reset, _ = limiter.get_window_stats(item, key)  # type: ignore[arg-type]
    except Exception:  # the limiter's store is down: do not turn that into an outage
        return None
    return max(1, int(reset - time.time()) + 1)


def reset() -> None:
    _limiter.cache_clear()
