"""Fan-out latency: one query over 2 and 3 shard groups through ``cluster.fanout`` vs the same query on one node.

Run by ``benchmarks/sharding.py`` (``--config dbscale.toml`` there needs groups main, shard0, shard1,
shard2; without it a throwaway topology with those groups is started and purged).

The same ``ROWS`` orders live three ways: all in one table on ``main`` (the unsharded alternative,
queried with plain SQLAlchemy through ``cluster.read(group="main")``), split over shard0-shard1,
and split over shard0-shard2. Two queries: the page "latest orders 41-60" (``ORDER BY created_at
DESC, id LIMIT 20 OFFSET 40`` on an index; every shard returns its top 60 and the merge keeps 20)
and an aggregate over every row (COUNT, SUM, AVG; each shard scans its share in parallel). The
paths run interleaved, rotating which goes first; medians per path and ratios to the one-node query.
Sync (threads) and asyncio (tasks).
"""

from __future__ import annotations

import asyncio
import statistics
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from _topology import bench_config
from sqlalchemy import text

from dbscale import AsyncCluster, Cluster
from dbscale.config import load_config
from dbscale.sharding import Aggregate

ROWS = 300_000
PAGE = [("created_at", "desc"), ("id", "asc")]
AGGREGATES = [Aggregate.count("n"), Aggregate.sum("s"), Aggregate.avg("mean")]
PARTIALS = "count(*) AS n, sum(total) AS s, sum(total) AS mean_sum, count(total) AS mean_count"
SCHEMA = "id bigint PRIMARY KEY, created_at timestamptz NOT NULL, total numeric(10, 2) NOT NULL"


def setup(cluster: Cluster) -> None:
    """bench_f1 (all rows) on main; bench_f2 split over shard0-1; bench_f3 split over shard0-2."""
    fill = (
        "INSERT INTO {t} SELECT g, timestamptz '2026-01-01' + g * interval '1 second', (g % 1000) / 10.0 "
        "FROM generate_series(1, {rows}) g WHERE g % {n} = {i}"
    )
    for table, groups in (
        ("bench_f1", ["main"]),
        ("bench_f2", ["shard0", "shard1"]),
        ("bench_f3", ["shard0", "shard1", "shard2"]),
    ):
        for i, group in enumerate(groups):
            with cluster.write(group) as conn:
                conn.execute(text(f"DROP TABLE IF EXISTS {table}"))
                conn.execute(text(f"CREATE TABLE {table} ({SCHEMA})"))
                conn.execute(text(fill.format(t=table, rows=ROWS, n=len(groups), i=i)))
                conn.execute(text(f"CREATE INDEX ON {table} (created_at DESC, id)"))
            with cluster.write(group) as conn:
                conn.execute(text(f"ANALYZE {table}"))


def teardown(cluster: Cluster) -> None:
    for table, groups in (
        ("bench_f1", ["main"]),
        ("bench_f2", ["shard0", "shard1"]),
        ("bench_f3", ["shard0", "shard1", "shard2"]),
    ):
        for group in groups:
            with cluster.write(group) as conn:
                conn.execute(text(f"DROP TABLE IF EXISTS {table}"))


def page_sql(table: str) -> str:
    return f"SELECT id, created_at, total FROM {table}"


def sync_paths(cluster: Cluster) -> dict[str, dict[str, Callable[[], Any]]]:
    def one_node(sql: str) -> Callable[[], Any]:
        def run() -> Any:
            with cluster.read(group="main") as conn:
                return conn.execute(text(sql)).all()

        return run

    def fan(table: str, groups: list[str], **kw: Any) -> Callable[[], Any]:
        stmt = page_sql(table) if "order_by" in kw else f"SELECT {PARTIALS} FROM {table}"
        return lambda: cluster.fanout(stmt, groups=groups, **kw).rows

    page = {"order_by": PAGE, "limit": 20, "offset": 40}
    return {
        "latest 20 (offset 40)": {
            "one node": one_node(f"{page_sql('bench_f1')} ORDER BY created_at DESC, id LIMIT 20 OFFSET 40"),
            "2 shards": fan("bench_f2", ["shard0", "shard1"], **page),
            "3 shards": fan("bench_f3", ["shard0", "shard1", "shard2"], **page),
        },
        "COUNT/SUM/AVG of all rows": {
            "one node": one_node("SELECT count(*), sum(total), avg(total) FROM bench_f1"),
            "2 shards": fan("bench_f2", ["shard0", "shard1"], aggregate=AGGREGATES),
            "3 shards": fan("bench_f3", ["shard0", "shard1", "shard2"], aggregate=AGGREGATES),
        },
    }


def async_paths(cluster: AsyncCluster) -> dict[str, dict[str, Callable[[], Awaitable[Any]]]]:
    def one_node(sql: str) -> Callable[[], Awaitable[Any]]:
        async def run() -> Any:
            async with cluster.read(group="main") as conn:
                return (await conn.execute(text(sql))).all()

        return run

    def fan(table: str, groups: list[str]) -> Callable[[], Awaitable[Any]]:
        async def run() -> Any:
            return (await cluster.fanout(page_sql(table), groups=groups, order_by=PAGE, limit=20, offset=40)).rows

        return run

    return {
        "latest 20 (offset 40)": {
            "one node": one_node(f"{page_sql('bench_f1')} ORDER BY created_at DESC, id LIMIT 20 OFFSET 40"),
            "2 shards": fan("bench_f2", ["shard0", "shard1"]),
            "3 shards": fan("bench_f3", ["shard0", "shard1", "shard2"]),
        }
    }


def interleave_sync(paths: dict[str, Callable[[], Any]], iterations: int) -> dict[str, list[float]]:
    names = list(paths)
    samples: dict[str, list[float]] = {n: [] for n in names}
    for fn in paths.values():
        fn()
    for i in range(iterations):
        for name in names[i % len(names) :] + names[: i % len(names)]:
            t0 = time.perf_counter()
            paths[name]()
            samples[name].append(time.perf_counter() - t0)
    return samples


async def interleave_async(paths: dict[str, Callable[[], Awaitable[Any]]], iterations: int) -> dict[str, list[float]]:
    names = list(paths)
    samples: dict[str, list[float]] = {n: [] for n in names}
    for fn in paths.values():
        await fn()
    for i in range(iterations):
        for name in names[i % len(names) :] + names[: i % len(names)]:
            t0 = time.perf_counter()
            await paths[name]()
            samples[name].append(time.perf_counter() - t0)
    return samples


def report(flavour: str, query: str, samples: dict[str, list[float]]) -> None:
    base = statistics.median(samples["one node"])
    for name, values in samples.items():
        med = statistics.median(values)
        print(f"| {flavour} | {query} | {name} | {med * 1e3:.2f} ms | {med / base:.2f}x |")


def run_fanout(config_path: Path | None, iterations: int) -> None:
    """Print the fan-out table (on ``config_path``'s topology, or a throwaway one with 3 shard groups)."""
    with bench_config(config_path, "fanout", shards=3) as path:
        config = load_config(path, environ={}, sharding={"groups": ["shard0", "shard1", "shard2"]})
        with Cluster(config) as cluster:
            setup(cluster)
            try:
                print(f"{ROWS:,} rows; {iterations} interleaved runs per path; medians\n")
                print("| flavour | query | path | median | vs one node |")
                print("|---|---|---|---:|---:|")
                for query, paths in sync_paths(cluster).items():
                    report("sync", query, interleave_sync(paths, iterations))

                async def run_async() -> None:
                    async with AsyncCluster(config) as acluster:
                        for query, paths in async_paths(acluster).items():
                            report("async", query, await interleave_async(paths, iterations))

                asyncio.run(run_async())
            finally:
                teardown(cluster)
