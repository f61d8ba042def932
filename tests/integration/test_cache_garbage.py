"""Garbage in Redis is a miss for that key only (issue 7, part 3).

Each kind of data the cache did not write — at a value key, a stale key, a lease key or a tag set —
must give every caller the loader's value, heal at the next fill, be counted, and leave the rest
of the cache alone: healthy keys keep hitting Redis and the circuit breaker stays closed.
"""

from __future__ import annotations

import asyncio
import os
import pickle
import time
import uuid
import zlib
from collections.abc import Callable
from typing import Any

import pytest
import redis

from dbscale.cache import AsyncCache, Cache
from dbscale.cache.policy import BreakerState
from dbscale.cache.serde import encode_header
from dbscale.config import CacheConfig

from .helpers import cached, maybe

pytestmark = pytest.mark.integration


def header() -> bytes:
    return encode_header(int(time.time() * 1000) + 600_000, 1)


# name -> (which Redis key of the cache key, how to write the garbage there)
Write = Callable[[redis.Redis, str], Any]
GARBAGE: dict[str, tuple[str, Write]] = {
    "empty": ("v", lambda r, k: r.set(k, b"")),
    "truncated header": ("v", lambda r, k: r.set(k, b"1000")),
    "header without payload": ("v", lambda r, k: r.set(k, header())),
    "unknown header version": ("v", lambda r, k: r.set(k, b"2" + header()[1:] + b"j1")),
    "bad header digits": ("v", lambda r, k: r.set(k, b"1" + b"x" * 13 + b"0" * 8 + b"j1")),
    "signs and blanks in header": ("v", lambda r, k: r.set(k, b"1+" + b" " * 20 + b"j1")),
    "junk compressed payload": ("v", lambda r, k: r.set(k, header() + b"Jjunk")),
    "compressed non-JSON": ("v", lambda r, k: r.set(k, header() + b"J" + zlib.compress(b"{bad"))),
    "unknown payload format": ("v", lambda r, k: r.set(k, header() + b"x{}")),
    "invalid JSON": ("v", lambda r, k: r.set(k, header() + b"j{not json")),
    "invalid UTF-8 JSON": ("v", lambda r, k: r.set(k, header() + b'j"\xff\xfe"')),
    "msgpack garbage": ("v", lambda r, k: r.set(k, header() + b"m\xc1")),
    "unsigned pickle": ("v", lambda r, k: r.set(k, header() + b"p" + pickle.dumps(1))),
    "random bytes": ("v", lambda r, k: r.set(k, os.urandom(64))),
    "value is a list": ("v", lambda r, k: r.rpush(k, b"a", b"b")),
    "value is a hash": ("v", lambda r, k: r.hset(k, "f", "v")),
    "stale copy is a set": ("s", lambda r, k: r.sadd(k, b"x")),
    "foreign lease, no TTL": ("l", lambda r, k: r.set(k, os.urandom(16))),
    "foreign lease with TTL": ("l", lambda r, k: r.set(k, b"somebody-else", px=60_000)),
    "token-shaped lease, no TTL": ("l", lambda r, k: r.set(k, uuid.uuid4().hex)),
    "lease is a list": ("l", lambda r, k: r.rpush(k, b"a")),
    "tag set is a hash": ("t", lambda r, k: r.hset(k, "f", "v")),
}


def settings(redis_url: str) -> CacheConfig:
    return CacheConfig(redis_url=redis_url, namespace=f"g{uuid.uuid4().hex[:10]}", redis_timeout=0.5)


def plant(raw: redis.Redis, cache: Cache | AsyncCache, kind: str, key: str, tag: str) -> None:
    """Replace the Redis key ``kind`` targets with its garbage."""
    where, write = GARBAGE[kind]
    v, lease, stale = cache.core.keys.triple(key)
    target = {"v": v, "l": lease, "s": stale, "t": cache.core.keys.tag(tag)}[where]
    raw.delete(target)
    write(raw, target)


def check_healed(cache: Cache, raw: redis.Redis, where: str, key: str, tag: str, value: Any) -> None:
    assert cache.get(key, l1=False) == value  # the fill overwrote the garbage with a decodable entry
    assert not raw.exists(cache.core.keys.triple(key)[1])  # no lease left behind
    if where == "t":
        assert raw.type(cache.core.keys.tag(tag)) == b"set"


def check_healthy(cache: Cache, l2_hits_before: int, healthy_reads: int) -> None:
    m = cache.metrics
    assert m.value("cache_hits_total", tier="l2") - l2_hits_before >= healthy_reads  # healthy keys hit Redis
    assert cache.core.breaker.state is BreakerState.CLOSED
    assert m.value("cache_breaker_trips_total") == 0
    assert m.value("cache_bypassed_total") == 0
    assert m.value("cache_corrupt_entries_total") >= 1
    assert len(cache.core.retry) == 0


@pytest.mark.parametrize("front", ["sync", "async"])
@pytest.mark.parametrize("kind", list(GARBAGE))
def test_garbage_is_a_miss_for_that_key_only(redis_url: str, raw: redis.Redis, kind: str, front: str) -> None:
    """One behaviour, both front ends: the blocking calls of ``Cache`` simply run inside the event loop."""
    where = GARBAGE[kind][0]
    cache: Cache | AsyncCache = (Cache if front == "sync" else AsyncCache)(settings(redis_url))
    sync = cache.sync if isinstance(cache, AsyncCache) else cache  # for the checks (same core, same metrics)
    loads: list[int] = []

    def impl(i: int) -> dict[str, int]:
        loads.append(i)
        return {"i": i}

    load = cached(cache, impl, ttl=60, key="g:{i}", tags=["tag:{i}"], l1=False)
    healthy = cached(cache, lambda i: i, ttl=60, key="ok:{i}", l1=False)
    key, tag = "g:1", "tag:1"

    async def main() -> None:
        for i in range(3):
            await maybe(healthy(i))
        plant(raw, cache, kind, key, tag)
        hits = cache.metrics.value("cache_hits_total", tier="l2")
        for _ in range(3):
            t0 = time.monotonic()
            assert await maybe(load(1)) == {"i": 1}
            assert time.monotonic() - t0 < 0.5  # no lease_wait for a lease nobody will fill
            assert [await maybe(healthy(i)) for i in range(3)] == [0, 1, 2]
        assert loads == [1]  # healed by the first call's fill: the next two were hits
        check_healed(sync, raw, where, key, tag, {"i": 1})
        check_healthy(sync, hits, 6)
        # Invalidations of a key (or tag) holding garbage go through, and are not queued.
        plant(raw, cache, kind, key, tag)
        assert await maybe(cache.invalidate(key)) and await maybe(cache.invalidate_tags(tag))
        assert await maybe(cache.invalidate_pattern("g:*"))
        assert await maybe(load(1)) == {"i": 1}
        assert loads == [1, 1]
        assert await maybe(cache.set(key, {"i": 2}, tags=[tag])) and await maybe(cache.get(key)) == {"i": 2}
        assert len(cache.core.retry) == 0

    try:
        asyncio.run(main())
    finally:
        cache.core.close()
