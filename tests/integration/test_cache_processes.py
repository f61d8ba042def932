"""Cross-process behaviour: L1 invalidation by broadcast, and leases across processes (spawned children)."""

from __future__ import annotations

import multiprocessing as mp
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from multiprocessing.sharedctypes import Synchronized
from typing import Any

import pytest

from dbscale.cache import Cache
from dbscale.config import CacheConfig

pytestmark = pytest.mark.integration

CTX = mp.get_context("spawn")


# -- children (module-level so spawn can import them) ------------------------------------------------
def _reader(url: str, ns: str, version: Synchronized[int], seen: Any, ready: Any, stop: Any) -> None:
    """Reads key "x" through L1 as fast as it can; records when each new version is first seen."""
    cache = Cache(CacheConfig(redis_url=url, namespace=ns, l1_ttl=60))
    listener = cache.core.start_listener()
    assert listener is not None and listener.wait_ready(5)

    @cache.cached(ttl=300, key="x")
    def get_x() -> int:
        return int(version.value)

    last = get_x()
    ready.set()
    while not stop.is_set():
        value = get_x()
        if value != last:
            seen.put((value, time.time(), cache.metrics.value("cache_hits_total", tier="l1")))
            last = value
    cache.close()


def _stampede(url: str, ns: str, calls: Synchronized[int], barrier: Any, out: Any) -> None:
    """25 threads call one cold key at the same instant as three other processes."""
    cache = Cache(CacheConfig(redis_url=url, namespace=ns, lease_wait=5))

    @cache.cached(ttl=60, key="cold")
    def load() -> str:
        with calls.get_lock():
            calls.value += 1
        time.sleep(0.3)
        return "value"

    start = threading.Barrier(25)

    def call() -> str:
        start.wait()
        return load()

    barrier.wait()
    with ThreadPoolExecutor(25) as pool:
        results = list(pool.map(lambda _: call(), range(25)))
    out.put(results)
    cache.close()


def test_invalidation_reaches_other_process_l1_within_100ms(any_redis_url: str) -> None:
    redis_url = any_redis_url
    ns = f"t{uuid.uuid4().hex[:12]}"
    version = CTX.Value("i", 1)
    seen, ready, stop = CTX.Queue(), CTX.Event(), CTX.Event()
    child = CTX.Process(target=_reader, args=(redis_url, ns, version, seen, ready, stop))
    child.start()
    writer = Cache(CacheConfig(redis_url=redis_url, namespace=ns))
    try:
        assert ready.wait(30)
        lags = []
        l1_hits_before = 0.0
        for n in range(2, 12):
            time.sleep(0.05)  # the child serves "x" from its L1 meanwhile
            with version.get_lock():
                version.value = n  # the "database" changes ...
            t0 = time.time()
            assert writer.invalidate("x")  # ... and the writer invalidates after "commit"
            value, seen_at, l1_hits = seen.get(timeout=5)
            assert value == n
            assert l1_hits > l1_hits_before  # it really was serving from L1 in between
            l1_hits_before = l1_hits
            lags.append(seen_at - t0)
        assert max(lags) < 0.1, lags
    finally:
        stop.set()
        child.join(10)
        writer.close()
    assert child.exitcode == 0


def test_stampede_4_processes_x_25_callers_one_loader_call(any_redis_url: str) -> None:
    redis_url = any_redis_url
    ns = f"t{uuid.uuid4().hex[:12]}"
    calls = CTX.Value("i", 0)
    barrier, out = CTX.Barrier(4), CTX.Queue()
    children = [CTX.Process(target=_stampede, args=(redis_url, ns, calls, barrier, out)) for _ in range(4)]
    for c in children:
        c.start()
    results = [out.get(timeout=60) for _ in children]
    for c in children:
        c.join(10)
        assert c.exitcode == 0
    assert results == [["value"] * 25] * 4
    assert calls.value == 1
