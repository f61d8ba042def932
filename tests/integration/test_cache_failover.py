"""Fail-open: Redis SIGKILLed mid-run — no error reaches a caller, latency stays bounded, caching resumes."""

from __future__ import annotations

import random
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import pytest

from dbscale.cache import Cache
from dbscale.config import CacheConfig, load_config

pytestmark = pytest.mark.integration

LOADER_LATENCY = 0.02


def test_redis_sigkill_fail_open_and_resume(topology_config_path: Path, restore_topology: Any) -> None:
    topology = restore_topology
    url = load_config(topology_config_path, environ={}).cache.redis_url
    cache = Cache(CacheConfig(redis_url=url, namespace=f"t{uuid.uuid4().hex[:12]}", breaker_cooldown=0.5))
    errors: list[BaseException] = []
    latencies: list[float] = []
    stop = threading.Event()

    @cache.cached(ttl=60, key="item:{i}", l1=False)
    def item(i: int) -> dict[str, int]:
        time.sleep(LOADER_LATENCY)
        return {"i": i}

    @cache.cached(ttl=60, key="l1item:{i}")
    def l1_item(i: int) -> dict[str, int]:
        time.sleep(LOADER_LATENCY)
        return {"i": i}

    def caller(fn: Any) -> None:
        while not stop.is_set():
            i = random.randrange(50)
            t0 = time.perf_counter()
            try:
                assert fn(i) == {"i": i}
            except BaseException as exc:
                errors.append(exc)
            latencies.append(time.perf_counter() - t0)

    threads = [threading.Thread(target=caller, args=(fn,)) for fn in (item, item, item, l1_item, l1_item)]
    for t in threads:
        t.start()
    try:
        time.sleep(1.0)
        hits_before = cache.metrics.value("cache_hits_total", tier="l2")
        assert hits_before > 0
        topology.kill("redis")
        time.sleep(2.0)
        assert cache.metrics.value("cache_errors_total", op="get") > 0 or cache.metrics.value("cache_bypassed_total")
        assert cache.metrics.value("cache_breaker_trips_total") >= 1
        assert not cache.invalidate("item:1")  # queued for retry, not swallowed
        assert cache.metrics.value("cache_invalidation_retries_total") >= 1
        topology.start("redis")
        deadline = time.monotonic() + 10
        resumed = cache.metrics.value("cache_hits_total", tier="l2")
        while time.monotonic() < deadline:
            time.sleep(0.2)
            now = cache.metrics.value("cache_hits_total", tier="l2")
            if now > resumed + 20:
                break
        else:
            pytest.fail("caching did not resume after Redis came back")
        assert cache.metrics.value("cache_pending_invalidations") == 0
    finally:
        stop.set()
        for t in threads:
            t.join(10)
        cache.close()
    assert errors == []
    latencies.sort()
    p99 = latencies[int(len(latencies) * 0.99)]
    assert p99 < LOADER_LATENCY + 0.06, p99


def test_hung_redis_stops_l1_use_until_it_answers_again(topology_config_path: Path, restore_topology: Any) -> None:
    """SIGSTOPped Redis: no PONG, so the subscription counts as lost, L1 is dropped; it resumes after SIGCONT."""
    import os
    import signal

    from dbscale.cache.invalidation import PING_INTERVAL, PONG_TIMEOUT

    topology = restore_topology
    url = load_config(topology_config_path, environ={}).cache.redis_url
    cache = Cache(CacheConfig(redis_url=url, namespace=f"t{uuid.uuid4().hex[:12]}", breaker_cooldown=0.5))
    loads: list[int] = []

    @cache.cached(ttl=60, key="v")
    def value() -> int:
        loads.append(1)
        return len(loads)

    listener = cache.core.start_listener()
    assert listener is not None and listener.wait_ready(10)
    assert value() == 1 and value() == 1
    assert cache.core.l1.lookup("v", time.time())[0]  # served from L1
    pid = topology.pid("redis")
    assert pid is not None
    os.kill(pid, signal.SIGSTOP)
    try:
        deadline = time.monotonic() + PING_INTERVAL + PONG_TIMEOUT + 2.0
        while listener.ready and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not listener.ready, "a hung Redis was not noticed"
        assert not cache.core.l1.lookup("v", time.time())[0]  # L1 dropped: it may have missed invalidations
        assert value() == 2  # fail-open: the loader answers while Redis hangs
    finally:
        os.kill(pid, signal.SIGCONT)
    assert listener.wait_ready(15)
    cache.close()
