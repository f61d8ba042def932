"""Write paths: write-behind vs a direct ``cluster.write()`` per change vs write-through, measured.

The same changes (upserts of ``--changes`` rows over ``--keys`` keys) on each path, first from one
blocking caller (a latency: each call waits for the one before; not what "throughput" means for a
server), then from 16 concurrent callers (threads of one process, GIL-bound for every path), from
16 asyncio tasks of one event loop (``AsyncCluster``), then from 4 writer processes (``--callers``) (a server fleet's shape: each process owns a share
of the keys, so every key's last value is known): acknowledgement latency (p50/p99 of each call) and
sustained throughput. For write-behind, "sustained" counts until the last change is in the
database: the saves run while a flusher process (``dbscale write-behind run``) flushes, and the
clock stops when ``flush()`` returns. Write-behind writes the same changes ``--behind-passes`` (4)
times over, in order, so its rate is a steady state: the flusher's write delay (``--interval``,
0.2 s: the last changes wait that long) is a latency, not a throughput, and a 0.4 s run would
count it as one.

Each setup runs the whole set: ``as-is`` (the throwaway topology runs PostgreSQL with ``fsync = off``
and Redis without AOF: a commit costs no disk flush) and ``durable`` (for the run, PostgreSQL
``fsync = on`` and Redis ``appendonly yes``/``appendfsync everysec``, as production servers run,
restored afterwards). ``--setups`` picks; with ``--config`` the default is ``as-is`` only.

    python benchmarks/write_paths.py                  # starts a throwaway LocalTopology (primary only)
    python benchmarks/write_paths.py --config dbscale.toml
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import os
import statistics
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, cast

import psycopg
from _topology import bench_config
from redis import Redis
from sqlalchemy import text

from dbscale import AsyncCluster, Cluster
from dbscale.config import libpq_conninfo

Call = Callable[[dict[str, Any]], Any]


def run(changes: list[dict[str, Any]], call: Call, threads: int = 1) -> tuple[list[float], float]:
    """Latency of every call and the wall time of all, ``changes`` dealt to ``threads`` callers by key
    (each key's changes stay in order on one caller, so its last value is known)."""
    samples: list[list[float]] = [[] for _ in range(threads)]
    shares = [[c for c in changes if c["id"] % threads == i] for i in range(threads)]

    def caller(i: int) -> None:
        mine = samples[i]
        for row in shares[i]:
            t = time.perf_counter()
            call(row)
            mine.append(time.perf_counter() - t)

    workers = [threading.Thread(target=caller, args=(i,)) for i in range(threads)]
    t0 = time.perf_counter()
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    return [s for part in samples for s in part], time.perf_counter() - t0


def make_call(cluster: Any, path: str, table: str) -> tuple[Call, Callable[[], None]]:
    """The per-change call of ``path`` on ``table`` and how to release what it holds."""
    if path == "direct":
        sql = text(
            f"INSERT INTO {table} VALUES (:id, :n, :note)"
            " ON CONFLICT (id) DO UPDATE SET n = EXCLUDED.n, note = EXCLUDED.note"
        )

        def direct(row: dict[str, Any]) -> None:
            with cluster.write() as conn:
                conn.execute(sql, row)

        return direct, lambda: None
    cache = cluster.cache
    if path == "through":
        through = cache.write_through(table, key_column="id", key="wp:{id}")
        return through.save, through.close
    behind = cache.write_behind(table, key_column="id", key="wpb:{id}")
    return behind.save, behind.close


def writer_process(config: str, path: str, table: str, changes: list[dict[str, Any]], start: Any, out: Any) -> None:
    """One writer of the fleet: warm up on its first changes, wait for the start, send its latencies."""
    with Cluster.from_config(config) as cluster:
        call, close = make_call(cluster, path, table)
        for row in changes[:50]:  # warm the pools (the last values are rewritten below, in order)
            call(row)
        start.wait()
        samples, _ = run(changes, call)
        close()
    out.put(samples)


def run_processes(
    config: Path, path: str, table: str, changes: list[dict[str, Any]], processes: int
) -> tuple[list[float], float]:
    """Latencies and wall time of ``changes`` written by ``processes`` writer processes (keys partitioned)."""
    ctx = multiprocessing.get_context("spawn")  # fresh interpreters: no pool inherited across fork
    start = ctx.Barrier(processes + 1)
    out = ctx.Queue()
    shares = [[c for c in changes if c["id"] % processes == j] for j in range(processes)]
    workers = [
        ctx.Process(target=writer_process, args=(str(config), path, table, share, start, out)) for share in shares
    ]
    for w in workers:
        w.start()
    start.wait(timeout=120)
    t0 = time.perf_counter()
    samples = [s for _ in workers for s in out.get(timeout=600)]
    elapsed = time.perf_counter() - t0
    for w in workers:
        w.join(timeout=60)
    return samples, elapsed


@contextmanager
def setup(cluster: Any, durable: bool) -> Iterator[str]:
    """The servers as they are, or durable for the block (then restored); yields the setup's label."""
    conninfos = [libpq_conninfo(str(group.primary)) for group in cluster.config.groups.values()]
    redis = Redis.from_url(str(cluster.config.cache.redis_url))
    aof = {
        k: str(v)
        for k, v in cast(dict[str, Any], redis.config_get("append*")).items()
        if k in ("appendonly", "appendfsync")
    }
    fsync: list[str] = []
    for conninfo in conninfos:
        with psycopg.connect(conninfo, autocommit=True) as pg:
            fsync.append(str(pg.execute("SHOW fsync").fetchone()[0]))  # type: ignore[index]
    if durable:
        for conninfo in conninfos:
            with psycopg.connect(conninfo, autocommit=True) as pg:
                pg.execute("ALTER SYSTEM SET fsync = on")
                pg.execute("SELECT pg_reload_conf()")
        redis.config_set("appendfsync", "everysec")
        redis.config_set("appendonly", "yes")
        time.sleep(2)  # the reload reaches every backend; the AOF rewrite starts
    try:
        with psycopg.connect(conninfos[0], autocommit=True) as pg:
            now = str(pg.execute("SHOW fsync").fetchone()[0])  # type: ignore[index]
        now_aof = {k: str(v) for k, v in cast(dict[str, Any], redis.config_get("append*")).items()}
        aof_label = f"AOF {now_aof['appendfsync']}" if now_aof["appendonly"] == "yes" else "no AOF"
        yield f"fsync={now}, {aof_label}"
    finally:
        if durable:
            for conninfo, before in zip(conninfos, fsync, strict=True):
                with psycopg.connect(conninfo, autocommit=True) as pg:
                    pg.execute("ALTER SYSTEM RESET fsync")
                    if pg.execute("SELECT pg_reload_conf(), current_setting('fsync')").fetchone()[1] != before:  # type: ignore[index]
                        pg.execute(f"ALTER SYSTEM SET fsync = {before}")
                        pg.execute("SELECT pg_reload_conf()")
            for name, value in aof.items():
                redis.config_set(name, value)
        redis.close()


async def run_tasks(
    config: Path, path: str, table: str, changes: list[dict[str, Any]], tasks: int
) -> tuple[list[float], float]:
    """Latencies and wall time of ``changes`` written by ``tasks`` asyncio tasks of one event loop (keys partitioned)."""
    async with AsyncCluster.from_config(config) as cluster:
        call: Callable[[dict[str, Any]], Awaitable[Any]]
        if path == "direct":
            sql = text(
                f"INSERT INTO {table} VALUES (:id, :n, :note)"
                " ON CONFLICT (id) DO UPDATE SET n = EXCLUDED.n, note = EXCLUDED.note"
            )

            async def direct(row: dict[str, Any]) -> None:
                async with cluster.write() as conn:
                    await conn.execute(sql, row)

            call = direct

            close: Any = None
        elif path == "through":
            through = cluster.cache.write_through(table, key_column="id", key="wp:{id}")
            call, close = through.save, through.close
        else:
            behind = cluster.cache.write_behind(table, key_column="id", key="wpb:{id}")
            call, close = behind.save, behind.close
        shares = [[c for c in changes if c["id"] % tasks == i] for i in range(tasks)]
        samples: list[float] = []

        async def caller(rows: list[dict[str, Any]], timed: bool) -> None:
            for row in rows:
                t = time.perf_counter()
                await call(row)
                if timed:
                    samples.append(time.perf_counter() - t)

        await asyncio.gather(*(caller(share[:20], False) for share in shares))  # warm the pools
        t0 = time.perf_counter()
        await asyncio.gather(*(caller(share, True) for share in shares))
        elapsed = time.perf_counter() - t0
        if close is not None:
            await close()
    return samples, elapsed


def shape_label(callers: str) -> str:
    """``1`` → one blocking caller (latency-bound, not a throughput), ``16`` → 16 threads, ``16async``, ``4proc``."""
    if callers.endswith("proc"):
        return callers.replace("proc", " processes")
    if callers.endswith("async"):
        return callers.replace("async", " asyncio tasks")
    return "1 blocking caller (latency-bound)" if callers == "1" else f"{callers} threads"


def pct(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--config", type=Path)
    parser.add_argument("--changes", type=int, default=5000)
    parser.add_argument("--keys", type=int, default=1000)
    parser.add_argument(
        "--callers", default="1,16,16async,4proc", help="N threads, Nasync: N asyncio tasks, Nproc: N processes"
    )
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument(
        "--behind-passes",
        type=int,
        default=4,
        help="write-behind writes the changes this many times over (steady state)",
    )
    parser.add_argument("--setups", help="as-is, durable, or as-is,durable (default without --config)")
    args = parser.parse_args()
    setups = (args.setups or ("as-is" if args.config else "as-is,durable")).split(",")
    print(f"load average before: {os.getloadavg()[0]:.1f} (2-core machine)")
    with bench_config(args.config, "write-paths") as config, Cluster.from_config(config) as cluster:
        tables = {p: f"bench_wp_{p}_{uuid.uuid4().hex[:6]}" for p in ("direct", "through", "behind")}
        with cluster.write() as conn:
            for name in tables.values():
                conn.execute(text(f"CREATE TABLE {name} (id int PRIMARY KEY, n bigint NOT NULL, note text)"))
        changes = [{"id": i % args.keys, "n": i, "note": f"change {i}"} for i in range(args.changes)]
        direct, _ = make_call(cluster, "direct", tables["direct"])
        through = cluster.cache.write_through(tables["through"], key_column="id", key="wp:{id}")
        behind = cluster.cache.write_behind(tables["behind"], key_column="id", key="wpb:{id}")
        behind.save(changes[0])
        behind.flush(timeout=60)  # creates the group and the checkpoint row
        run(changes[:200], direct)  # warm the pools
        run(changes[:200], through.save)
        flusher = subprocess.Popen(  # the deployed shape: a `dbscale write-behind run` worker process
            [sys.executable, "-c", "from dbscale.cli import main; main()", "write-behind", "run",
             "--config", str(config), "--table", tables["behind"], "--key-column", "id"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        time.sleep(5)  # its start-up (imports, takeover) is not the writer's cost
        # (path, setup | callers) -> every call's latency and each round's changes/s
        results: dict[tuple[str, str], tuple[list[float], list[float]]] = {}

        def record(name: str, case: str, samples: list[float], elapsed: float) -> None:
            latencies, rates = results.setdefault((name, case), ([], []))
            latencies.extend(samples)
            rates.append(len(samples) / elapsed)

        try:
            expected = {c["id"]: c["n"] for c in changes}
            for durable in (name == "durable" for name in setups):
                with setup(cluster, durable) as label:
                    for callers in args.callers.split(","):
                        procs, tasks = callers.endswith("proc"), callers.endswith("async")
                        threads = int(callers.removesuffix("proc").removesuffix("async"))  # or processes, tasks

                        def measure(
                            path: str,
                            call: Call,
                            todo: list[dict[str, Any]] = changes,
                            procs: bool = procs,
                            tasks: bool = tasks,
                            threads: int = threads,
                        ) -> tuple[list[float], float]:
                            if procs:
                                return run_processes(config, path, tables[path], todo, threads)
                            if tasks:
                                return asyncio.run(run_tasks(config, path, tables[path], todo, threads))
                            return run(todo, call, threads)

                        case = f"{label} | {shape_label(callers)}"
                        for _ in range(args.rounds):  # interleaved: a load spike hits every path alike
                            record("direct cluster.write() per change", case, *measure("direct", direct))
                            record("write-through save()", case, *measure("through", through.save))
                            samples, acked = measure("behind", behind.save, changes * args.behind_passes)
                            t_end = time.perf_counter()
                            behind.flush(timeout=300)
                            drained = time.perf_counter() - t_end
                            record("write-behind save(), acknowledged", case, samples, acked)
                            record("write-behind, sustained into the DB", case, samples, acked + drained)
                            with cluster.write() as conn:
                                for path in ("direct", "behind"):
                                    got = conn.execute(text(f"SELECT count(*), sum(n) FROM {tables[path]}")).one()
                                    assert tuple(got) == (len(expected), sum(expected.values())), (path, got)
        finally:
            flusher.terminate()
            flusher.wait(timeout=30)
            through.close()
            behind.close()
            with cluster.write() as conn:
                for name in tables.values():
                    conn.execute(text(f"DROP TABLE IF EXISTS {name}"))
        print(
            f"{args.changes} upserts over {args.keys} keys, {args.rounds} rounds (changes/s: median of the rounds);"
            f" load average after: {os.getloadavg()[0]:.1f}"
        )
        print("| path | setup | callers | ack p50 µs | ack p99 µs | changes/s | vs direct |")
        print("|---|---|---:|---:|---:|---:|---:|")
        base: dict[str, float] = {}
        for (name, case), (latencies, rates) in results.items():
            rate = statistics.median(rates)
            base.setdefault(case, rate)
            print(
                f"| {name} | {case} | {pct(latencies, 0.5):.0f} | {pct(latencies, 0.99):.0f} | {rate:.0f}"
                f" | {rate / base[case]:.1f}x |"
            )


if __name__ == "__main__":
    main()
