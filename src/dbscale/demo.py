"""``dbscale demo``: the main job — dbscale's guarantees shown live on a local topology.

It starts (or reuses) a local topology, then runs short scenarios against real servers and prints
what happened: read-your-writes with replication paused, lag-aware routing, the multi-level cache
(L1, L2, stampede, invalidation) and the metrics that count all of it. Each scenario checks its
own outcome and the demo exits non-zero if a guarantee did not hold.
"""

from __future__ import annotations

import statistics
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table
from sqlalchemy import text

from dbscale.cluster import Cluster
from dbscale.errors import LocalTopologyError
from dbscale.local import LocalTopology
from dbscale.names import replica_name

_REPLICAS = (replica_name("main", 1), replica_name("main", 2))


@dataclass
class DemoReport:
    """What the demo saw: one row per step, and whether every guarantee held."""

    rows: list[tuple[str, str, str]] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)

    def step(self, what: str, outcome: str, ok: bool) -> None:
        """Record one step; a failed guarantee is remembered for the exit code."""
        self.rows.append((what, outcome, "[green]ok[/]" if ok else "[red]FAILED[/]"))
        if not ok:
            self.failures.append(what)


def _timed(fn: Callable[[], Any]) -> tuple[Any, float]:
    started = time.perf_counter()
    value = fn()
    return value, time.perf_counter() - started


def _median_call(fn: Callable[[], Any], n: int = 500) -> float:
    samples = []
    for _ in range(n):
        started = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - started)
    return statistics.median(samples)


def _fmt(seconds: float) -> str:
    return f"{seconds * 1e6:.1f} µs" if seconds < 1e-3 else f"{seconds * 1e3:.2f} ms"


def _setup(cluster: Cluster) -> None:
    with cluster.write() as conn:
        conn.execute(text("CREATE TABLE IF NOT EXISTS demo_accounts (id int PRIMARY KEY, balance int NOT NULL)"))
        conn.execute(
            text(
                "INSERT INTO demo_accounts SELECT g, 100 FROM generate_series(1, 100) g "
                "ON CONFLICT (id) DO UPDATE SET balance = 100"
            )
        )
    cluster.refresh()


def read_your_writes(cluster: Cluster, topology: LocalTopology, report: DemoReport) -> None:
    """Replication paused on every replica: a write is still read back, from the primary."""
    for name in _REPLICAS:
        topology.pause_replay(name)
    try:
        cluster.refresh()
        with cluster.write() as conn:
            conn.execute(text("UPDATE demo_accounts SET balance = balance + 50 WHERE id = 1"))
        token = cluster.causal_token()
        with cluster.read() as conn:
            balance = conn.scalar(text("SELECT balance FROM demo_accounts WHERE id = 1"))
            node = conn.node
        report.step(
            "write, then read with replay paused on both replicas",
            f"balance {balance} from {node} (token {token})",
            balance == 150 and node == "main-primary",
        )
        fresh = Cluster(cluster.config)
        try:
            with fresh.read(after=token) as conn:
                carried = conn.scalar(text("SELECT balance FROM demo_accounts WHERE id = 1"))
                carried_node = conn.node
            report.step(
                "token carried to another Cluster (as a cookie would)",
                f"balance {carried} from {carried_node}",
                carried == 150,
            )
            with fresh.engine(_REPLICAS[0]).connect() as conn:
                stale = conn.scalar(text("SELECT balance FROM demo_accounts WHERE id = 1"))
            report.step(
                "the same row read naively from a paused replica",
                f"balance {stale} (stale — what a random-replica router returns)",
                stale == 100,
            )
        finally:
            fresh.close()
    finally:
        for name in _REPLICAS:
            topology.resume_replay(name)
    deadline = time.monotonic() + 10
    node = "?"
    while time.monotonic() < deadline:
        cluster.refresh()
        with cluster.read(after=token) as conn:
            node = conn.node
        if node in _REPLICAS:
            break
        time.sleep(0.1)
    report.step("replay resumed: the same causal read", f"served by {node}", node in _REPLICAS)


def caching(cluster: Cluster, report: DemoReport) -> None:
    """Cache-aside through L1 and Redis, stampede protection and invalidation after commit."""
    cache = cluster.cache
    loads = {"n": 0}
    lock = threading.Lock()

    @cache.cached(ttl=60, key="demo:account:{account_id}", tags=["demo:accounts"])
    def balance(account_id: int) -> int | None:
        with lock:
            loads["n"] += 1
        time.sleep(0.05)  # a slow query
        with cluster.read() as conn:
            value = conn.scalar(text("SELECT balance FROM demo_accounts WHERE id = :id"), {"id": account_id})
            return None if value is None else int(value)

    cache.invalidate_tags("demo:accounts")
    value, miss = _timed(lambda: balance(2))
    balance(account_id=2)
    hit = _median_call(lambda: balance(account_id=2))
    report.step("first call (miss: loader + Redis fill)", f"{value} in {_fmt(miss)}", loads["n"] == 1)
    report.step("same call, keyword argument (L1 hit, median)", _fmt(hit), loads["n"] == 1 and hit < miss)

    @cache.cached(ttl=60, key="demo:l2:{account_id}", l1=False)
    def balance_l2(account_id: int) -> int | None:
        value: int | None = balance(account_id)
        return value

    balance_l2(2)
    l2 = _median_call(lambda: balance_l2(2))
    report.step("l1=False: a Redis (L2) hit, median", _fmt(l2), loads["n"] == 1)

    cache.invalidate_tags("demo:accounts")
    before = loads["n"]
    barrier = threading.Barrier(50)

    def caller() -> None:
        barrier.wait()
        balance(3)

    threads = [threading.Thread(target=caller) for _ in range(50)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    report.step(
        "50 threads on a cold key (stampede)", f"{loads['n'] - before} loader call(s)", loads["n"] - before == 1
    )

    with cluster.write() as conn:
        conn.execute(text("UPDATE demo_accounts SET balance = 999 WHERE id = 3"))
    balance.invalidate(3)  # after COMMIT
    fresh = balance(3)
    report.step("UPDATE, commit, invalidate: next read", f"{fresh}", fresh == 999)


def metrics_table(cluster: Cluster) -> Table:
    """A few of the cluster's counters, as a table."""
    snap = cluster.metrics_snapshot()
    table = Table(title="metrics (this process)")
    table.add_column("metric")
    table.add_column("labels")
    table.add_column("value", justify="right")
    wanted = (
        "dbscale_reads_total",
        "dbscale_writes_total",
        "dbscale_causal_reads_total",
        "dbscale_cache_hits_total",
        "dbscale_cache_misses_total",
        "dbscale_cache_loader_calls_total",
    )
    for name in wanted:
        for sample in snap.get(name, []):
            if sample["value"]:
                labels = ", ".join(f"{k}={v}" for k, v in sample["labels"].items())
                table.add_row(name.removeprefix("dbscale_"), labels, f"{sample['value']:g}")
    return table


def run_demo(state_dir: Path, console: Console) -> DemoReport:
    """Bring the topology up (2 replicas, 2 shards, PgBouncer unless it exists) and run every scenario."""
    topology = LocalTopology(state_dir)
    if topology.exists():
        topology.up()
    else:
        topology.up(replicas=2, shards=2, pgbouncer=True)
    if topology.shape.replicas < 2:
        raise LocalTopologyError(
            f"the demo needs 2 replicas; {state_dir} has {topology.shape.replicas} (`dbscale down` it, or use another --state-dir)"
        )
    report = DemoReport()
    with Cluster.from_config(topology.config_path) as cluster:
        _setup(cluster)
        read_your_writes(cluster, topology, report)
        caching(cluster, report)
        table = Table(title="dbscale demo")
        for column in ("step", "outcome", "guarantee"):
            table.add_column(column)
        for row in report.rows:
            table.add_row(*row)
        console.print(table)
        console.print(metrics_table(cluster))
    return report
