"""What a failed L2 call means, decided in one place for the sync and the async API.

``TieredCache._l2_call`` (a blocking call) and ``AsyncTieredMixin._al2_call``
(an awaited one) differ only in how they wait for Redis; around that wait they
run ``L2Guard``, so the breaker, the error counter and the log line are the
same whichever API a caller used.
"""

from __future__ import annotations

import asyncio
import logging
from types import TracebackType

import redis

from ..exceptions import L2Unavailable
from ..stats import CacheStats
from .breaker import CLOSED, CircuitBreaker
from .errors import describe

logger = logging.getLogger("velro_cache")

# Failures that mean "Redis is unreachable or too slow": they open the breaker.
# A Redis Cluster adds two: ClusterError (CLUSTERDOWN, MASTERDOWN: slots
# without a live owner; a ResponseError, so it would otherwise not count) and
# RedisClusterException (no node reachable, slot not covered), which is not
# even a RedisError and would otherwise reach the caller.
OUTAGE_ERRORS = (
    redis.ConnectionError,
    redis.TimeoutError,
    OSError,
    redis.exceptions.ClusterError,
    redis.exceptions.RedisClusterException,
)


class L2Guard:
    """Around one L2 call: an outage opens the breaker, any answer closes it, failures become L2Unavailable."""

    __slots__ = ("breaker", "stats", "name")

    def __init__(self, breaker: CircuitBreaker, stats: CacheStats, name: str) -> None:
        self.breaker = breaker
        self.stats = stats
        self.name = name

    def __enter__(self) -> L2Guard:
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        if exc is None:
            self.breaker.record_success()
            return
        failed(self.breaker, self.stats, self.name, exc)


def failed(breaker: CircuitBreaker, stats: CacheStats, name: str, exc: BaseException) -> None:
    """What an L2 call that raised ``exc`` means; raises L2Unavailable where the caller must see a miss.

    ``L2Guard``'s exit on an exception, callable without the guard for a hot
    path that inlines the success case (``TieredCache._get_from_l2``).
    """
    if isinstance(exc, OUTAGE_ERRORS):
        next(stats.l2_errors)
        breaker.record_failure()
        raise L2Unavailable(describe(exc)) from None  # never the text: it can quote a cached value
    if isinstance(exc, redis.RedisError):  # e.g. OOM: Redis answered, so no outage
        next(stats.l2_errors)
        breaker.record_success()
        logger.warning("velro_cache: Redis refused %s: %s", name, describe(exc))
        raise L2Unavailable(describe(exc)) from None
    if isinstance(exc, asyncio.CancelledError):
        # The caller gave up waiting (often a timeout around a slow Redis):
        # nothing was learnt, but a half-open probe must still end.
        if breaker.state != CLOSED:
            breaker.record_failure()
        return
    # Not an outage (e.g. incr's TypeError: Redis answered); a half-open
    # probe must end either way, or the breaker would wait for ever.
    breaker.record_success()
