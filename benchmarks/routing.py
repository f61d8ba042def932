"""The routed hot path against the same work done by hand with raw psycopg (the user's alternative).

Reads: a primary-key select through ``cluster.read()`` vs raw psycopg on the same replica
(autocommit, prepared: one round trip, the floor). Writes: a one-row UPDATE through
``cluster.write()`` (which also records the causal token) vs a raw psycopg transaction on the same
primary (BEGIN, UPDATE, COMMIT; prepared). Both directly to the servers. The routed path runs
``text()`` statements on the pooled psycopg connection (``dbscale.routing.fast``), so its rows are
SQLAlchemy ``Row`` objects all the same. A default SQLAlchemy engine (``pool_pre_ping=True``, a
transaction per ``connect()``) is measured alongside, for reference, and a bare engine doing the
routed path's round trips (autocommit read; BEGIN, UPDATE, COMMIT), which shows what SQLAlchemy
itself costs over raw psycopg. Sync
and asyncio. The paths of a comparison run interleaved, rotating which goes first, so drift in the
machine affects each side alike; medians and p90 per path, ratios of medians against raw psycopg.
Each operation is measured twice: the A/B pair alone (raw psycopg and the routed path, the
targets' comparison) and then all paths interleaved (the references; the routed path's ratio in
that mix is printed too, and is higher: the other paths' code runs between its calls).

    python benchmarks/routing.py                 # starts a throwaway LocalTopology (primary + 1 replica)
    python benchmarks/routing.py --config dbscale.toml --iterations 20000
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import psycopg
from _topology import bench_config
from sqlalchemy import create_engine, text
from sqlalchemy.ext.asyncio import create_async_engine

from dbscale import AsyncCluster, Cluster
from dbscale.config import libpq_conninfo, load_config, sqlalchemy_url
from dbscale.routing.aio import COMMIT_SQL

ROWS = 10_000
SELECT = "SELECT payload FROM bench_routing WHERE id = %s"
UPDATE = "UPDATE bench_routing SET n = n + 1 WHERE id = %s"
SA_SELECT = text("SELECT payload FROM bench_routing WHERE id = :id")
SA_UPDATE = text("UPDATE bench_routing SET n = n + 1 WHERE id = :id")
TARGETS = {"read": 1.3, "write": 1.2}
# The same round trips as the routed path through a bare SQLAlchemy engine: what any SQLAlchemy-based path pays.
FLOOR_READ = "SQLAlchemy engine, autocommit, no ping"
FLOOR_WRITE = "SQLAlchemy engine, no ping"
# The causal token's cost on its own: raw psycopg sending the routed path's COMMIT message, and the
# routed write with the token turned off (read_your_writes = "off"), which makes raw psycopg's round trips.
RAW_TOKEN = "raw psycopg, COMMIT + token message"
NO_TOKEN = 'cluster.write(), read_your_writes = "off"'

Row = tuple[str, str, str, float, float, float]  # flavour, operation, path, median µs, p90 µs, ratio


def _summarise(flavour: str, op: str, samples: dict[str, list[float]]) -> list[Row]:
    names = list(samples)
    base = statistics.median(samples[names[0]])
    rows = []
    for name in names:
        ordered = sorted(samples[name])
        med = statistics.median(ordered)
        rows.append((flavour, op, name, med * 1e6, ordered[int(len(ordered) * 0.9)] * 1e6, med / base))
    return rows


def interleave(paths: dict[str, Callable[[int], object]], iterations: int) -> dict[str, list[float]]:
    """Run each path ``iterations`` times, one call of each per round, rotating the order."""
    samples: dict[str, list[float]] = {name: [] for name in paths}
    items = list(paths.items())
    for i in range(iterations):
        shift = i % len(items)
        for name, fn in items[shift:] + items[:shift]:
            started = time.perf_counter()
            fn(i)
            samples[name].append(time.perf_counter() - started)
    return samples


async def ainterleave(paths: dict[str, Callable[[int], Awaitable[object]]], iterations: int) -> dict[str, list[float]]:
    """:func:`interleave` for coroutines."""
    samples: dict[str, list[float]] = {name: [] for name in paths}
    items = list(paths.items())
    for i in range(iterations):
        shift = i % len(items)
        for name, fn in items[shift:] + items[:shift]:
            started = time.perf_counter()
            await fn(i)
            samples[name].append(time.perf_counter() - started)
    return samples


def comparisons(op: str, paths: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """The A/B pair alone (the target's comparison: raw psycopg and the routed path, nothing between
    them), then every path interleaved (the references, each against raw psycopg in that run)."""
    routed = f"cluster.{op}()"
    return [(op, {"raw psycopg": paths["raw psycopg"], routed: paths[routed]}), (f"{op}, all paths", paths)]


def key(i: int) -> int:
    return i * 7919 % ROWS + 1


def no_token(overrides: dict[str, Any]) -> dict[str, Any]:
    return {"groups": {"main": {**overrides["groups"]["main"], "read_your_writes": "off"}}}


def run_sync(config: Path, overrides: dict[str, Any], primary: str, replica: str, iterations: int) -> list[Row]:
    cluster = Cluster.from_config(config, **overrides)
    untokened = Cluster.from_config(config, **no_token(overrides))
    raw_read = psycopg.connect(libpq_conninfo(replica), autocommit=True)
    raw_write = psycopg.connect(libpq_conninfo(primary))
    raw_token = psycopg.connect(libpq_conninfo(primary))
    sa_read = create_engine(sqlalchemy_url(replica), pool_pre_ping=True)
    sa_write = create_engine(sqlalchemy_url(primary), pool_pre_ping=True)
    sa_read_floor = create_engine(sqlalchemy_url(replica), isolation_level="AUTOCOMMIT")
    sa_write_floor = create_engine(sqlalchemy_url(primary))
    try:
        cluster.start()

        def raw_select(i: int) -> object:
            return raw_read.execute(SELECT, (key(i),), prepare=True).fetchone()

        def routed_select(i: int) -> object:
            with cluster.read() as conn:
                return conn.execute(SA_SELECT, {"id": key(i)}).scalar_one()

        def sa_select(i: int) -> object:
            with sa_read.connect() as conn:
                return conn.execute(SA_SELECT, {"id": key(i)}).scalar_one()

        def sa_select_floor(i: int) -> object:
            with sa_read_floor.connect() as conn:
                return conn.execute(SA_SELECT, {"id": key(i)}).scalar_one()

        def sa_update_floor(i: int) -> object:
            with sa_write_floor.begin() as conn:
                return conn.execute(SA_UPDATE, {"id": key(i)})

        def raw_update(i: int) -> object:
            raw_write.execute(UPDATE, (key(i),), prepare=True)  # psycopg sends BEGIN first
            raw_write.commit()
            return None

        def routed_update(i: int) -> object:
            with cluster.write() as conn:
                return conn.execute(SA_UPDATE, {"id": key(i)})

        def raw_update_token(i: int) -> object:
            raw_token.execute(UPDATE, (key(i),), prepare=True)
            cur = raw_token.cursor()
            cur.execute(COMMIT_SQL, prepare=False)
            cur.nextset()
            cur.nextset()
            return cur.fetchone()

        def routed_update_no_token(i: int) -> object:
            with untokened.write() as conn:
                return conn.execute(SA_UPDATE, {"id": key(i)})

        def sa_update(i: int) -> object:
            with sa_write.begin() as conn:
                return conn.execute(SA_UPDATE, {"id": key(i)})

        reads = {
            "raw psycopg": raw_select,
            "cluster.read()": routed_select,
            "SQLAlchemy engine, defaults": sa_select,
            FLOOR_READ: sa_select_floor,
        }
        writes = {
            "raw psycopg": raw_update,
            "cluster.write()": routed_update,
            RAW_TOKEN: raw_update_token,
            NO_TOKEN: routed_update_no_token,
            "SQLAlchemy engine, defaults": sa_update,
            FLOOR_WRITE: sa_update_floor,
        }
        rows: list[Row] = []
        for op, paths in (("write", writes), ("read", reads)):
            interleave(paths, min(2000, iterations))  # warm pools, statement caches, buffers
            for label, run in comparisons(op, paths):
                cluster.reset_causal()  # reads are plain reads, not read-your-writes checks
                rows += _summarise("sync", label, interleave(run, iterations))
        served = cluster.metrics.value("reads_total", group="main", node="main-replica1")
        assert served >= iterations, "the router did not send the reads to the replica"
        return rows
    finally:
        cluster.close()
        untokened.close()
        raw_read.close()
        raw_write.close()
        raw_token.close()
        sa_read.dispose()
        sa_write.dispose()
        sa_read_floor.dispose()
        sa_write_floor.dispose()


async def run_async(config: Path, overrides: dict[str, Any], primary: str, replica: str, iterations: int) -> list[Row]:
    acl = AsyncCluster.from_config(config, **overrides)
    untokened = AsyncCluster.from_config(config, **no_token(overrides))
    raw_read = await psycopg.AsyncConnection.connect(libpq_conninfo(replica), autocommit=True)
    raw_write = await psycopg.AsyncConnection.connect(libpq_conninfo(primary))
    raw_token = await psycopg.AsyncConnection.connect(libpq_conninfo(primary))
    sa_read = create_async_engine(sqlalchemy_url(replica, async_=True), pool_pre_ping=True)
    sa_write = create_async_engine(sqlalchemy_url(primary, async_=True), pool_pre_ping=True)
    sa_read_floor = create_async_engine(sqlalchemy_url(replica, async_=True), isolation_level="AUTOCOMMIT")
    sa_write_floor = create_async_engine(sqlalchemy_url(primary, async_=True))
    try:
        await acl.start()

        async def raw_select(i: int) -> object:
            return await (await raw_read.execute(SELECT, (key(i),), prepare=True)).fetchone()

        async def routed_select(i: int) -> object:
            async with acl.read() as conn:
                return (await conn.execute(SA_SELECT, {"id": key(i)})).scalar_one()

        async def sa_select(i: int) -> object:
            async with sa_read.connect() as conn:
                return (await conn.execute(SA_SELECT, {"id": key(i)})).scalar_one()

        async def sa_select_floor(i: int) -> object:
            async with sa_read_floor.connect() as conn:
                return (await conn.execute(SA_SELECT, {"id": key(i)})).scalar_one()

        async def sa_update_floor(i: int) -> object:
            async with sa_write_floor.begin() as conn:
                return await conn.execute(SA_UPDATE, {"id": key(i)})

        async def raw_update(i: int) -> object:
            await raw_write.execute(UPDATE, (key(i),), prepare=True)
            await raw_write.commit()
            return None

        async def routed_update(i: int) -> object:
            async with acl.write() as conn:
                return await conn.execute(SA_UPDATE, {"id": key(i)})

        async def raw_update_token(i: int) -> object:
            await raw_token.execute(UPDATE, (key(i),), prepare=True)
            cur = raw_token.cursor()
            await cur.execute(COMMIT_SQL, prepare=False)
            cur.nextset()
            cur.nextset()
            return await cur.fetchone()

        async def routed_update_no_token(i: int) -> object:
            async with untokened.write() as conn:
                return await conn.execute(SA_UPDATE, {"id": key(i)})

        async def sa_update(i: int) -> object:
            async with sa_write.begin() as conn:
                return await conn.execute(SA_UPDATE, {"id": key(i)})

        reads = {
            "raw psycopg": raw_select,
            "cluster.read()": routed_select,
            "SQLAlchemy engine, defaults": sa_select,
            FLOOR_READ: sa_select_floor,
        }
        writes = {
            "raw psycopg": raw_update,
            "cluster.write()": routed_update,
            RAW_TOKEN: raw_update_token,
            NO_TOKEN: routed_update_no_token,
            "SQLAlchemy engine, defaults": sa_update,
            FLOOR_WRITE: sa_update_floor,
        }
        rows: list[Row] = []
        for op, paths in (("write", writes), ("read", reads)):
            await ainterleave(paths, min(2000, iterations))
            for label, run in comparisons(op, paths):
                acl.reset_causal()
                rows += _summarise("async", label, await ainterleave(run, iterations))
        return rows
    finally:
        await acl.close()
        await untokened.close()
        await raw_read.close()
        await raw_write.close()
        await raw_token.close()
        await sa_read.dispose()
        await sa_write.dispose()
        await sa_read_floor.dispose()
        await sa_write_floor.dispose()


def run(config_path: Path, iterations: int) -> list[Row]:
    main = load_config(config_path).groups["main"]
    if not main.replicas:
        raise SystemExit("the benchmark needs a group 'main' with at least one replica")
    primary, replica = str(main.primary), str(main.replicas[0])
    # One replica and no PgBouncer, so the routed and the raw paths reach the same servers directly.
    overrides = {"groups": {"main": {"replicas": [replica], "weights": None, "pgbouncer": None}}}
    with Cluster.from_config(config_path, **overrides) as cluster:
        with cluster.write() as conn:
            conn.execute(text("DROP TABLE IF EXISTS bench_routing"))
            conn.execute(text("CREATE TABLE bench_routing (id int PRIMARY KEY, payload text NOT NULL, n int NOT NULL)"))
            conn.execute(
                text("INSERT INTO bench_routing SELECT g, md5(g::text), 0 FROM generate_series(1, :n) g"), {"n": ROWS}
            )
        cluster.start()
        while True:  # until the replica has the table and the monitor's view shows it
            cluster.refresh()
            if cluster.router().state.views["main-replica1"].lag_bytes == 0:
                break
            time.sleep(0.05)
    try:
        rows = run_sync(config_path, overrides, primary, replica, iterations)
        rows += asyncio.run(run_async(config_path, overrides, primary, replica, iterations))
        return rows
    finally:
        with Cluster.from_config(config_path, **overrides) as cluster, cluster.write() as conn:
            conn.execute(text("DROP TABLE IF EXISTS bench_routing"))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, help="dbscale.toml of a running topology (default: start one)")
    parser.add_argument("--iterations", type=int, default=5_000)
    args = parser.parse_args(argv)
    with bench_config(args.config, "routing", replicas=1) as config:
        rows = run(config, args.iterations)
    print(f"Routed hot path vs raw psycopg on the same server, {args.iterations} interleaved iterations per path\n")
    print("| flavour | operation | path | median µs | p90 µs | ratio vs raw psycopg |")
    print("|---|---|---|---:|---:|---:|")
    for flavour, op, name, med, p90, ratio in rows:
        print(f"| {flavour} | {op} | {name} | {med:.1f} | {p90:.1f} | {ratio:.2f} |")
    missed = []
    for flavour, op, name, _, _, ratio in rows:
        if op in TARGETS and name in ("cluster.read()", "cluster.write()") and ratio > TARGETS[op]:
            missed.append(f"{flavour} {name} {ratio:.2f} > {TARGETS[op]}")
    by = {(flavour, name): med for flavour, op, name, med, _, _ in rows if op == "write, all paths"}
    for flavour in ("sync", "async"):
        print(
            f"{flavour}: cluster.write() / raw psycopg with the same token message = "
            f"{by[flavour, 'cluster.write()'] / by[flavour, RAW_TOKEN]:.2f}; "
            f"token off / raw psycopg = {by[flavour, NO_TOKEN] / by[flavour, 'raw psycopg']:.2f}"
        )
    targets = ", ".join(f"{op} <= {limit}x" for op, limit in TARGETS.items())
    print(f"\ntargets: {targets} — {'met' if not missed else 'NOT met: ' + '; '.join(missed)}")
    return 0 if not missed else 1


if __name__ == "__main__":
    sys.exit(main())
