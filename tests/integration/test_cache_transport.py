"""The L2 GET transport (its own idle connections, no per-command pool probe) on a real Redis:
server-closed connections, a slow Redis, and fork."""

from __future__ import annotations

import multiprocessing as mp
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import redis

from dbscale.cache import Cache
from dbscale.config import CacheConfig

from .helpers import Front

pytestmark = pytest.mark.integration

# Keeps Redis busy (a running script blocks every other client) for ARGV[1] microseconds.
BUSY_SCRIPT = """
local t0 = redis.call('TIME')
local start = t0[1] * 1000000 + t0[2]
while true do
  local t = redis.call('TIME')
  if t[1] * 1000000 + t[2] - start > tonumber(ARGV[1]) then return 1 end
end
"""


TIMEOUT = 0.05


@pytest.fixture
def cache(redis_url: str) -> Iterator[Cache]:
    """A blocking cache with ``redis_timeout`` 50 ms (the default)."""
    cache = Cache(CacheConfig(redis_url=redis_url, namespace=f"t{uuid.uuid4().hex[:12]}", redis_timeout=TIMEOUT))
    yield cache
    cache.close()


def errors(cache: Cache | Front) -> float:
    return sum(s["value"] for s in cache.metrics.snapshot().get("dbscale_cache_errors_total", []))


def kill_normal_clients(redis_url: str) -> None:
    admin = redis.Redis.from_url(redis_url)
    admin.client_kill_filter(_type="normal", skipme=True)
    admin.close()


def test_connection_closed_by_server_while_idle_is_retried_once(front: Callable[..., Front], redis_url: str) -> None:
    cache = front(redis_timeout=1.0)  # patient: a busy test machine must not cause a fail-open
    cache.set("k", {"v": 1})
    assert cache.get("k", l1=False) == {"v": 1}  # leaves one idle GET connection
    kill_normal_clients(redis_url)
    assert cache.get("k", l1=False) == {"v": 1}
    assert errors(cache) == 0
    assert cache.metrics.value("cache_hits_total", tier="l2") == 2


def busy(redis_url: str, seconds: float) -> threading.Thread:
    client = redis.Redis.from_url(redis_url)
    thread = threading.Thread(target=lambda: client.eval(BUSY_SCRIPT, 0, int(seconds * 1e6)), daemon=True)
    thread.start()
    time.sleep(0.05)  # let the script start
    return thread


def test_slow_redis_fails_open_within_the_timeout_then_recovers(front: Callable[..., Front], redis_url: str) -> None:
    cache = front(redis_timeout=TIMEOUT)
    calls: list[int] = []

    @cache.cached(ttl=60, key="slow:{n}", l1=False)
    def load(n: int) -> int:
        calls.append(n)
        return n * 2

    assert load(1) == 2 and load(1) == 2 and calls == [1]
    thread = busy(redis_url, 0.4)
    t0 = time.perf_counter()
    assert load(1) == 2  # the GET times out after 50 ms: the loader is called, no lease is tried
    elapsed = time.perf_counter() - t0
    thread.join()
    assert elapsed < TIMEOUT + 0.2, elapsed  # not the 0.4 s Redis is busy
    assert errors(cache) >= 1
    cache.core.breaker.success()  # don't wait out a cooldown if the lease failure tripped it
    hits = cache.metrics.value("cache_hits_total", tier="l2")
    assert load(1) == 2  # the timed-out connection was dropped: a fresh one reads the hit
    assert cache.metrics.value("cache_hits_total", tier="l2") == hits + 1
    thread = busy(redis_url, 0.4)
    t0 = time.perf_counter()
    assert cache.get("slow:1", "fallback", l1=False) == "fallback"  # direct access fails open alike
    elapsed = time.perf_counter() - t0
    thread.join()
    assert elapsed < TIMEOUT + 0.2, elapsed
    cache.core.breaker.success()
    assert cache.get("slow:1", l1=False) == 2


def _child(cache: Cache, n: int, out: Any) -> None:
    l2 = cache.core.sync_l2()
    assert l2 is not None
    idle_after_fork = len(l2._idle)
    ok = all(cache.get(f"f{i % 10}", l1=False) == i % 10 for i in range(n))
    out.put((idle_after_fork, ok))


def test_forked_child_does_not_share_get_connections(cache: Cache) -> None:
    for i in range(10):
        cache.set(f"f{i}", i)
    assert cache.get("f1", l1=False) == 1  # the parent now has an idle GET connection
    ctx = mp.get_context("fork")
    out = ctx.Queue()
    child = ctx.Process(target=_child, args=(cache, 300, out))
    child.start()
    parent_ok = all(cache.get(f"f{i % 10}", l1=False) == i % 10 for i in range(300))
    idle_after_fork, child_ok = out.get(timeout=30)
    child.join(10)
    assert idle_after_fork == 0 and child_ok and parent_ok and child.exitcode == 0
