"""``dbscale demo --workload``: load the shop, run workloads A, B, C through each stack, report."""

from __future__ import annotations

import secrets
import time
from contextlib import suppress
from dataclasses import dataclass, field
from pathlib import Path

from rich.console import Console

from dbscale.cluster import Cluster
from dbscale.demo_workload.data import ShopSize, load_shop
from dbscale.demo_workload.edge_app import EdgeApp
from dbscale.demo_workload.layers import LAYERS, Edge, RedisL2, Replicas, Stack, WithL1
from dbscale.demo_workload.report import results_table, speedup, write_report
from dbscale.demo_workload.runner import Result, run_cell
from dbscale.demo_workload.ycsb import WORKLOADS, ScrambledZipfian
from dbscale.errors import ReplicationTimeout
from dbscale.integrations.edge import EdgePolicy
from dbscale.local import LocalTopology, nginx
from dbscale.local.ports import free_ports
from dbscale.local.service_user import current_service_user
from dbscale.names import primary_name

#: The acceptance bar: L1 + L2 against the primary alone, on the read-only workload.
TARGET_SPEEDUP = 10.0


@dataclass
class WorkloadOutcome:
    """The measured cells, the report's path and any target that was missed."""

    results: list[Result] = field(default_factory=list)
    report: Path | None = None
    failures: list[str] = field(default_factory=list)


def _wait_replicated(cluster: Cluster, timeout: float = 120.0) -> None:
    with suppress(ReplicationTimeout):  # the routing is lag-aware anyway: reads go to the primary meanwhile
        cluster.wait_replicated(timeout=timeout)


def check(results: list[Result]) -> list[str]:
    """The demo's claims: on workload C, L1 + L2 gives ≥ 10× primary-only throughput with fewer DB queries."""
    failures = []
    by = {(r.workload, r.layer): r for r in results}
    l1, base = by.get(("C", LAYERS[3])), by.get(("C", LAYERS[0]))
    if l1 is not None and base is not None:
        ratio = speedup(results, l1)
        if ratio < TARGET_SPEEDUP:
            failures.append(f"workload C: L1+L2 is {ratio:.1f}× primary-only, not ≥ {TARGET_SPEEDUP:g}×")
        if not l1.db_per_op < base.db_per_op / TARGET_SPEEDUP:
            failures.append(
                f"workload C: DB queries/request {l1.db_per_op:.3f} with L1+L2 vs {base.db_per_op:.3f} primary-only"
            )
    failures.extend(f"{r.workload} / {r.layer}: {r.errors} failed requests" for r in results if r.errors)
    return failures


def run_workload_demo(
    state_dir: Path,
    console: Console,
    *,
    size: ShopSize | None = None,
    duration: float = 2.0,
    threads: int = 8,
    warmup: float = 0.5,
) -> WorkloadOutcome:
    """Run the workload section on the local topology in ``state_dir`` (started if needed)."""
    size = size or ShopSize()
    topology = LocalTopology(state_dir)
    topology.up()
    outcome = WorkloadOutcome()
    # A Redis timeout above the 50 ms default: 8 client threads share 2 cores with every server here,
    # and a breaker opened by a scheduling hiccup would measure the fallback, not the cache.
    with Cluster.from_config(topology.config_path, cache={"redis_timeout": 0.5}) as cluster:
        t0 = time.perf_counter()
        fresh = load_shop(cluster, size)
        _wait_replicated(cluster)
        what = f"loaded {size.rows:,} rows with COPY in" if fresh else "dataset already loaded; checked in"
        console.print(
            f"shop dataset ({size.users:,} users, {size.orders:,} orders): {what} {time.perf_counter() - t0:.1f} s"
        )
        keys = ScrambledZipfian(size.users)
        primary = primary_name(cluster.default_group())
        policy = EdgePolicy(max_age=300, stale_while_revalidate=30, purge_secret=secrets.token_hex(16))
        run_id = secrets.token_hex(3)  # one cache namespace for the whole run: caches stay warm between cells
        app = EdgeApp(WithL1(cluster, run_id), policy)
        edge = nginx.EdgeConfig(
            state_dir / nginx.WORKLOAD_EDGE_DIR, free_ports(1)[0], app.port, policy.purge_secret or ""
        )
        nginx.clear_cache(edge)
        nginx.start(edge, current_service_user())
        try:
            app.purge_through(edge.url, policy)
            t0 = time.perf_counter()
            warmed = RedisL2(cluster, run_id).warm()
            console.print(f"Redis warmed with {warmed:,} profiles in {time.perf_counter() - t0:.1f} s (the load phase)")
            for workload in WORKLOADS:
                for i, layer in enumerate(LAYERS):
                    run = run_id
                    stack: Stack
                    if layer == LAYERS[4]:
                        stack = Edge(cluster, run, edge.listen_port, app.stack)
                    else:
                        stack = (Stack, Replicas, RedisL2, WithL1)[i](cluster, run)
                    try:
                        result = run_cell(
                            cluster, stack, workload, keys, threads=threads, duration=duration, warmup=warmup,
                            primary_pids=lambda: topology.node_pids(primary),
                        )  # fmt: skip
                    finally:
                        stack.close()
                    outcome.results.append(result)
                    console.print(
                        f"  workload {workload.name} {layer:<13} {result.throughput:>10,.0f} ops/s", highlight=False
                    )
        finally:
            app.close()
            nginx.stop(edge)
            nginx.clear_cache(edge)
    summary = (
        f"Shop dataset: {size.users:,} users and {size.orders:,} orders. YCSB workloads A (50% reads / 50% updates), "
        f"B (95/5), C (read only); scrambled zipfian keys (θ 0.99); {threads} client threads; each cell {warmup:g} s "
        f"unmeasured warm-up, then {duration:g} s measured; caches are not flushed between cells (as in a running "
        "application); "
        "the Redis tier is warmed first with every profile (YCSB's load phase); one process, 2-core machine. A read is a user's profile (the user row and the five latest orders); an update "
        "changes the balance and invalidates the user's tag. DB queries/req counts the workload's statements on every "
        "node (pg_stat_statements); primary CPU is the primary's processes' share of the machine."
    )
    title = "dbscale workload demo: each layer switched on in turn"
    console.print(results_table(outcome.results, title))
    outcome.report = write_report(outcome.results, state_dir / "workload-report", summary)
    console.print(f"HTML report with charts: [bold]{outcome.report}[/] (PNGs beside it)")
    outcome.failures = check(outcome.results)
    return outcome
