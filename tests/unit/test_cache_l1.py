"""L1: LRU + TTL, byte bound, and refusal of inserts that raced an invalidation."""

from __future__ import annotations

import asyncio
import re
import threading

from hypothesis import given
from hypothesis import strategies as st

from dbscale.cache import Cache
from dbscale.cache.l1 import L1
from dbscale.config import CacheConfig


def test_ttl_expiry_uses_injected_now() -> None:
    l1 = L1(10)
    assert l1.put("a", 1, 5.0, now=100.0)
    assert l1.get("a", 104.9) == 1
    assert l1.get("a", 105.0) is None
    assert l1.lookup("a", 100.0) == (True, 1)


def test_none_is_a_value() -> None:
    l1 = L1(10)
    l1.put("n", None, 5.0, now=0.0)
    assert l1.lookup("n", 1.0) == (True, None)
    assert l1.lookup("x", 1.0) == (False, None)


def test_lru_eviction_keeps_recently_used() -> None:
    l1 = L1(2)
    l1.put("a", 1, 10, now=0)
    l1.put("b", 2, 10, now=0)
    assert l1.get("a", 1) == 1  # touch a
    l1.put("c", 3, 10, now=1)
    assert l1.get("b", 1) is None and l1.get("a", 1) == 1 and l1.get("c", 1) == 3


def test_byte_bound() -> None:
    l1 = L1(100, max_bytes=10)
    l1.put("a", 1, 10, now=0, size=6)
    l1.put("b", 2, 10, now=0, size=6)
    assert len(l1) == 1 and l1.stats()["bytes"] == 6
    assert not l1.put("huge", 3, 10, now=0, size=11)


def test_disabled_l1_stores_nothing() -> None:
    l1 = L1(0)
    assert not l1.put("a", 1, 10, now=0)
    assert l1.get("a", 0) is None


def test_put_refused_after_invalidation_since_token() -> None:
    l1 = L1(10)
    token = l1.token()  # a reader starts reading L2 ...
    l1.invalidate(["k"])  # ... an invalidation arrives ...
    assert not l1.put("k", "old", 10, now=0, token=token)  # ... its old value is refused
    assert l1.put("other", 1, 10, now=0, token=token)  # other keys are unaffected
    assert l1.put("k", "new", 10, now=0, token=l1.token())


def test_clear_and_pattern_refuse_all_inflight() -> None:
    l1 = L1(10)
    t = l1.token()
    l1.clear()
    assert not l1.put("a", 1, 10, now=0, token=t)
    l1.put("user:1", 1, 10, now=0)
    l1.put("post:1", 1, 10, now=0)
    t = l1.token()
    assert l1.invalidate_matching(re.compile(r"user:.*\Z")) == 1
    assert l1.get("post:1", 0) == 1 and l1.get("user:1", 0) is None
    assert not l1.put("post:2", 1, 10, now=0, token=t)


def test_forgotten_invalidations_raise_the_floor() -> None:
    l1 = L1(10, recent_invalidations=2)
    t = l1.token()
    l1.invalidate(["a"])
    l1.invalidate(["b"])
    l1.invalidate(["c"])  # "a" is forgotten: every older token is refused
    assert not l1.put("a", 1, 10, now=0, token=t)
    assert not l1.put("zzz", 1, 10, now=0, token=t)


@given(st.lists(st.tuples(st.sampled_from("abcdef"), st.integers(0, 3)), max_size=60), st.integers(1, 4))
def test_property_bounded_and_consistent(ops: list[tuple[str, int]], cap: int) -> None:
    l1 = L1(cap)
    model: dict[str, int] = {}
    for key, op in ops:
        if op == 0:
            l1.invalidate([key])
            model.pop(key, None)
        else:
            l1.put(key, op, 10, now=0)
            model[key] = op
        assert len(l1) <= cap
    for key in "abcdef":
        found, value = l1.lookup(key, 1)
        if found:
            assert model[key] == value


def test_threads_hammering_keep_size_bound() -> None:
    l1 = L1(50)

    def work(n: int) -> None:
        for i in range(2000):
            l1.put(f"k{(i * n) % 200}", i, 10, now=0)
            l1.get(f"k{i % 200}", 0)
            if i % 7 == 0:
                l1.invalidate([f"k{i % 200}"])

    threads = [threading.Thread(target=work, args=(n,)) for n in range(1, 5)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(l1) <= 50


def test_decorated_hits_refresh_lru_order_sync_and_async() -> None:
    cache = Cache(CacheConfig(redis_url=None, l1_size=2))
    loads: list[str] = []

    @cache.cached(ttl=60, key="s:{k}")
    def sync_load(k: str) -> str:
        loads.append(f"s:{k}")
        return k

    @cache.cached(ttl=60, key="a:{k}")
    async def async_load(k: str) -> str:
        loads.append(f"a:{k}")
        return k

    async def async_calls() -> None:
        for k in "aba":  # the second "a" is a decorated L1 hit: it must make "a" the most recent
            await async_load(k)
        await async_load("c")  # evicts the least recently used entry, "b"

    for k in "aba":
        sync_load(k)
    sync_load("c")
    assert loads == ["s:a", "s:b", "s:c"] and set(cache.core.l1._data) == {"s:a", "s:c"}
    loads.clear()
    asyncio.run(async_calls())
    assert loads == ["a:a", "a:b", "a:c"] and set(cache.core.l1._data) == {"a:a", "a:c"}
    cache.close()
