"""The cache on a real Redis: falsy values, leases, stampedes, invalidation, serde (one process)."""

from __future__ import annotations

import asyncio
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
import redis

from dbscale.cache import AsyncCache, Cache
from dbscale.config import CacheConfig
from dbscale.errors import ConfigError, SerializationError

from .helpers import Front, cached, maybe

pytestmark = pytest.mark.integration


@pytest.fixture
def make_cache(redis_url: str) -> Iterator[Any]:
    made: list[Cache] = []

    def factory(**settings: Any) -> Cache:
        settings.setdefault("namespace", f"t{uuid.uuid4().hex[:12]}")
        cache = Cache(CacheConfig(redis_url=redis_url, **settings))
        made.append(cache)
        return cache

    yield factory
    for cache in made:
        cache.close()


FALSY = [0, "", [], None, False]


@pytest.mark.parametrize("front", ["sync", "async"])
@pytest.mark.parametrize("l1", [True, False])
@pytest.mark.parametrize("value", FALSY, ids=repr)
def test_falsy_values_are_hits_on_second_call(make_cache: Any, value: Any, l1: bool, front: str) -> None:
    sync = make_cache()
    cache = sync if front == "sync" else sync.aio
    calls: list[int] = []

    def impl(n: int) -> Any:
        calls.append(n)
        return value

    load = cached(cache, impl, ttl=60, key="falsy:{n}", l1=l1)

    async def main() -> None:
        assert await maybe(load(1)) == value and await maybe(load(1)) == value and await maybe(load(n=1)) == value
        if isinstance(cache, AsyncCache):
            await cache.close()

    asyncio.run(main())
    assert calls == [1]
    hits = cache.metrics.value("cache_hits_total", tier="l1") + cache.metrics.value("cache_hits_total", tier="l2")
    assert hits == 2
    if not l1:
        assert cache.metrics.value("cache_hits_total", tier="l1") == 0


def test_none_uses_negative_ttl(make_cache: Any, redis_url: str) -> None:
    cache = make_cache(negative_ttl=1, jitter=0, stale_ttl=0)

    @cache.cached(ttl=300, key="neg:{n}")
    def load(n: int) -> None:
        return None

    load(1)
    ttl_ms = redis.Redis.from_url(redis_url).pttl(cache.core.keys.value("neg:1"))
    assert 0 < ttl_ms <= 1000


def test_jitter_spreads_ttls(make_cache: Any, redis_url: str) -> None:
    cache = make_cache(jitter=0.1, stale_ttl=0)
    for i in range(40):
        cache.set(f"j{i}", i, ttl=100)
    r = redis.Redis.from_url(redis_url)
    ttls = [r.pttl(cache.core.keys.value(f"j{i}")) for i in range(40)]
    assert min(ttls) >= 89_000 and max(ttls) <= 110_100 and max(ttls) - min(ttls) > 2_000


def test_fill_that_raced_an_invalidation_is_dropped(make_cache: Any) -> None:
    cache = make_cache()
    db = {"v": "old"}
    started, release = threading.Event(), threading.Event()

    @cache.cached(ttl=60, key="race")
    def load() -> str:
        value = db["v"]  # the slow reader saw the old row ...
        started.set()
        release.wait(5)
        return value

    with ThreadPoolExecutor(1) as pool:
        slow = pool.submit(load)
        assert started.wait(5)
        db["v"] = "new"  # ... a writer commits and invalidates ...
        assert cache.invalidate("race")
        release.set()
        assert slow.result() == "old"  # the caller gets what it read ...
    assert cache.metrics.value("cache_dropped_fills_total") == 1  # ... but it never reaches the cache
    assert cache.get("race") is None
    assert load() == "new"


def test_stampede_200_threads_one_loader_call(make_cache: Any) -> None:
    cache = make_cache()
    calls: list[int] = []
    barrier = threading.Barrier(200)

    @cache.cached(ttl=60, key="cold")
    def load() -> int:
        calls.append(1)
        time.sleep(0.2)
        return 42

    def call() -> int:
        barrier.wait()
        return load()

    with ThreadPoolExecutor(200) as pool:
        results = list(pool.map(lambda _: call(), range(200)))
    assert results == [42] * 200 and len(calls) == 1


def test_stampede_200_tasks_one_loader_call(make_cache: Any) -> None:
    cache = make_cache()
    calls: list[int] = []

    @cache.cached(ttl=60, key="acold")
    async def load() -> int:
        calls.append(1)
        await asyncio.sleep(0.2)
        return 7

    async def main() -> list[int]:
        try:
            return await asyncio.gather(*(load() for _ in range(200)))
        finally:
            await cache.aio.close()

    assert asyncio.run(main()) == [7] * 200 and len(calls) == 1


def test_lease_holder_elsewhere_waiters_wait_or_take_stale(make_cache: Any) -> None:
    ns = f"t{uuid.uuid4().hex[:12]}"
    a, b = make_cache(namespace=ns, l1_size=0), make_cache(namespace=ns, l1_size=0)
    a.set("k", "v1")
    a.invalidate("k")  # v1 becomes the stale copy
    gate = threading.Event()

    def slow() -> str:
        gate.wait(5)
        return "v2"

    with ThreadPoolExecutor(2) as pool:
        holder = pool.submit(a.get_or_load, "k", slow)
        time.sleep(0.1)  # a holds the lease now
        assert b.get_or_load("k", lambda: "never", serve_stale=True) == "v1"
        assert b.metrics.value("cache_stale_served_total") == 1
        waiter = pool.submit(b.get_or_load, "k", lambda: "never")  # no serve_stale: waits for the fill
        time.sleep(0.05)
        assert not waiter.done()
        gate.set()
        assert holder.result() == "v2"
        assert waiter.result() == "v2"
    assert b.metrics.value("cache_lease_waits_total") == 2
    assert b.metrics.value("cache_loader_calls_total") == 0


def test_waiter_gives_up_after_lease_wait_and_does_not_fill(make_cache: Any) -> None:
    ns = f"t{uuid.uuid4().hex[:12]}"
    a, b = make_cache(namespace=ns, lease_wait=0.2), make_cache(namespace=ns, lease_wait=0.2)
    gate = threading.Event()
    with ThreadPoolExecutor(1) as pool:
        holder = pool.submit(a.get_or_load, "k", lambda: gate.wait(5) and "slow")
        time.sleep(0.05)
        t0 = time.monotonic()
        assert b.get_or_load("k", lambda: "own") == "own"
        assert 0.15 < time.monotonic() - t0 < 1.0
        assert b.metrics.value("cache_lease_timeouts_total") == 1
        gate.set()
        assert holder.result() == "slow"
    assert b.get("k", l1=False) == "slow"


def test_tags_and_pattern_invalidation_with_scan(make_cache: Any, redis_url: str) -> None:
    cache = make_cache()
    version = {"n": 1}

    @cache.cached(ttl=60, key="user:{uid}:{part}", tags=["user:{uid}", "users"])
    def part(uid: int, part: str) -> tuple[int, str, int]:
        return (uid, part, version["n"])

    for uid in range(30):
        part(uid, "a")
        part(uid, "b")
    version["n"] = 2
    assert cache.invalidate_tags("user:3")
    assert part(3, "a")[2] == 2 and part(3, "b")[2] == 2 and part(4, "a")[2] == 1
    assert cache.invalidate_pattern("user:1*:a")
    assert [part(i, "a")[2] for i in (1, 10, 19, 2)] == [2, 2, 2, 1]
    assert part(10, "b")[2] == 1
    assert cache.invalidate_tags("users")
    assert all(part(i, p)[2] == 2 for i in range(30) for p in "ab")
    # the tag set was consumed and rebuilt by the refills
    assert redis.Redis.from_url(redis_url).scard(cache.core.keys.tag("users")) == 60


def test_invalidate_refresh_and_direct_access(front: Callable[..., Front]) -> None:
    cache = front()
    counter = {"n": 0}

    @cache.cached(ttl=60, key="c:{x}")
    def count(x: int) -> int:
        counter["n"] += 1
        return counter["n"]

    assert count(1) == 1 and count(1) == 1
    assert count.invalidate(x=1)
    assert count(1) == 2
    assert count.refresh(1) == 3 and count(x=1) == 3
    assert count.cache_key(x=1) == "c:1"
    assert cache.get("nope", "dflt") == "dflt"
    assert cache.set("k", [1, 2], ttl=30)
    assert cache.get("k") == [1, 2] and cache.get("k", l1=False) == [1, 2]
    assert cache.delete("k")
    assert cache.get("k") is None
    assert cache.invalidate_tags("none") and cache.invalidate_pattern("c:*")
    assert count(1) == 4
    assert cache.get_or_load("g", lambda: {"a": 1}) == {"a": 1} and cache.get_or_load("g", lambda: "never") == {"a": 1}


def test_listener_starts_on_first_redis_use(front: Callable[..., Front]) -> None:
    cache = front()
    assert cache.core.listener is None  # the constructor started nothing
    assert cache.get("absent") is None
    listener = cache.core.listener
    assert listener is not None and listener.wait_ready(5)


def test_unserializable_value_raises_and_releases_lease(make_cache: Any) -> None:
    cache = make_cache()

    class Row:
        pass

    @cache.cached(ttl=60, key="row")
    def load() -> Any:
        return Row()

    with pytest.raises(SerializationError, match="Row"):
        load()
    t0 = time.monotonic()
    assert cache.get_or_load("row", lambda: "ok") == "ok"  # lease was released: no waiting
    assert time.monotonic() - t0 < 0.1


def test_loader_of_the_wrong_kind_is_a_clear_error_and_releases_the_lease(make_cache: Any) -> None:
    cache = make_cache()

    async def async_loader() -> int:
        return 5

    with pytest.raises(TypeError, match=r"returned an awaitable.*use AsyncCache"):
        cache.get_or_load("mixed", async_loader)
    assert cache.get_or_load("mixed", lambda: 6, ttl=60) == 6  # lease released: loads at once

    async def main() -> None:
        acache = make_cache().aio
        with pytest.raises(TypeError, match=r"returned int, not an awaitable.*async def"):
            await acache.get_or_load("mixed", lambda: 5)
        assert await acache.get_or_load("mixed", async_loader, ttl=60) == 5
        await acache.close()

    asyncio.run(main())


def test_methods_bind_the_instance_and_share_entries_across_instances(make_cache: Any) -> None:
    cache = make_cache()
    calls: list[tuple[str, int]] = []

    class Repo:
        def __init__(self, name: str) -> None:
            self.name = name

        @cache.cached(ttl=60)
        def get(self, user_id: int) -> int:
            calls.append((self.name, user_id))
            return user_id * 10

        @cache.aio.cached(ttl=60, key="u:{user_id}")
        async def aget(self, user_id: int) -> int:
            calls.append((self.name, -user_id))
            return -user_id

    a, b = Repo("a"), Repo("b")
    assert a.get(1) == 10 and b.get(1) == 10 and a.get(user_id=1) == 10
    assert calls == [("a", 1)]  # self is not part of the default key: b hit a's entry
    assert a.get.cache_key(1) == b.get.cache_key(1) == Repo.get.cache_key(a, 1)
    assert b.get.invalidate(1) is True  # bound: 1 is user_id, not self
    assert a.get(1) == 10 and calls == [("a", 1), ("a", 1)]
    assert b.get.refresh(1) == 10 and calls[-1] == ("b", 1)

    async def main() -> None:
        assert await a.aget(2) == -2 and await b.aget(2) == -2
        assert a.aget.cache_key(2) == "u:2"
        assert await b.aget.invalidate(2) is True
        assert await a.aget(2) == -2
        await cache.aio.close()

    asyncio.run(main())
    assert calls[-2:] == [("a", -2), ("a", -2)]


def test_msgpack_compression_and_hmac_on_redis(make_cache: Any) -> None:
    cache = make_cache(serializer="msgpack", compress_threshold=64, hmac_key="s3cret")
    big = {"rows": list(range(500))}
    assert cache.set("big", big)
    assert cache.get("big", l1=False) == big
    other = make_cache(namespace=cache.config.namespace, hmac_key="wrong", l1_size=0)
    assert other.get("big") is None  # bad signature: a miss, counted
    assert other.metrics.value("cache_errors_total", op="decode") == 1


def test_xfetch_recomputes_before_expiry(make_cache: Any) -> None:
    cache = make_cache(jitter=0)
    calls: list[int] = []

    @cache.cached(ttl=0.4, key="x", l1=False, xfetch_beta=50.0)
    def load() -> int:
        calls.append(1)
        time.sleep(0.02)
        return len(calls)

    load()
    deadline = time.monotonic() + 0.38
    while time.monotonic() < deadline:
        load()
        time.sleep(0.005)
    assert len(calls) >= 2  # recomputed early, before the 0.4 s TTL ran out
    assert cache.metrics.value("cache_early_recomputes_total") >= 1


def test_l1_only_cache_without_redis() -> None:
    cache = Cache(CacheConfig(redis_url=None))
    calls: list[int] = []

    @cache.cached(ttl=60)
    def f(x: int) -> int:
        calls.append(x)
        return x

    assert f(1) == f(1) == 1 and calls == [1]
    cache.invalidate(f.cache_key(1))
    f(1)
    assert calls == [1, 1]
    cache.close()


def test_a_ttl_that_is_no_lifetime_is_refused_where_it_is_given(make_cache: Any) -> None:
    """``cached(ttl=-1)`` used to reach Redis as a failed SET (the loader ran on nearly every call) and NaN
    failed inside the miss path: the decorator, ``get_or_load`` and write-through refuse them at once."""
    cache = make_cache()
    calls: list[int] = []
    with pytest.raises(ConfigError, match=r"ttl=-1: .*positive finite number"):

        @cache.cached(ttl=-1, key="neg:{x}")
        def negative(x: int) -> int:
            calls.append(x)
            return x

    with pytest.raises(ConfigError, match="ttl=nan"):
        cache.get_or_load("k", lambda: 1, ttl=float("nan"))
    assert calls == []
