"""Cancellation and interruption on a real Redis (issue 7, part 2).

A leader cancelled at a random point of its miss (the L2 read, the lease round trip, the load, the
fill) must not take its followers down with it, and must not leave its lease behind: the next call
on the key runs at once instead of waiting ``lease_wait`` for the lease's TTL.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import threading
import time
import uuid
from typing import Any

import pytest
import redis

from dbscale.cache import AsyncCache, Cache
from dbscale.config import CacheConfig

pytestmark = pytest.mark.integration

LEADERS = 1000


def settings(redis_url: str) -> CacheConfig:
    return CacheConfig(redis_url=redis_url, namespace=f"cx{uuid.uuid4().hex[:10]}", redis_timeout=0.5, l1_size=0)


async def cancel_leaders(cache: AsyncCache, raw: redis.Redis) -> dict[str, Any]:
    loop = asyncio.get_running_loop()
    flights = cache._flight._flights
    follower_errors: list[BaseException] = []
    slow: list[float] = []
    orphans = 0
    slow_followers = 0
    next_waits = 0
    cancelled_in_load = 0

    for i in range(LEADERS):
        key = f"k{i}"
        loading = [False]

        async def load(i: int = i, loading: list[bool] = loading) -> int:
            loading[0] = True
            await asyncio.sleep(random.choice((0, 0.001, 0.002)))
            loading[0] = False
            return i

        leader = asyncio.create_task(cache.get_or_load(key, load, ttl=60))
        while (id(loop), key) not in flights and not leader.done():
            await asyncio.sleep(0)  # until it leads the flight (its L2 read missed)
        followers = [asyncio.create_task(cache.get_or_load(key, load, ttl=60)) for _ in range(random.randrange(4))]
        if random.random() < 0.5:
            for _ in range(random.randrange(12)):  # a few turns of the loop: lands inside round trips
                await asyncio.sleep(0)
        else:
            await asyncio.sleep(random.random() * 0.004)
        cancelled_in_load += loading[0]
        leader.cancel()
        t0 = time.monotonic()
        outcomes = await asyncio.gather(*followers, return_exceptions=True)
        follower_errors += [o for o in outcomes if isinstance(o, BaseException)]
        assert all(o == i for o in outcomes if not isinstance(o, BaseException))
        if time.monotonic() - t0 >= 1.0:  # waited for an orphaned lease (lease_wait is 2 s)
            slow_followers += 1
        waits = cache.metrics.value("cache_lease_waits_total")
        t0 = time.monotonic()
        try:  # the next call after the cancelled one: never cancelled either
            assert await cache.get_or_load(key, load, ttl=60) == i
        except asyncio.CancelledError as exc:
            follower_errors.append(exc)
        elapsed = time.monotonic() - t0
        next_waits += int(cache.metrics.value("cache_lease_waits_total") - waits)  # a lease left behind is HELD
        if elapsed >= 0.05:
            slow.append(elapsed)
        with contextlib.suppress(asyncio.CancelledError):
            await leader
        orphans += raw.exists(cache.core.keys.triple(key)[1])
    return {
        "follower_errors": follower_errors,
        "slow": slow,
        "slow_followers": slow_followers,
        "next_waits": next_waits,
        "orphans": orphans,
        "flights": dict(flights),
        "cancelled_in_load": cancelled_in_load,
    }


def test_cancelled_leaders_neither_fail_followers_nor_orphan_leases(redis_url: str, raw: redis.Redis) -> None:
    cache = AsyncCache(settings(redis_url))

    async def main() -> dict[str, Any]:
        try:
            return await cancel_leaders(cache, raw)
        finally:
            await cache.close()

    out = asyncio.run(main())
    print(
        f"{LEADERS} leaders cancelled ({out['cancelled_in_load']} while loading): "
        f"{len(out['follower_errors'])} follower errors, {out['orphans']} orphaned leases, "
        f"{len(out['slow'])} next calls >= 50 ms {[round(t, 3) for t in out['slow']]}, "
        f"{out['slow_followers']} followers waited >= 1 s, {out['next_waits']} next calls found a lease held"
    )
    assert out["follower_errors"] == []
    assert out["orphans"] == 0
    assert out["next_waits"] == 0
    assert out["slow_followers"] == 0
    # < 50 ms each; a shared 2-core box stalls a call now and then, but never for lease_wait (2 s):
    # a call that waited for an orphaned lease would take at least that
    assert len(out["slow"]) <= LEADERS // 100 and all(t < 1.0 for t in out["slow"])
    assert out["flights"] == {}
    assert out["cancelled_in_load"] > 50  # the random points did reach the load


class Interrupted(BaseException):
    """Stands for a KeyboardInterrupt/SystemExit raised in a thread while it leads a load."""


def test_interrupted_thread_leader_hands_over_and_releases(redis_url: str, raw: redis.Redis) -> None:
    cache = Cache(settings(redis_url))
    try:
        for i in range(50):
            key = f"t{i}"
            started = threading.Event()
            results: list[Any] = []

            def leader_load(started: threading.Event = started) -> int:
                started.set()
                time.sleep(0.02)
                raise Interrupted

            def follow(key: str = key, results: list[Any] = results, i: int = i) -> None:
                try:
                    results.append(cache.get_or_load(key, lambda: i, ttl=60))
                except BaseException as exc:
                    results.append(exc)

            def lead(key: str = key) -> None:
                with pytest.raises(Interrupted):
                    cache.get_or_load(key, leader_load, ttl=60)

            leader = threading.Thread(target=lead)
            leader.start()
            started.wait(5)
            followers = [threading.Thread(target=follow) for _ in range(3)]
            for t in followers:
                t.start()
            t0 = time.monotonic()
            for t in [leader, *followers]:
                t.join(10)
            assert results == [i, i, i]
            assert time.monotonic() - t0 < 1.0  # no follower waited for an orphaned lease (lease_wait 2 s)
            assert not raw.exists(cache.core.keys.triple(key)[1])
        assert cache._flight._flights == {}
    finally:
        cache.close()
