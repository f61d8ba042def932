"""Lag-aware cache fills (issue 8 item 1): markers make a miss after an invalidation load the write.

Replay is paused on both replicas, so a reader without a token reads the old row there. Process A
(this test) writes and invalidates; process B (a spawned child with its own Cluster, no token) calls
the cached loader. Controls run the same steps with ``lag_aware_fills = false`` and must see the
old value, so the tests can fail.
"""

from __future__ import annotations

import asyncio
import multiprocessing as mp
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from sqlalchemy import text

from dbscale import AsyncCluster, Cluster
from dbscale.local import LocalTopology

from .helpers import wait_replicated

pytestmark = pytest.mark.integration

CTX = mp.get_context("spawn")
REPLICAS = ("main-replica1", "main-replica2")
CALLS = 100


def _overrides(ns: str, markers: bool) -> dict[str, Any]:
    return {"cache": {"namespace": ns, "lag_aware_fills": markers, "marker_ttl": 60}}


def _sync_loader(cluster: Cluster, table: str) -> Any:
    @cluster.cache.cached(ttl=300, key="row:{k}", tags=["row:{k}"])
    def load(k: int) -> dict[str, Any]:
        with cluster.read() as conn:  # a plain read: the loader knows nothing about markers
            return {
                "v": conn.execute(text(f"SELECT v FROM {table} WHERE k = :k"), {"k": k}).scalar_one(),
                "node": conn.node,
            }

    return load


def _async_loader(cluster: AsyncCluster, table: str) -> Any:
    @cluster.cache.cached(ttl=300, key="row:{k}", tags=["row:{k}"])
    async def load(k: int) -> dict[str, Any]:
        async with cluster.read() as conn:
            result = await conn.execute(text(f"SELECT v FROM {table} WHERE k = :k"), {"k": k})
            return {"v": result.scalar_one(), "node": conn.node}

    return load


# -- process B (module level, so spawn can import it) --------------------------------------------------
def _reader(
    config: str, ns: str, table: str, flavour: str, markers: bool, token: str | None, keys: list[int], out: Any
) -> None:
    """Calls the cached loader CALLS times per key (under ``token`` if given); reports what it saw."""
    if flavour == "sync":
        with Cluster.from_config(config, **_overrides(ns, markers)) as cluster:
            cluster.start()
            load = _sync_loader(cluster, table)
            with cluster.causal_scope(token):
                seen = {k: [load(k) for _ in range(CALLS)] for k in keys}
            cached = {k: cluster.cache.get(f"row:{k}", l1=False) for k in keys}
            loads = cluster.metrics.value("cache_marker_loads_total")
    else:

        async def main() -> tuple[Any, Any, Any]:
            async with AsyncCluster.from_config(config, **_overrides(ns, markers)) as cluster:
                await cluster.start()
                load = _async_loader(cluster, table)
                with cluster.causal_scope(token):
                    seen = {k: [await load(k) for _ in range(CALLS)] for k in keys}
                cached = {k: await cluster.cache.get(f"row:{k}", l1=False) for k in keys}
                return seen, cached, cluster.metrics.value("cache_marker_loads_total")

        seen, cached, loads = asyncio.run(main())
    out.put(
        {
            "values": {k: sorted({r["v"] for r in rows}) for k, rows in seen.items()},
            "nodes": {k: sorted({r["node"] for r in rows}) for k, rows in seen.items()},
            "cached": {k: None if c is None else c["v"] for k, c in cached.items()},
            "marker_loads": loads,
        }
    )


def run_b(
    config: Path,
    ns: str,
    table: str,
    flavour: str,
    *,
    markers: bool = True,
    token: str | None = None,
    keys: tuple[int, ...] = (1,),
) -> dict[str, Any]:
    out = CTX.Queue()
    proc = CTX.Process(target=_reader, args=(str(config), ns, table, flavour, markers, token, list(keys), out))
    proc.start()
    try:
        result: dict[str, Any] = out.get(timeout=120)
    finally:
        proc.join(30)
    assert proc.exitcode == 0
    return result


# -- process A -----------------------------------------------------------------------------------------
@pytest.fixture
def table(topology_config_path: Path) -> Iterator[str]:
    name = f"lag_{uuid.uuid4().hex[:8]}"
    with Cluster.from_config(topology_config_path) as cluster:
        with cluster.write() as conn:
            conn.execute(text(f"CREATE TABLE {name} (k int PRIMARY KEY, v int NOT NULL)"))
            conn.execute(text(f"INSERT INTO {name} SELECT g, g * 10 FROM generate_series(1, 10) g"))
        wait_replicated(cluster)
    yield name
    with Cluster.from_config(topology_config_path) as cluster, cluster.write() as conn:
        conn.execute(text(f"DROP TABLE IF EXISTS {name}"))


def write_and_invalidate(config: Path, ns: str, table: str, flavour: str, markers: bool, *, prime: bool = True) -> str:
    """Process A: (prime the cache,) pause replay, UPDATE k=1 to -1, invalidate; returns A's token."""

    def pause() -> None:
        for replica in REPLICAS:
            LOCAL.pause_replay(replica)

    if flavour == "sync":
        with Cluster.from_config(config, **_overrides(ns, markers)) as a:
            load = _sync_loader(a, table)
            if prime:
                assert load(1)["v"] == 10
            pause()
            with a.write() as conn:
                conn.execute(text(f"UPDATE {table} SET v = -1 WHERE k = 1"))
            assert load.invalidate(1)
            assert a.metrics.value("cache_markers_total") == (1 if markers else 0)
            token = a.causal_token()
    else:

        async def main() -> str | None:
            async with AsyncCluster.from_config(config, **_overrides(ns, markers)) as a:
                load = _async_loader(a, table)
                if prime:
                    assert (await load(1))["v"] == 10
                pause()
                async with a.write() as conn:
                    await conn.execute(text(f"UPDATE {table} SET v = -1 WHERE k = 1"))
                assert await load.invalidate(1)
                assert a.metrics.value("cache_markers_total") == (1 if markers else 0)
                return a.causal_token()

        token = asyncio.run(main())
    assert token is not None
    return token


LOCAL: LocalTopology


@pytest.fixture(autouse=True)
def _local(restore_topology: LocalTopology) -> None:
    global LOCAL
    LOCAL = restore_topology


def resume(config: Path) -> None:
    for replica in REPLICAS:
        LOCAL.resume_replay(replica)
    with Cluster.from_config(config) as cluster:
        wait_replicated(cluster, 30)


@pytest.mark.parametrize("flavour", ["sync", "async"])
def test_fill_after_invalidation_reads_the_write_in_another_process(
    topology_config_path: Path, table: str, flavour: str
) -> None:
    ns = f"lag{uuid.uuid4().hex[:10]}"
    token = write_and_invalidate(topology_config_path, ns, table, flavour, markers=True)
    b = run_b(topology_config_path, ns, table, flavour)
    assert b["values"][1] == [-1], b  # never the old row, in 100 calls
    assert b["cached"][1] == -1
    assert b["nodes"][1] == ["main-primary"]  # no replica has replayed the write
    assert b["marker_loads"] == 1
    # replay resumes: the marker's token is reached, so fills go to the replicas again
    resume(topology_config_path)
    with Cluster.from_config(topology_config_path, **_overrides(ns, True)) as a, a.causal_scope(token):
        assert a.cache.invalidate("row:1")
    b = run_b(topology_config_path, ns, table, flavour)
    assert b["values"][1] == [-1] and b["cached"][1] == -1
    assert b["nodes"][1][0] in REPLICAS, b


@pytest.mark.parametrize("flavour", ["sync", "async"])
def test_control_without_markers_caches_the_old_row(topology_config_path: Path, table: str, flavour: str) -> None:
    ns = f"lag{uuid.uuid4().hex[:10]}"
    write_and_invalidate(topology_config_path, ns, table, flavour, markers=False)
    b = run_b(topology_config_path, ns, table, flavour, markers=False)
    assert b["values"][1] == [10], b  # the bug: 100 calls of the old row...
    assert b["cached"][1] == 10  # ...cached for its whole TTL
    assert b["nodes"][1][0] in REPLICAS
    assert b["marker_loads"] == 0


def test_request_scope_makes_a_cached_loader_in_another_process_read_the_write(
    topology_config_path: Path, table: str
) -> None:
    ns = f"lag{uuid.uuid4().hex[:10]}"
    with Cluster.from_config(topology_config_path, **_overrides(ns, False)) as a:
        for replica in REPLICAS:
            LOCAL.pause_replay(replica)
        with a.write() as conn:
            conn.execute(text(f"UPDATE {table} SET v = -2 WHERE k IN (2, 3)"))
        token = a.causal_token()
    # markers off and no invalidation: only the carried token can help (control first: a paused
    # replica serves reads only while its lag stays under max_lag)
    plain = run_b(topology_config_path, ns, table, "sync", markers=False, keys=(3,))
    assert plain["values"][3] == [30] and plain["nodes"][3][0] in REPLICAS
    scoped = run_b(topology_config_path, ns, table, "sync", markers=False, token=token, keys=(2,))
    assert scoped["values"][2] == [-2] and scoped["nodes"][2] == ["main-primary"]


def test_outside_writer_marker_uses_the_primary_position(topology_config_path: Path, table: str) -> None:
    ns = f"lag{uuid.uuid4().hex[:10]}"
    with Cluster.from_config(topology_config_path, **_overrides(ns, True)) as c:
        load = _sync_loader(c, table)
        assert [load(k)["v"] for k in (4, 5, 6)] == [40, 50, 60]  # cached from a replica
        for replica in REPLICAS:
            LOCAL.pause_replay(replica)
        with psycopg.connect(str(c.node("main-primary").url), autocommit=True) as raw:  # another service writes
            raw.execute(f"UPDATE {table} SET v = -v WHERE k IN (4, 5, 6, 7)")
        assert c.causal_token() is None
        assert c.cache.invalidate("row:4")
        assert c.cache.invalidate_tags("row:5", "row:7")  # row:7 is not cached: its tag marker must still count
        assert c.cache.invalidate_pattern("row:6")
        assert c.metrics.value("cache_markers_total") == 3
    b = run_b(topology_config_path, ns, table, "sync", keys=(4, 5, 6, 7))
    assert b["values"] == {4: [-40], 5: [-50], 6: [-60], 7: [-70]}, b
    assert b["cached"] == {4: -40, 5: -50, 6: -60, 7: -70}
    assert b["marker_loads"] == 4


def test_marker_ttl_defaults_to_max_lag_plus_margin(topology_config_path: Path, table: str) -> None:
    ns = f"lag{uuid.uuid4().hex[:10]}"
    with Cluster.from_config(topology_config_path, cache={"namespace": ns}) as c:
        max_lag = max(g.max_lag for g in c.config.groups.values())
        with c.write() as conn:
            conn.execute(text(f"UPDATE {table} SET v = v WHERE k = 8"))
        assert c.cache.invalidate("row:8")
        l2 = c.cache.core.sync_l2()
        assert l2 is not None
        marker_key = c.cache.core.keys.marker("row:8")
        assert l2.admin.get(marker_key) == c.causal_token().encode()  # type: ignore[union-attr]
        pttl = l2.admin.pttl(marker_key)
        assert (max_lag + 5) * 1000 - 2000 < pttl <= (max_lag + 5) * 1000


def test_marker_scripts_merge_tokens_and_the_lease_returns_them(topology_config_path: Path) -> None:
    from dbscale.cache import Cache
    from dbscale.config import load_config

    config = load_config(topology_config_path, environ={}).cache.model_copy(
        update={"namespace": f"lag{uuid.uuid4().hex[:10]}"}
    )
    cache = Cache(config)  # no cluster: no causality provider, so no markers of its own
    try:
        assert not cache.core.markers
        l2 = cache.core.sync_l2()
        assert l2 is not None
        cache.invalidate("plain")
        assert l2.admin.exists(cache.core.keys.marker("plain")) == 0
        l2.invalidate(["k"], 0, "main/0/10", 60_000)
        l2.invalidate(["k"], 0, "shard0/0/20", 60_000)
        l2.invalidate(["k"], 0, "shard0/0/20", 60_000)  # the same token again is not appended
        assert l2.admin.get(cache.core.keys.marker("k")) == b"main/0/10,shard0/0/20"
        l2.invalidate_tags(["t"], 0, "main/0/30", 60_000)
        l2.invalidate_pattern("nothing:*", 0, "main/0/40", 60_000)
        reply = l2.lease("k", ["t"], 0, "a" * 32, 1000, 60, False, True)
        assert reply.marker == "main/0/10,shard0/0/20,main/0/40,main/0/30"
        other = l2.lease("other", [], 0, "b" * 32, 1000, 60, False, False)
        assert other.marker is None  # markers off: not even the namespace marker is read
    finally:
        cache.close()


def test_primary_unreachable_invalidates_without_a_marker(topology_config_path: Path) -> None:
    from dbscale.config import load_config

    redis_url = str(load_config(topology_config_path, environ={}).cache.redis_url)
    dead = "postgresql://app:secret@127.0.0.1:1/app"  # nothing listens on port 1
    settings = {"groups": {"main": {"primary": dead}}, "cache": {"redis_url": redis_url, "namespace": "lagdead"}}
    with Cluster(**settings) as c:
        assert c.cache.core.markers
        assert c.cache.invalidate("k")  # fail open: the invalidation itself runs
        assert c.metrics.value("cache_marker_failures_total") == 1
        assert c.metrics.value("cache_markers_total") == 0
        l2 = c.cache.core.sync_l2()
        assert l2 is not None and l2.admin.exists(c.cache.core.keys.marker("k")) == 0
