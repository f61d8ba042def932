"""Routing overhead: a primary-key read through ``cluster.read()`` vs a raw SQLAlchemy engine.

Both paths read the same row from the same replica through an identically configured pool; the
runs are interleaved in A/B pairs (each routed path against the raw engine, alternating which goes
first) so drift in the machine affects both sides of each ratio alike.

    python benchmarks/routing.py                 # starts a throwaway LocalTopology (primary + 1 replica)
    python benchmarks/routing.py --config dbscale.toml --iterations 20000
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from sqlalchemy import create_engine, text

from dbscale import Cluster
from dbscale.cluster import engine_options
from dbscale.config import load_config, sqlalchemy_url

QUERY = text("SELECT payload FROM bench_routing WHERE id = :id")
ROWS = 10_000


def _measure(fn: Callable[[int], object], i: int) -> float:
    started = time.perf_counter()
    fn(i)
    return time.perf_counter() - started


def run(config_path: Path, iterations: int) -> list[tuple[str, float, float, float]]:
    full = load_config(config_path)
    main = full.groups["main"]
    if not main.replicas:
        raise SystemExit("the benchmark needs a group 'main' with at least one replica")
    replica_url = main.replicas[0]
    # One replica only, so the router and the raw engine hit the same server.
    cluster = Cluster.from_config(config_path, groups={"main": {"replicas": [replica_url], "weights": None}})
    raw = create_engine(sqlalchemy_url(replica_url), **engine_options(main.pool, via_pgbouncer=False, read_only=True))
    try:
        with cluster.write() as conn:
            conn.execute(text("DROP TABLE IF EXISTS bench_routing"))
            conn.execute(text("CREATE TABLE bench_routing (id int PRIMARY KEY, payload text NOT NULL)"))
            conn.execute(
                text("INSERT INTO bench_routing SELECT g, md5(g::text) FROM generate_series(1, :n) g"), {"n": ROWS}
            )
        old_token = cluster.causal_token()
        cluster.start()
        while True:  # until the replica has the table and the monitor's view shows it
            cluster.refresh()
            if cluster.router().state.views["main-replica1"].lag_bytes == 0:
                break
            time.sleep(0.05)

        def via_raw(i: int) -> object:
            with raw.connect() as conn:
                return conn.execute(QUERY, {"id": i % ROWS + 1}).scalar_one()

        def via_cluster(i: int) -> object:
            with cluster.read() as conn:
                return conn.execute(QUERY, {"id": i % ROWS + 1}).scalar_one()

        def via_cluster_causal(i: int) -> object:
            with cluster.read(after=old_token) as conn:  # token already covered by the monitor's view
                return conn.execute(QUERY, {"id": i % ROWS + 1}).scalar_one()

        cluster.reset_causal()
        paths = {
            "cluster.read()": via_cluster,
            "cluster.read(after=token)": via_cluster_causal,
        }
        for fn in (via_raw, *paths.values()):  # warm pools, statement caches, the replica's buffer cache
            for i in range(min(2000, iterations)):
                fn(i)
        # Each routed path is compared with the raw engine in its own A/B run (alternating which goes
        # first), so the two always share the same moment of a noisy machine.
        rows = []
        for name, fn in paths.items():
            raw_samples: list[float] = []
            routed: list[float] = []
            for i in range(iterations):
                if i % 2 == 0:
                    raw_samples.append(_measure(via_raw, i))
                    routed.append(_measure(fn, i))
                else:
                    routed.append(_measure(fn, i))
                    raw_samples.append(_measure(via_raw, i))
            base = statistics.median(raw_samples)
            for label, data in (("raw SQLAlchemy engine", raw_samples), (name, routed)):
                ordered = sorted(data)
                med = statistics.median(ordered)
                rows.append((label, med * 1e6, ordered[int(len(ordered) * 0.9)] * 1e6, med / base))
        served = cluster.metrics.value("reads_total", group="main", node="main-replica1")
        assert served >= 2 * iterations, "the router did not send the reads to the replica"
        return rows
    finally:
        try:
            with cluster.write() as conn:
                conn.execute(text("DROP TABLE IF EXISTS bench_routing"))
        finally:
            cluster.close()
            raw.dispose()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, help="dbscale.toml of a running topology (default: start one)")
    parser.add_argument("--iterations", type=int, default=10_000)
    args = parser.parse_args(argv)
    state_dir: Path | None = None
    topology = None
    if args.config is None:
        from dbscale.local import LocalTopology

        state_dir = Path(tempfile.mkdtemp(prefix="dbscale-bench-routing-", dir="/tmp"))
        os.chmod(state_dir, 0o755)
        topology = LocalTopology(state_dir)
        topology.up(replicas=1, shards=0, pgbouncer=False)
        config = topology.config_path
    else:
        config = args.config
    try:
        rows = run(config, args.iterations)
    finally:
        if topology is not None:
            topology.down(purge=True)
        if state_dir is not None:
            shutil.rmtree(state_dir, ignore_errors=True)
    print(f"Primary-key read on one replica, {args.iterations} interleaved iterations per path\n")
    print("| path | median µs | p90 µs | median ratio vs raw |")
    print("|---|---:|---:|---:|")
    for name, med, p90, ratio in rows:
        print(f"| {name} | {med:.1f} | {p90:.1f} | {ratio:.3f} |")
    worst = max(r[3] for r in rows if not r[0].startswith("raw"))
    print(f"\ntarget: ratio <= 1.10 — {'met' if worst <= 1.10 else 'NOT met'} (worst {worst:.3f})")
    return 0 if worst <= 1.10 else 1


if __name__ == "__main__":
    sys.exit(main())
