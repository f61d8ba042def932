"""The cache's metrics, bound once so the hot paths only call ``inc()``.

Names (``dbscale_`` prefix, counters end in ``_total``): ``cache_hits{tier}``, ``cache_misses{tier}``
(tier ``l1`` or ``l2``), ``cache_fills``, ``cache_dropped_fills`` (a fill whose lease was revoked),
``cache_lease_waits``, ``cache_lease_timeouts``, ``cache_stale_served``, ``cache_loader_calls``,
``cache_early_recomputes``, ``cache_errors{op}``, ``cache_corrupt_entries`` (data at a key that
dbscale did not write there: undecodable entries, wrong Redis types, foreign leases), ``cache_bypassed`` (Redis skipped: breaker open),
``cache_breaker_trips``, ``cache_invalidations{kind}``, ``cache_invalidation_retries``, ``cache_markers``, ``cache_marker_failures``,
``cache_marker_loads`` (lag-aware fills, see :mod:`dbscale.cache.markers`), the gauge
``cache_pending_invalidations`` and the histogram ``cache_latency_seconds{op}``.

Hits and misses are counted on every read, so they are not prometheus_client Counters (whose
``inc()`` takes a lock, ~0.5–1 µs): each is an :class:`itertools.count`, whose ``next()`` is one C
call and atomic under the GIL, read by a collector registered in the same registry whenever the
registry is collected. ``Metrics.snapshot()`` and ``Metrics.value()`` therefore see exact values.
"""

from __future__ import annotations

import itertools
import threading
import weakref
from collections.abc import Iterator

from prometheus_client.core import CounterMetricFamily
from prometheus_client.registry import Collector

from dbscale.metrics import Metrics

__all__ = ["CacheStats", "HotCounter"]


class HotCounter:
    """A lock-free exact counter: ``inc()`` is ``next()`` on an :class:`itertools.count`.

    Reading takes one value from the count too, so :attr:`value` subtracts the reads made so far
    (reads are rare: a metrics scrape, a snapshot) under a lock of their own.
    """

    __slots__ = ("_count", "_read_lock", "_reads", "inc")

    def __init__(self) -> None:
        self._count = itertools.count()
        self._reads = 0
        self._read_lock = threading.Lock()
        #: Add one (returns the previous value; callers ignore it).
        self.inc = self._count.__next__

    @property
    def value(self) -> int:
        """The current count."""
        with self._read_lock:
            n = next(self._count) - self._reads
            self._reads += 1
            return n


class _HitCollector(Collector):
    """Exposes ``cache_hits{tier}`` and ``cache_misses{tier}`` from :class:`HotCounter` values."""

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix
        self.hits = {"l1": HotCounter(), "l2": HotCounter()}
        self.misses = {"l1": HotCounter(), "l2": HotCounter()}

    def collect(self) -> Iterator[CounterMetricFamily]:
        for name, doc, counters in (
            ("cache_hits", "Cache hits per tier", self.hits),
            ("cache_misses", "Cache misses per tier", self.misses),
        ):
            family = CounterMetricFamily(f"{self.prefix}_{name}", doc, labels=["tier"])
            for tier, counter in counters.items():
                family.add_metric([tier], counter.value)
            yield family


# One collector per registry: caches sharing a Metrics (a Cluster's sync and async caches) share
# their hit counters, as they shared the prometheus Counters before.
_collectors: weakref.WeakKeyDictionary[Metrics, _HitCollector] = weakref.WeakKeyDictionary()
_collectors_lock = threading.Lock()


def _hit_collector(metrics: Metrics) -> _HitCollector:
    with _collectors_lock:
        collector = _collectors.get(metrics)
        if collector is None:
            collector = _collectors[metrics] = _HitCollector(metrics._prefix)
            metrics.registry.register(collector)
        return collector


class CacheStats:
    """Pre-bound metric children of one cache."""

    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics
        hot = _hit_collector(metrics)
        self.l1_hit = hot.hits["l1"]
        self.l2_hit = hot.hits["l2"]
        self.l1_miss = hot.misses["l1"]
        self.l2_miss = hot.misses["l2"]
        self.fills = metrics.counter("cache_fills", "Values stored in Redis by a lease holder")
        self.dropped_fills = metrics.counter("cache_dropped_fills", "Fills refused because their lease was revoked")
        self.lease_waits = metrics.counter("cache_lease_waits", "Callers that waited for another lease holder")
        self.lease_timeouts = metrics.counter("cache_lease_timeouts", "Waits that gave up and loaded without filling")
        self.stale_served = metrics.counter("cache_stale_served", "Stale values served while another caller refills")
        self.loader_calls = metrics.counter("cache_loader_calls", "Calls of the wrapped loader function")
        self.early = metrics.counter("cache_early_recomputes", "XFetch early recomputations")
        self.corrupt = metrics.counter(
            "cache_corrupt_entries", "Keys holding data dbscale did not write (served as a miss, then overwritten)"
        )
        self._errors = metrics.counter("cache_errors", "Failed Redis operations (the caller was served anyway)", ["op"])
        self.bypassed = metrics.counter("cache_bypassed", "Reads that skipped Redis because the breaker was open")
        self.breaker_trips = metrics.counter("cache_breaker_trips", "Times the Redis circuit breaker opened")
        self._invalidations = metrics.counter("cache_invalidations", "Invalidations requested", ["kind"])
        self.inval_retries = metrics.counter(
            "cache_invalidation_retries", "Invalidations that failed and were queued for retry"
        )
        self.markers = metrics.counter("cache_markers", "Invalidations that recorded a lag-aware fill marker")
        self.marker_failures = metrics.counter(
            "cache_marker_failures", "Invalidations run without a marker: the write position could not be read"
        )
        self.marker_loads = metrics.counter(
            "cache_marker_loads", "Loader calls run under a marker's causal token (a miss after an invalidation)"
        )
        self.pending = metrics.gauge("cache_pending_invalidations", "Invalidations waiting for Redis")
        self._latency = metrics.histogram("cache_latency_seconds", "Latency of cache operations", ["op"])
        self.lat_l2_get = self._latency.labels("l2_get")
        self.lat_load = self._latency.labels("load")

    def error(self, op: str) -> None:
        """Count a failed Redis operation."""
        self._errors.labels(op).inc()

    def invalidation(self, kind: str, n: int = 1) -> None:
        """Count invalidations of one kind (key, tag, pattern)."""
        self._invalidations.labels(kind).inc(n)
