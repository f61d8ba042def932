"""Write paths: write-behind vs a direct ``cluster.write()`` per change vs write-through, measured.

One process, one caller, the same changes (upserts of ``--changes`` rows over ``--keys`` keys) on
each path: acknowledgement latency (p50/p99 of each call) and sustained throughput. For
write-behind "sustained" counts until the last change is in the database: the saves run while a
flusher process (``dbscale write-behind run``) flushes, and the clock stops when ``flush()`` returns.

    python benchmarks/write_paths.py                  # starts a throwaway LocalTopology (primary only)
    python benchmarks/write_paths.py --config dbscale.toml
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from _topology import bench_config
from sqlalchemy import text

from dbscale import Cluster


def run(changes: list[dict[str, Any]], call: Callable[[dict[str, Any]], Any]) -> tuple[list[float], float]:
    samples = []
    t0 = time.perf_counter()
    for row in changes:
        t = time.perf_counter()
        call(row)
        samples.append(time.perf_counter() - t)
    return samples, time.perf_counter() - t0


def pct(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--config", type=Path)
    parser.add_argument("--changes", type=int, default=5000)
    parser.add_argument("--keys", type=int, default=1000)
    args = parser.parse_args()
    with bench_config(args.config, "write-paths") as config, Cluster.from_config(config) as cluster:
        tables = {p: f"bench_wp_{p}_{uuid.uuid4().hex[:6]}" for p in ("direct", "through", "behind")}
        with cluster.write() as conn:
            for name in tables.values():
                conn.execute(text(f"CREATE TABLE {name} (id int PRIMARY KEY, n bigint NOT NULL, note text)"))
        changes = [{"id": i % args.keys, "n": i, "note": f"change {i}"} for i in range(args.changes)]
        results: dict[str, tuple[list[float], float]] = {}
        try:
            direct_sql = text(
                f"INSERT INTO {tables['direct']} VALUES (:id, :n, :note)"
                " ON CONFLICT (id) DO UPDATE SET n = EXCLUDED.n, note = EXCLUDED.note"
            )

            def direct(row: dict[str, Any]) -> None:
                with cluster.write() as conn:
                    conn.execute(direct_sql, row)

            run(changes[:200], direct)  # warm the pool
            results["direct cluster.write() per change"] = run(changes, direct)

            through = cluster.cache.write_through(tables["through"], key_column="id", key="wp:{id}")
            run(changes[:200], through.save)
            results["write-through save()"] = run(changes, through.save)
            through.close()

            behind = cluster.cache.write_behind(tables["behind"], key_column="id", key="wpb:{id}")
            behind.save(changes[0])
            behind.flush(timeout=60)  # creates the group, installs, warms
            flusher = subprocess.Popen(  # the deployed shape: a `dbscale write-behind run` worker process
                [sys.executable, "-c", "from dbscale.cli import main; main()", "write-behind", "run",
                 "--config", str(config), "--table", tables["behind"], "--key-column", "id"],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            )  # fmt: skip
            try:
                started = time.monotonic()  # time the saves once the worker runs (its start-up is not the writer's cost)
                while not behind._flusher_alive() and time.monotonic() - started < 60:
                    time.sleep(0.1)
                samples, _ = run(changes, behind.save)
                t_end = time.perf_counter()
                behind.flush(timeout=300)
                drained = time.perf_counter() - t_end
            finally:
                flusher.terminate()
                flusher.wait(timeout=30)
            results["write-behind save() (ack)"] = (samples, sum(samples))
            results["write-behind, sustained to the DB"] = (samples, sum(samples) + drained)
            with cluster.write() as conn:
                flushed = conn.execute(text(f"SELECT count(*), sum(n) FROM {tables['behind']}")).one()
            expected = {c["id"]: c["n"] for c in changes}
            assert flushed == (len(expected), sum(expected.values())), flushed
            behind.close()
        finally:
            with cluster.write() as conn:
                for name in tables.values():
                    conn.execute(text(f"DROP TABLE IF EXISTS {name}"))
        direct_rate = args.changes / results["direct cluster.write() per change"][1]
        print(f"{args.changes} upserts over {args.keys} keys, one caller")
        print(f"{'path':38} {'ack p50 µs':>11} {'ack p99 µs':>11} {'changes/s':>10} {'vs direct':>9}")
        for name, (samples, elapsed) in results.items():
            rate = args.changes / elapsed
            print(
                f"{name:38} {pct(samples, 0.5):11.0f} {pct(samples, 0.99):11.0f} {rate:10.0f}"
                f" {rate / direct_rate:8.1f}x"
            )
        print(f"(median ack: {statistics.median(results['write-behind save() (ack)'][0]) * 1e6:.0f} µs)")


if __name__ == "__main__":
    main()
