"""Write paths: write-behind vs a direct ``cluster.write()`` per change vs write-through, measured.

The same changes (upserts of ``--changes`` rows over ``--keys`` keys) on each path, first from one
caller, then from ``--threads`` concurrent callers (threads of one process): acknowledgement latency
(p50/p99 of each call) and sustained throughput. For write-behind, "sustained" counts until the last
change is in the database: the saves run while a flusher process (``dbscale write-behind run``)
flushes, and the clock stops when ``flush()`` returns.

    python benchmarks/write_paths.py                  # starts a throwaway LocalTopology (primary only)
    python benchmarks/write_paths.py --config dbscale.toml
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from _topology import bench_config
from sqlalchemy import text

from dbscale import Cluster

Call = Callable[[dict[str, Any]], Any]


def run(changes: list[dict[str, Any]], call: Call, threads: int = 1) -> tuple[list[float], float]:
    """Latency of every call and the wall time of all, ``changes`` dealt round-robin to ``threads`` callers."""
    samples: list[list[float]] = [[] for _ in range(threads)]

    def caller(i: int) -> None:
        mine = samples[i]
        for row in changes[i::threads]:
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


def pct(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--config", type=Path)
    parser.add_argument("--changes", type=int, default=5000)
    parser.add_argument("--keys", type=int, default=1000)
    parser.add_argument("--threads", type=int, default=16)
    args = parser.parse_args()
    print(f"load average before: {os.getloadavg()[0]:.1f} (2-core machine)")
    with bench_config(args.config, "write-paths") as config, Cluster.from_config(config) as cluster:
        tables = {p: f"bench_wp_{p}_{uuid.uuid4().hex[:6]}" for p in ("direct", "through", "behind")}
        with cluster.write() as conn:
            for name in tables.values():
                conn.execute(text(f"CREATE TABLE {name} (id int PRIMARY KEY, n bigint NOT NULL, note text)"))
        changes = [{"id": i % args.keys, "n": i, "note": f"change {i}"} for i in range(args.changes)]
        direct_sql = text(
            f"INSERT INTO {tables['direct']} VALUES (:id, :n, :note)"
            " ON CONFLICT (id) DO UPDATE SET n = EXCLUDED.n, note = EXCLUDED.note"
        )

        def direct(row: dict[str, Any]) -> None:
            with cluster.write() as conn:
                conn.execute(direct_sql, row)

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
        results: list[tuple[str, int, list[float], float]] = []
        try:
            for threads in (1, args.threads):
                samples, elapsed = run(changes, direct, threads)
                results.append(("direct cluster.write() per change", threads, samples, elapsed))
                samples, elapsed = run(changes, through.save, threads)
                results.append(("write-through save()", threads, samples, elapsed))
                samples, acked = run(changes, behind.save, threads)
                t_end = time.perf_counter()
                behind.flush(timeout=300)
                drained = time.perf_counter() - t_end
                results.append(("write-behind save(), acknowledged", threads, samples, acked))
                results.append(("write-behind, sustained into the DB", threads, samples, acked + drained))
                with cluster.write() as conn:
                    flushed = conn.execute(text(f"SELECT count(*), sum(n) FROM {tables['behind']}")).one()
                expected = {c["id"]: c["n"] for c in changes}
                assert tuple(flushed) == (len(expected), sum(expected.values())), flushed
        finally:
            flusher.terminate()
            flusher.wait(timeout=30)
            through.close()
            behind.close()
            with cluster.write() as conn:
                for name in tables.values():
                    conn.execute(text(f"DROP TABLE IF EXISTS {name}"))
        print(f"{args.changes} upserts over {args.keys} keys; load average after: {os.getloadavg()[0]:.1f}")
        print("| path | callers | ack p50 µs | ack p99 µs | changes/s | vs direct |")
        print("|---|---:|---:|---:|---:|---:|")
        base: dict[int, float] = {}
        for name, threads, samples, elapsed in results:
            rate = args.changes / elapsed
            base.setdefault(threads, rate)
            print(
                f"| {name} | {threads} | {pct(samples, 0.5):.0f} | {pct(samples, 0.99):.0f} | {rate:.0f}"
                f" | {rate / base[threads]:.1f}x |"
            )


if __name__ == "__main__":
    main()
