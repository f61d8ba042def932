"""Drive one workload through one stack with a fixed number of client threads, and count what it cost.

Counts come from the servers where they can: statements from ``pg_stat_statements`` on every node
(only the workload's own, matched by table name), CPU from ``/proc`` for the primary's processes.
"""

from __future__ import annotations

import os
import random
import statistics
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from sqlalchemy import text

from dbscale.cluster import Cluster
from dbscale.demo_workload.data import USERS
from dbscale.demo_workload.layers import Stack
from dbscale.demo_workload.ycsb import ScrambledZipfian, Workload

_STATEMENTS = text(
    "SELECT coalesce(sum(calls), 0)::bigint FROM pg_stat_statements "
    f"WHERE query LIKE '%{USERS}%' AND query NOT LIKE '%pg_stat_statements%'"
)
_TICK = os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True)
class Result:
    """One cell of the report: a workload through a stack."""

    workload: str
    layer: str
    ops: int
    reads: int
    seconds: float
    p50: float
    p99: float
    hit_rate: float | None
    db_per_op: float
    primary_cpu: float | None
    errors: int

    @property
    def throughput(self) -> float:
        """Operations per second."""
        return self.ops / self.seconds if self.seconds else 0.0


def db_statements(cluster: Cluster) -> int:
    """Workload statements run so far, summed over every PostgreSQL node (PgBouncer entries skipped)."""
    total = 0
    for node in cluster.nodes:
        if node.role == "pgbouncer":
            continue
        with cluster.engine(node.name, read_only=True).connect() as conn:
            total += int(conn.scalar(_STATEMENTS) or 0)
    return total


def cpu_seconds(pids: list[int], only: dict[int, float] | None = None) -> dict[int, float]:
    """User + system CPU seconds of each live process among ``pids`` (among ``only``'s keys if given)."""
    out: dict[int, float] = {}
    for pid in pids if only is None else list(only):
        try:
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        out[pid] = (int(fields[11]) + int(fields[12])) / _TICK  # utime, stime (fields 14 and 15 of stat)
    return out


def run_cell(
    cluster: Cluster,
    stack: Stack,
    workload: Workload,
    keys: ScrambledZipfian,
    *,
    threads: int,
    duration: float,
    warmup: float = 1.0,
    seed: int = 1,
    primary_pids: Callable[[], list[int]] | None = None,
) -> Result:
    """Run ``workload`` through ``stack`` with ``threads`` client threads: ``warmup`` seconds unmeasured
    (caches fill as in a running application), then ``duration`` seconds measured."""
    latencies: list[list[float]] = [[] for _ in range(threads)]
    reads = [0] * threads
    errors = [0] * threads
    # Phases: warm-up, a pause while the counters are read (so the DB statement counts and the
    # operations cover exactly the same requests), the measured run.
    start, warmed, measure = (threading.Barrier(threads + 1) for _ in range(3))
    stop = threading.Event()

    def loop(i: int, rng: random.Random, measured: bool) -> None:
        out = latencies[i]
        while not stop.is_set():
            is_read, key = workload.is_read(rng.random()), keys.key(rng.random())
            t0 = time.perf_counter()
            try:
                if is_read:
                    stack.read(key)
                else:
                    stack.write(key)
            except Exception:  # counted and shown: a demo run reports failures rather than dying
                errors[i] += measured
                continue
            if measured:
                out.append(time.perf_counter() - t0)
                reads[i] += is_read

    def client(i: int) -> None:
        rng = random.Random(seed * 1000 + i)
        start.wait()
        loop(i, rng, measured=False)
        warmed.wait()
        measure.wait()
        loop(i, rng, measured=True)

    workers = [threading.Thread(target=client, args=(i,), daemon=True) for i in range(threads)]
    for w in workers:
        w.start()
    start.wait()
    time.sleep(warmup)
    stop.set()
    warmed.wait()  # every client is idle now
    stop.clear()
    pids = primary_pids() if primary_pids else []
    statements0, cpu0, db0 = db_statements(cluster), cpu_seconds(pids), stack.reads_at_db()
    measure.wait()
    started = time.perf_counter()
    time.sleep(duration)
    stop.set()
    for w in workers:
        w.join()
    seconds = time.perf_counter() - started
    cpu1 = cpu_seconds(pids, cpu0)
    db_reads = stack.reads_at_db() - db0
    statements = db_statements(cluster) - statements0
    samples = sorted(x for lat in latencies for x in lat)
    ops, total_reads = len(samples), sum(reads)
    cuts = statistics.quantiles(samples, n=100) if len(samples) >= 2 else [0.0] * 99
    cached = stack.name not in ("primary only", "+ replicas")
    return Result(
        workload=workload.name,
        layer=stack.name,
        ops=ops,
        reads=total_reads,
        seconds=seconds,
        p50=cuts[49],
        p99=cuts[98],
        hit_rate=(1 - db_reads / total_reads) if cached and total_reads else None,
        db_per_op=statements / ops if ops else 0.0,
        primary_cpu=sum(cpu1[p] - cpu0[p] for p in cpu1) / (seconds * (os.cpu_count() or 1)) if primary_pids else None,
        errors=sum(errors),
    )
