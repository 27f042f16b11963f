"""Per-API-key rate limit (moving window). Shared across API processes through Redis when
the broker is Redis, in process memory on the embedded default."""

from __future__ import annotations

import asyncio
import threading
import time
import weakref
from functools import lru_cache

from limits import RateLimitItem, parse
from limits.aio.strategies import MovingWindowRateLimiter as AsyncMovingWindowRateLimiter
from limits.storage import storage_from_string
from limits.strategies import MovingWindowRateLimiter

from app.settings import get_settings


@lru_cache
def _limiter() -> tuple[MovingWindowRateLimiter, RateLimitItem]:
    settings = get_settings()
    uri = "memory://" if settings.embedded_broker else settings.broker_url
    return MovingWindowRateLimiter(storage_from_string(uri)), parse(settings.rate_limit)


# One per event loop: an asyncio Redis connection belongs to the loop that opened it.
_async_limiters: weakref.WeakKeyDictionary[
    asyncio.AbstractEventLoop, tuple[AsyncMovingWindowRateLimiter, RateLimitItem]
] = weakref.WeakKeyDictionary()
_async_lock = threading.Lock()


def _async_limiter() -> tuple[AsyncMovingWindowRateLimiter, RateLimitItem]:
    loop = asyncio.get_running_loop()
    with _async_lock:
        found = _async_limiters.get(loop)
        if found is None:
            settings = get_settings()
            storage = storage_from_string("async+" + settings.broker_url, implementation="redispy")
            found = AsyncMovingWindowRateLimiter(storage), parse(settings.rate_limit)
            _async_limiters[loop] = found
        return found


def _retry_after(reset: float) -> int:
    return max(1, int(reset - time.time()) + 1)


def check(key: str) -> int | None:
    """Count one request for ``key``; None if allowed, else seconds until it would be."""
    limiter, item = _limiter()
    try:
        if limiter.hit(item, key):
            return None
        reset, _ = limiter.get_window_stats(item, key)
    except Exception:  # the limiter's store is down: do not turn that into an outage
        return None
    return _retry_after(reset)


async def check_async(key: str) -> int | None:
    """:func:`check` from an event loop: the round trip to Redis is awaited rather than
    run in a worker thread (a thread hop per request costs more CPU than the check)."""
    if get_settings().embedded_broker:
        return check(key)  # process memory: nothing to wait for
    limiter, item = _async_limiter()
    try:
        if await limiter.hit(item, key):
            return None
        reset, _ = await limiter.get_window_stats(item, key)
    except Exception:  # the limiter's store is down: do not turn that into an outage
        return None
    return _retry_after(reset)


def reset() -> None:
    _limiter.cache_clear()
    with _async_lock:
        _async_limiters.clear()
