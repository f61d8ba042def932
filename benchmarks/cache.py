"""Cache benchmark: dbscale's L1/L2 hits side by side with what a user would pick instead.

    python benchmarks/cache.py                      # starts a throwaway LocalTopology for its Redis
    python benchmarks/cache.py --redis-url redis://127.0.0.1:6390/0

One run, medians of several timed batches, printed as a markdown table with ratios. Targets (issue 4):
L1 hit <= 2 µs and >= 5x faster than dogpile.cache's memory backend; L2 hit (l1=False) <= 1.15x a raw
redis-py GET + orjson.loads of the same value; async L2 hit compared with cashews and aiocache.
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
from dbscale.config import CacheConfig

VALUE = {
    "id": 42,
    "name": "Ada Lovelace",
    "email": "ada@example.com",
    "active": True,
    "score": 97.5,
    "tags": ["a", "b"],
}


def bench(fn: Callable[[], Any], *, number: int, repeat: int = 7) -> float:
    """Median seconds per call over ``repeat`` batches of ``number`` calls."""
    fn()
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        for _ in range(number):
            fn()
        times.append((time.perf_counter() - t0) / number)
    return statistics.median(times)


def interleaved(cases: dict[str, Callable[[], Any]], *, number: int, repeat: int) -> list[tuple[str, float]]:
    """Like :func:`bench` for several cases, alternating batches so machine noise hits them alike."""
    for fn in cases.values():
        fn()
    times: dict[str, list[float]] = {name: [] for name in cases}
    for _ in range(repeat):
        for name, fn in cases.items():
            t0 = time.perf_counter()
            for _ in range(number):
                fn()
            times[name].append((time.perf_counter() - t0) / number)
    return [(name, statistics.median(ts)) for name, ts in times.items()]


async def abench(fn: Callable[[], Awaitable[Any]], *, number: int, repeat: int = 7) -> float:
    """Median seconds per awaited call."""
    await fn()
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        for _ in range(number):
            await fn()
        times.append((time.perf_counter() - t0) / number)
    return statistics.median(times)


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
    rows = [
        ("dict.get (floor)", bench(lambda: d.get("user:42"), number=200_000)),
        ("dbscale L1 hit, decorated", bench(lambda: dbscale_user(42), number=200_000)),
        ("dogpile.cache memory backend hit, decorated", bench(lambda: dogpile_user(42), number=100_000)),
    ]
    cache.close()
    return rows


def l2_rows(url: str) -> list[tuple[str, float]]:
    cache = Cache(CacheConfig(redis_url=url, namespace=f"bench{uuid.uuid4().hex[:6]}", redis_timeout=1.0))

    @cache.cached(ttl=300, key="user:{user_id}", l1=False)
    def dbscale_user(user_id: int) -> dict[str, Any]:
        return VALUE

    dbscale_user(42)
    raw = redis.Redis.from_url(url)
    raw.set("bench:raw:user:42", orjson.dumps(VALUE))
    assert dbscale_user(42) == orjson.loads(raw.get("bench:raw:user:42"))  # type: ignore[arg-type]
    rows = interleaved(
        {
            "redis-py GET + orjson.loads (raw)": lambda: orjson.loads(raw.get("bench:raw:user:42")),  # type: ignore[arg-type]
            "dbscale L2 hit (l1=False), decorated": lambda: dbscale_user(42),
        },
        number=2_000,
        repeat=15,
    )
    raw.delete("bench:raw:user:42")
    raw.close()
    cache.close()
    return rows


async def async_rows(url: str, host: str, port: int) -> list[tuple[str, float]]:
    from aiocache import Cache as AioCache
    from aiocache import cached as aio_cached
    from aiocache.serializers import JsonSerializer
    from cashews import cache as cashews_cache

    cache = Cache(CacheConfig(redis_url=url, namespace=f"bench{uuid.uuid4().hex[:6]}", redis_timeout=1.0)).aio

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
    await raw.set("bench:raw:user:42", orjson.dumps(VALUE))

    async def raw_get() -> Any:
        return orjson.loads(await raw.get("bench:raw:user:42"))  # type: ignore[arg-type]

    rows = [
        ("redis.asyncio GET + orjson.loads (raw)", await abench(raw_get, number=3_000)),
        ("dbscale async L2 hit (l1=False), decorated", await abench(lambda: dbscale_user(42), number=3_000)),
        ("cashews redis hit, decorated", await abench(lambda: cashews_user(42), number=3_000)),
        ("aiocache redis hit, decorated", await abench(lambda: aiocache_user(42), number=3_000)),
    ]
    await raw.delete("bench:raw:user:42")
    await raw.aclose()
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
                ("L2 hit (sync)", l2, "redis-py GET + orjson.loads (raw)"),
                ("L2 hit (async)", aio, "redis.asyncio GET + orjson.loads (raw)"),
            ]
        )
    )
    l1d = dict(l1)
    l2d = dict(l2)
    l1_hit = l1d["dbscale L1 hit, decorated"]
    speedup = l1d["dogpile.cache memory backend hit, decorated"] / l1_hit
    l2_ratio = l2d["dbscale L2 hit (l1=False), decorated"] / l2d["redis-py GET + orjson.loads (raw)"]
    print()
    print(f"- L1 hit {l1_hit * 1e6:.2f} µs (target <= 2 µs): {'ok' if l1_hit <= 2e-6 else 'MISSED'}")
    print(f"- L1 hit {speedup:.1f}x faster than dogpile memory (target >= 5x): {'ok' if speedup >= 5 else 'MISSED'}")
    print(
        f"- L2 hit {l2_ratio:.2f}x raw GET + orjson.loads (target <= 1.15x): {'ok' if l2_ratio <= 1.15 else 'MISSED'}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
