"""``cluster.cache``: the decorator through Cluster and AsyncCluster, metrics in the cluster registry."""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path

import pytest

from dbscale import AsyncCluster, Cluster

pytestmark = pytest.mark.integration


def test_cluster_cache_decorates_sync_and_async(topology_config_path: Path) -> None:
    cluster = Cluster.from_config(topology_config_path, cache={"namespace": f"t{uuid.uuid4().hex[:12]}"})
    calls: list[str] = []

    @cluster.cache.cached(ttl=300, key="user:{user_id}", tags=["user:{user_id}"])
    def get_user(user_id: int) -> dict[str, int] | None:
        calls.append("sync")
        return {"id": user_id}

    @cluster.cache.cached(ttl=300, key="auser:{user_id}", tags=["user:{user_id}"])
    async def aget_user(user_id: int) -> dict[str, int] | None:
        calls.append("async")
        return {"id": user_id}

    assert get_user(42) == get_user(user_id=42) == {"id": 42}
    assert asyncio.run(aget_user(42)) == {"id": 42}
    assert asyncio.run(aget_user(42)) == {"id": 42}
    assert calls == ["sync", "async"]
    assert cluster.cache.invalidate_tags("user:42")
    get_user(42)
    asyncio.run(aget_user(42))
    assert calls == ["sync", "async", "sync", "async"]
    assert cluster.metrics.value("cache_fills_total") == 4
    assert cluster.cache is cluster.cache
    cluster.close()
    with pytest.raises(RuntimeError, match="closed"):
        _ = cluster.cache


def test_asyncio_run_per_call_leaves_no_redis_connection_to_the_garbage_collector(topology_config_path: Path) -> None:
    """A blocking program calling an async cached function with ``asyncio.run()`` per request: each run's
    event loop gets its own Redis client, closed as that loop ends (it was left to the GC: ResourceWarning
    "unclosed Connection" / "unclosed transport" for every run)."""
    import gc
    import warnings

    cluster = Cluster.from_config(topology_config_path, cache={"namespace": f"t{uuid.uuid4().hex[:12]}"})

    @cluster.cache.cached(ttl=300, key="r:{n}")
    async def value(n: int) -> int:
        return n

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ResourceWarning)
        for n in range(5):
            assert asyncio.run(value(n % 2)) == n % 2
        held = cluster.cache.core._clients  # the per-loop clients: none left holding an ended loop
        per_loop = [holder for holder in held.values() if hasattr(holder, "_guards")]
        assert [(len(h._values), len(h._guards)) for h in per_loop] == [(0, 0)]
        cluster.close()
        gc.collect()
    unclosed = [str(w.message) for w in caught if issubclass(w.category, ResourceWarning)]
    assert unclosed == []


def test_async_cluster_cache(topology_config_path: Path) -> None:
    async def main() -> None:
        cluster = AsyncCluster.from_config(topology_config_path, cache={"namespace": f"t{uuid.uuid4().hex[:12]}"})
        calls: list[int] = []

        @cluster.cache.cached(ttl=300, key="n:{n}")
        async def square(n: int) -> int:
            calls.append(n)
            return n * n

        assert await square(3) == 9 and await square(n=3) == 9 and calls == [3]
        assert await square.invalidate(3)
        assert await cluster.cache.get("n:3") is None
        assert await cluster.cache.set("n:3", 10) and await square(3) == 10
        assert cluster.metrics.value("cache_hits_total", tier="l2") >= 1
        await cluster.close()

    asyncio.run(main())


def test_async_invalidation_reads_the_primaries_positions_and_returns_their_connections(
    topology_config_path: Path,
) -> None:
    """The marker of an AsyncCluster's invalidation is read on each group's primary, and each connection
    that read it goes back to its pool: none is left checked out for the garbage collector."""

    async def main() -> None:
        async with AsyncCluster.from_config(
            topology_config_path, cache={"namespace": f"t{uuid.uuid4().hex[:12]}"}
        ) as cluster:
            cluster.reset_causal()
            for _ in range(3):
                assert await cluster.cache.invalidate("n:1")
            engines = list(cluster._engines.values())
            assert engines  # the primaries the positions were read on
            for engine in engines:
                assert engine.sync_engine.pool.checkedout() == 0
            assert cluster.metrics.value("cache_marker_failures_total") == 0
            assert cluster.metrics.value("cache_markers_total") == 3

    asyncio.run(main())
