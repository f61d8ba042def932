"""Cache benchmark: dbscale's L1/L2 hits side by side with what a user would pick instead.

    python benchmarks/cache.py                      # starts a throwaway LocalTopology for its Redis
    python benchmarks/cache.py --redis-url redis://127.0.0.1:6390/0

One run. Within each section the cases are interleaved: every round times a batch of each case,
in alternating order (forward, then reversed), and the table shows the median per call over all
rounds, so machine noise hits every case alike. Targets (issue 4): L1 hit <= 2 µs and >= 5x faster
than dogpile.cache's memory backend; L2 hit (l1=False) <= 1.15x a raw redis-py GET + orjson.loads
of the same value, where "raw" is what a user would write: a plain ``redis.Redis(...)`` with no
options. A raw client with the same socket timeout as dbscale's is shown as an extra reference
(a timeout makes every socket call poll first). The async L2 hit is compared with cashews and
aiocache on the same Redis. After timing, the dbscale cases are checked to have been real hits
(no loader call, no Redis error), so a fail-open path cannot pass for a fast hit.
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import orjson
import redis
import redis.asyncio as aredis

from dbscale.cache import Cache
from dbscale.cache.l2 import client_options
from dbscale.config import CacheConfig

VALUE = {
    "id": 42,
    "name": "Ada Lovelace",
    "email": "ada@example.com",
    "active": True,
    "score": 97.5,
    "tags": ["a", "b"],
}


def interleaved(cases: dict[str, Callable[[], Any]], *, number: int, rounds: int) -> list[tuple[str, float]]:
    """Median seconds per call of each case; each round runs a batch of every case, order alternating."""
    for fn in cases.values():
        fn()
    names = list(cases)
    times: dict[str, list[float]] = {name: [] for name in names}
    for i in range(rounds):
        for name in names if i % 2 == 0 else reversed(names):
            fn = cases[name]
            t0 = time.perf_counter()
            for _ in range(number):
                fn()
            times[name].append((time.perf_counter() - t0) / number)
    return [(name, statistics.median(times[name])) for name in names]


async def ainterleaved(
    cases: dict[str, Callable[[], Awaitable[Any]]], *, number: int, rounds: int
) -> list[tuple[str, float]]:
    """:func:`interleaved` for coroutine functions."""
    for fn in cases.values():
        await fn()
    names = list(cases)
    times: dict[str, list[float]] = {name: [] for name in names}
    for i in range(rounds):
        for name in names if i % 2 == 0 else reversed(names):
            fn = cases[name]
            t0 = time.perf_counter()
            for _ in range(number):
                await fn()
            times[name].append((time.perf_counter() - t0) / number)
    return [(name, statistics.median(times[name])) for name in names]


def check_hits(cache: Cache, before: dict[str, float], calls: int) -> None:
    """Fail loudly unless every timed dbscale call was an L2 hit (no loader call, no Redis error)."""
    after = counters(cache)
    if (
        after["loader"] != before["loader"]
        or after["errors"] != before["errors"]
        or after["l2"] - before["l2"] != calls
    ):
        raise SystemExit(f"dbscale case was not {calls} pure L2 hits: {before} -> {after}")


def counters(cache: Cache) -> dict[str, float]:
    m = cache.metrics
    errors = sum(s["value"] for s in m.snapshot().get("dbscale_cache_errors_total", []))
    return {
        "loader": m.value("cache_loader_calls_total"),
        "errors": errors,
        "l2": m.value("cache_hits_total", tier="l2"),
    }


def l1_rows() -> list[tuple[str, float]]:
    from dogpile.cache import make_region

    cache = Cache(CacheConfig(redis_url=None, namespace="bench"))

    @cache.cached(ttl=300, key="user:{user_id}")
    def dbscale_user(user_id: int) -> dict[str, Any]:
        return VALUE

    region = make_region().configure("dogpile.cache.memory", expiration_time=300)

    @region.cache_on_arguments()
    def dogpile_user(user_id: int) -> dict[str, Any]:
        return VALUE

    d = {"user:42": VALUE}
    rows = interleaved(
        {
            "dict.get (floor)": lambda: d.get("user:42"),
            "dbscale L1 hit, decorated": lambda: dbscale_user(42),
            "dogpile.cache memory backend hit, decorated": lambda: dogpile_user(42),
        },
        number=10_000,
        rounds=30,
    )
    cache.close()
    return rows


RAW = "redis-py GET + orjson.loads (raw)"
RAW_TIMEOUT = "redis-py GET + orjson.loads, same socket timeout as dbscale (reference)"
DBSCALE_L2 = "dbscale L2 hit (l1=False), decorated"
TIMEOUT = 1.0  # generous, so a busy machine never turns a hit into a fail-open loader call


def l2_rows(url: str) -> list[tuple[str, float]]:
    cache = Cache(CacheConfig(redis_url=url, namespace=f"bench{uuid.uuid4().hex[:6]}", redis_timeout=TIMEOUT))

    @cache.cached(ttl=300, key="user:{user_id}", l1=False)
    def dbscale_user(user_id: int) -> dict[str, Any]:
        return VALUE

    dbscale_user(42)
    raw = redis.Redis.from_url(url)
    raw_timeout = redis.Redis.from_url(url, **client_options(TIMEOUT))
    raw.set("bench:raw:user:42", orjson.dumps(VALUE))
    assert dbscale_user(42) == orjson.loads(raw.get("bench:raw:user:42"))  # type: ignore[arg-type]
    before = counters(cache)
    rows = interleaved(
        {
            RAW: lambda: orjson.loads(raw.get("bench:raw:user:42")),  # type: ignore[arg-type]
            RAW_TIMEOUT: lambda: orjson.loads(raw_timeout.get("bench:raw:user:42")),  # type: ignore[arg-type]
            DBSCALE_L2: lambda: dbscale_user(42),
        },
        number=500,
        rounds=40,
    )
    check_hits(cache, before, 1 + 500 * 40)
    raw.delete("bench:raw:user:42")
    raw.close()
    raw_timeout.close()
    cache.close()
    return rows


async def async_rows(url: str, host: str, port: int) -> list[tuple[str, float]]:
    from aiocache import Cache as AioCache
    from aiocache import cached as aio_cached
    from aiocache.serializers import JsonSerializer
    from cashews import cache as cashews_cache

    cache = Cache(CacheConfig(redis_url=url, namespace=f"bench{uuid.uuid4().hex[:6]}", redis_timeout=TIMEOUT)).aio

    @cache.cached(ttl=300, key="user:{user_id}", l1=False)
    async def dbscale_user(user_id: int) -> dict[str, Any]:
        return VALUE

    cashews_cache.setup(url, client_side=False)

    @cashews_cache(ttl="5m", key="cashews:user:{user_id}")
    async def cashews_user(user_id: int) -> dict[str, Any]:
        return VALUE

    @aio_cached(
        ttl=300,
        cache=AioCache.REDIS,
        endpoint=host,
        port=port,
        namespace="aiocache",
        serializer=JsonSerializer(),
        key_builder=lambda f, user_id: f"user:{user_id}",
    )
    async def aiocache_user(user_id: int) -> dict[str, Any]:
        return VALUE

    raw = aredis.Redis.from_url(url)
    raw_timeout = aredis.Redis.from_url(url, **client_options(TIMEOUT))
    await raw.set("bench:raw:user:42", orjson.dumps(VALUE))

    async def raw_get() -> Any:
        return orjson.loads(await raw.get("bench:raw:user:42"))  # type: ignore[arg-type]

    async def raw_timeout_get() -> Any:
        return orjson.loads(await raw_timeout.get("bench:raw:user:42"))  # type: ignore[arg-type]

    await dbscale_user(42)
    before = counters(cache.sync)
    rows = await ainterleaved(
        {
            "redis.asyncio GET + orjson.loads (raw)": raw_get,
            "redis.asyncio GET + orjson.loads, same socket timeout as dbscale (reference)": raw_timeout_get,
            "dbscale async L2 hit (l1=False), decorated": lambda: dbscale_user(42),
            "cashews redis hit, decorated": lambda: cashews_user(42),
            "aiocache redis hit, decorated": lambda: aiocache_user(42),
        },
        number=300,
        rounds=30,
    )
    check_hits(cache.sync, before, 1 + 300 * 30)
    await raw.delete("bench:raw:user:42")
    await raw.aclose()
    await raw_timeout.aclose()
    await cache.close()
    await cashews_cache.close()
    return rows


def table(sections: list[tuple[str, list[tuple[str, float]], str]]) -> str:
    out = ["| benchmark | case | median per call | ratio to baseline |", "|---|---|---:|---:|"]
    for title, rows, baseline in sections:
        base = dict(rows)[baseline]
        for name, seconds in rows:
            ratio = seconds / base
            out.append(f"| {title} | {name} | {seconds * 1e6:.2f} µs | {ratio:.2f}x |")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--redis-url", help="use this Redis instead of starting a LocalTopology")
    args = parser.parse_args(argv)
    topology = state_dir = None
    url = args.redis_url
    try:
        if url is None:
            from dbscale.local import LocalTopology

            state_dir = Path(tempfile.mkdtemp(prefix="dbscale-bench-", dir="/tmp"))
            state_dir.chmod(0o755)
            topology = LocalTopology(state_dir)
            topology.up(replicas=0, shards=0, pgbouncer=False)
            url = topology.url("redis")
        parsed = redis.connection.parse_url(url)
        host, port = str(parsed.get("host", "127.0.0.1")), int(parsed.get("port", 6379))
        l1 = l1_rows()
        l2 = l2_rows(url)
        aio = asyncio.run(async_rows(url, host, port))
    finally:
        if topology is not None:
            topology.down(purge=True)
        if state_dir is not None:
            shutil.rmtree(state_dir, ignore_errors=True)
    print(
        table(
            [
                ("L1 hit", l1, "dogpile.cache memory backend hit, decorated"),
                ("L2 hit (sync)", l2, RAW),
                ("L2 hit (async)", aio, "redis.asyncio GET + orjson.loads (raw)"),
            ]
        )
    )
    l1d = dict(l1)
    l2d = dict(l2)
    l1_hit = l1d["dbscale L1 hit, decorated"]
    speedup = l1d["dogpile.cache memory backend hit, decorated"] / l1_hit
    l2_ratio = l2d[DBSCALE_L2] / l2d[RAW]
    print()
    print(f"- L1 hit {l1_hit * 1e6:.2f} µs (target <= 2 µs): {'ok' if l1_hit <= 2e-6 else 'MISSED'}")
    print(f"- L1 hit {speedup:.1f}x faster than dogpile memory (target >= 5x): {'ok' if speedup >= 5 else 'MISSED'}")
    print(
        f"- L2 hit {l2_ratio:.2f}x raw GET + orjson.loads (target <= 1.15x): {'ok' if l2_ratio <= 1.15 else 'MISSED'}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
