"""Lock-free hit/miss counters exposed through the metrics registry (dbscale.cache.stats)."""

from __future__ import annotations

import threading

from dbscale.cache.stats import CacheStats, HotCounter
from dbscale.metrics import Metrics


def test_hot_counter_counts_exactly_across_threads() -> None:
    counter = HotCounter()
    assert counter.value == 0

    def bump() -> None:
        for _ in range(20_000):
            counter.inc()

    threads = [threading.Thread(target=bump) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert counter.value == 160_000


def test_hits_and_misses_appear_in_snapshot_and_value() -> None:
    metrics = Metrics()
    stats = CacheStats(metrics)
    for _ in range(3):
        stats.l1_hit.inc()
    stats.l2_hit.inc()
    stats.l2_miss.inc()
    assert metrics.value("cache_hits_total", tier="l1") == 3
    assert metrics.value("cache_hits_total", tier="l2") == 1
    assert metrics.value("cache_misses_total", tier="l2") == 1
    snap = metrics.snapshot()
    assert {"labels": {"tier": "l1"}, "value": 3.0} in snap["dbscale_cache_hits_total"]
    assert b"dbscale_cache_misses_total" in metrics.exposition()


def test_caches_sharing_a_registry_share_their_counters() -> None:
    metrics = Metrics()
    a, b = CacheStats(metrics), CacheStats(metrics)
    a.l2_hit.inc()
    b.l2_hit.inc()
    assert metrics.value("cache_hits_total", tier="l2") == 2
    assert CacheStats(Metrics()).l2_hit.value == 0
