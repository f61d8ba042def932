"""Index advice: dbscale's candidates and workload selection vs a Dexter-style advisor, measured.

Both advise the same 10-query workload (tests/integration/advisor_workload.py over users, orders and a
write-heavy events table) in their own copy of the database, with the same HypoPG machinery; the
Dexter-style run is restricted to what Dexter considers (single columns and 2-column permutations, no
sort direction, no INCLUDE, no partial index, a 50% threshold; it keeps dbscale's workload selection and
write-cost rule, which is generous to Dexter: Dexter picks at most one index per query). Each set is then created for real and
every workload query timed with EXPLAIN ANALYZE (best of 3 after a warm-up), before and after.

    python benchmarks/advisor.py                 # starts a throwaway LocalTopology (primary only)
    python benchmarks/advisor.py --config dbscale.toml
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import psycopg
from _topology import bench_config

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # the workload and its loader live with the integration tests

from tests.integration.advisor_data import load_workload_tables  # noqa: E402
from tests.integration.advisor_workload import WORKLOAD  # noqa: E402

import dbscale  # noqa: E402
from dbscale.advisor import candidates as cand  # noqa: E402
from dbscale.advisor.model import IndexColumn, IndexSpec, TableShape  # noqa: E402
from dbscale.config import load_config  # noqa: E402


def dexter_candidates(shape: TableShape) -> list[IndexSpec]:
    """Dexter's space: every single column and every ordered pair, ascending, full indexes."""
    cols = list(dict.fromkeys([*shape.eq, *shape.ranges, *shape.joins, *(c.name for c in shape.order)]))
    out = [IndexSpec(shape.table, (IndexColumn(c),)) for c in cols]
    out += [IndexSpec(shape.table, (IndexColumn(a), IndexColumn(b))) for a in cols for b in cols if a != b]
    return out


def timed_ms(conn: psycopg.Connection[Any], sql: str) -> float:
    conn.execute(f"EXPLAIN (ANALYZE, FORMAT JSON) {sql}")
    runs = []
    for _ in range(3):
        row = conn.execute(f"EXPLAIN (ANALYZE, FORMAT JSON) {sql}").fetchone()
        assert row is not None
        runs.append(float(row[0][0]["Execution Time"]))
    return min(runs)


@contextmanager
def database(base_url: str, name: str) -> Iterator[str]:
    with psycopg.connect(base_url, autocommit=True) as admin:
        admin.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        admin.execute(f"CREATE DATABASE {name}")
    url = base_url.rsplit("/", 1)[0] + "/" + name
    try:
        yield url
    finally:
        with psycopg.connect(base_url, autocommit=True) as admin:
            admin.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


def run_one(base_url: str, label: str, generator: Callable[[TableShape], list[IndexSpec]], min_gain: float) -> Any:
    with database(base_url, f"bench_advisor_{label}") as url, psycopg.connect(url, autocommit=True) as conn:
        conn.execute("CREATE EXTENSION hypopg")
        load_workload_tables(conn)
        before = {k: timed_ms(conn, sql) for k, sql in WORKLOAD.items()}
        original = cand.candidates
        cand.candidates = generator  # type: ignore[assignment]
        try:
            with dbscale.Cluster(groups={"main": {"primary": url}}) as cluster:
                advice = dbscale.advise(cluster, list(WORKLOAD.values()), min_gain=min_gain, apply=True)
        finally:
            cand.candidates = original  # type: ignore[assignment]
        after = {k: timed_ms(conn, sql) for k, sql in WORKLOAD.items()}
        size = conn.execute(
            "SELECT coalesce(sum(pg_relation_size(indexrelid)), 0) FROM pg_stat_user_indexes "
            "WHERE indexrelname NOT LIKE '%pkey'"
        ).fetchone()
        assert size is not None
    return advice, before, after, int(size[0])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, help="dbscale.toml of a running topology (default: start one)")
    args = parser.parse_args(argv)
    with bench_config(args.config, "advisor") as config:
        base = str(load_config(config).group("main").primary)
        ours = run_one(base, "dbscale", cand.candidates, 0.3)
        dexter = run_one(base, "dexter", dexter_candidates, 0.5)

    for label, (advice, _b, _a, size) in (("dbscale", ours), ("Dexter-style", dexter)):
        print(f"{label}: {len(advice.indexes)} indexes, {size // 1024} kB")
        for rec in advice.indexes:
            print(f"  {rec.index.ddl(concurrently=False)}")
    print("\n| query | no index ms | dbscale ms | Dexter-style ms |")
    print("|---|---:|---:|---:|")
    for key in WORKLOAD:
        print(f"| {key} | {ours[1][key]:.3f} | {ours[2][key]:.3f} | {dexter[2][key]:.3f} |")
    total = {name: sum(r[2].values()) for name, r in (("dbscale", ours), ("dexter", dexter))}
    base_total = sum(ours[1].values())
    print(f"| **total** | {base_total:.3f} | {total['dbscale']:.3f} | {total['dexter']:.3f} |")
    print(f"\nworkload time, Dexter-style / dbscale: {total['dexter'] / total['dbscale']:.2f}×")
    return 0


if __name__ == "__main__":
    sys.exit(main())
