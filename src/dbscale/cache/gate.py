"""The Redis gate: may this call use Redis now? The circuit breaker plus the invalidations Redis has not taken.

Two things keep a call away from Redis. While the breaker is open (``breaker_threshold`` failures in
a row), calls skip Redis for ``breaker_cooldown`` and are served by the loader (fail open). While
an invalidation is queued for retry (Redis did not take it), no call uses Redis either: a read could
bring the old value back into L1. The gate owns neither the I/O nor L1; it answers and counts.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from dbscale.cache.invalidation import RetryQueue
from dbscale.cache.policy import BreakerState, CircuitBreaker
from dbscale.cache.stats import CacheStats
from dbscale.errors import CacheUnavailable

__all__ = ["RedisGate"]

log = logging.getLogger("dbscale.cache")


class RedisGate:
    """Breaker + retry queue, asked before each Redis call and told how it went. ``clock``: Unix seconds."""

    __slots__ = ("breaker", "clock", "retry", "stats")

    def __init__(
        self, breaker: CircuitBreaker, retry: RetryQueue, stats: CacheStats, clock: Callable[[], float]
    ) -> None:
        self.breaker, self.retry, self.stats, self.clock = breaker, retry, stats, clock

    def healthy(self) -> bool:
        """Breaker closed and nothing queued (the hot path's check: no clock read, no counting)."""
        return not len(self.retry) and self.breaker.state is BreakerState.CLOSED

    def allowed(self, now: float) -> bool:
        """Should this call use Redis? No while invalidations are pending or the breaker is open (counted)."""
        if len(self.retry) or not self.breaker.allow(now):
            self.stats.bypassed.inc()
            return False
        return True

    def failed(self, op: str, exc: CacheUnavailable) -> None:
        """Count a Redis failure and feed the breaker."""
        self.stats.error(op)
        if self.breaker.failure(self.clock()):
            self.stats.breaker_trips.inc()
            log.warning("cache: Redis unavailable, serving from the loader for %.1fs: %s", self.breaker.cooldown, exc)
