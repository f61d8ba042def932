"""The cache's metrics, bound once so the hot paths only call ``inc()``.

Names (``dbscale_`` prefix, counters end in ``_total``): ``cache_hits{tier}``, ``cache_misses{tier}``
(tier ``l1`` or ``l2``), ``cache_fills``, ``cache_dropped_fills`` (a fill whose lease was revoked),
``cache_lease_waits``, ``cache_lease_timeouts``, ``cache_stale_served``, ``cache_loader_calls``,
``cache_early_recomputes``, ``cache_errors{op}``, ``cache_bypassed`` (Redis skipped: breaker open),
``cache_breaker_trips``, ``cache_invalidations{kind}``, ``cache_invalidation_retries``, the gauge
``cache_pending_invalidations`` and the histogram ``cache_latency_seconds{op}``.
"""

from __future__ import annotations

from dbscale.metrics import Metrics

__all__ = ["CacheStats"]


class CacheStats:
    """Pre-bound metric children of one cache."""

    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics
        hits = metrics.counter("cache_hits", "Cache hits per tier", ["tier"])
        misses = metrics.counter("cache_misses", "Cache misses per tier", ["tier"])
        self.l1_hit = hits.labels("l1")
        self.l2_hit = hits.labels("l2")
        self.l1_miss = misses.labels("l1")
        self.l2_miss = misses.labels("l2")
        self.fills = metrics.counter("cache_fills", "Values stored in Redis by a lease holder")
        self.dropped_fills = metrics.counter("cache_dropped_fills", "Fills refused because their lease was revoked")
        self.lease_waits = metrics.counter("cache_lease_waits", "Callers that waited for another lease holder")
        self.lease_timeouts = metrics.counter("cache_lease_timeouts", "Waits that gave up and loaded without filling")
        self.stale_served = metrics.counter("cache_stale_served", "Stale values served while another caller refills")
        self.loader_calls = metrics.counter("cache_loader_calls", "Calls of the wrapped loader function")
        self.early = metrics.counter("cache_early_recomputes", "XFetch early recomputations")
        self._errors = metrics.counter("cache_errors", "Failed Redis operations (the caller was served anyway)", ["op"])
        self.bypassed = metrics.counter("cache_bypassed", "Reads that skipped Redis because the breaker was open")
        self.breaker_trips = metrics.counter("cache_breaker_trips", "Times the Redis circuit breaker opened")
        self._invalidations = metrics.counter("cache_invalidations", "Invalidations requested", ["kind"])
        self.inval_retries = metrics.counter(
            "cache_invalidation_retries", "Invalidations that failed and were queued for retry"
        )
        self.pending = metrics.gauge("cache_pending_invalidations", "Invalidations waiting for Redis")
        self._latency = metrics.histogram("cache_latency_seconds", "Latency of cache operations", ["op"])
        self.lat_l2_get = self._latency.labels("l2_get")
        self.lat_load = self._latency.labels("load")
        self.lat_lease = self._latency.labels("lease")

    def error(self, op: str) -> None:
        """Count a failed Redis operation."""
        self._errors.labels(op).inc()

    def invalidation(self, kind: str, n: int = 1) -> None:
        """Count invalidations of one kind (key, tag, pattern)."""
        self._invalidations.labels(kind).inc(n)
