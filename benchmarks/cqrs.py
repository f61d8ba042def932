"""CQRS: append throughput next to the ``eventsourcing`` library's PostgreSQL recorder, projection throughput, lag.

Appends: W writer threads, one event per transaction (a command), to 1,000 aggregates; dbscale
appends inside ``cluster.write()`` (no table lock: per-aggregate stream rows), eventsourcing's
``PostgresApplicationRecorder.insert_events`` locks the table per transaction to keep its
notification ids gap-free. Rounds alternate which library goes first; medians over rounds.
Projection: ``run_once()`` from the start of a log holding only a backlog (run first, on a fresh
topology), one UPSERT per event. Lag: a running projector
(LISTEN/NOTIFY) and one writer; from the writer's COMMIT returning to the projector's COMMIT.

    python benchmarks/cqrs.py                 # starts a throwaway LocalTopology (one primary)
    python benchmarks/cqrs.py --config dbscale.toml --events 2000
"""

from __future__ import annotations

import argparse
import statistics
import sys
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path

from _topology import bench_config
from eventsourcing.persistence import StoredEvent
from eventsourcing.postgres import PostgresApplicationRecorder, PostgresDatastore
from sqlalchemy import Connection, text
from sqlalchemy.engine import make_url

from dbscale import Cluster
from dbscale.cqrs import Event, Projector

AGGREGATES = 1_000


def threaded(writers: int, total: int, append: Callable[[int, int], None]) -> float:
    """Run ``append(writer, i)`` ``total`` times over ``writers`` threads; events per second."""
    per = total // writers
    barrier = threading.Barrier(writers + 1)
    errors: list[BaseException] = []

    def work(w: int) -> None:
        barrier.wait()
        try:
            for i in range(per):
                append(w, i)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(w,)) for w in range(writers)]
    for t in threads:
        t.start()
    barrier.wait()
    started = time.perf_counter()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]
    return per * writers / (time.perf_counter() - started)


def appends(cluster: Cluster, config: Path, writers: int, total: int, rounds: int) -> dict[str, list[float]]:
    url = make_url(str(cluster.node("main-primary").url))
    datastore = PostgresDatastore(
        url.database or "postgres",
        url.host or "127.0.0.1",
        url.port or 5432,
        url.username or "",
        url.password or "",
        pool_size=writers,
        max_overflow=0,
        max_waiting=writers,
    )
    table = f"es_{uuid.uuid4().hex[:8]}"
    recorder = PostgresApplicationRecorder(datastore, events_table_name=table)
    recorder.create_table()
    ids = [uuid.uuid4() for _ in range(AGGREGATES)]
    versions: dict[uuid.UUID, int] = {}
    lock = threading.Lock()

    def es_append(w: int, i: int) -> None:
        agg = ids[(w * 7919 + i) % AGGREGATES]
        with lock:
            versions[agg] = version = versions.get(agg, 0) + 1
        recorder.insert_events([StoredEvent(agg, version, "bench:Happened", b'{"n": 1}')])

    kind = f"bench{uuid.uuid4().hex[:6]}"

    def dbscale_append(w: int, i: int) -> None:
        with cluster.write() as conn:
            cluster.events.append(conn, kind, {"n": 1}, aggregate_id=f"a{(w * 7919 + i) % AGGREGATES}")

    engine = cluster.engine("main-primary")

    def dbscale_raw_append(w: int, i: int) -> None:
        with engine.begin() as conn:  # the append alone: no router (no pre-ping pool, no causal token read)
            cluster.events.append(conn, kind, {"n": 1}, aggregate_id=f"a{(w * 7919 + i) % AGGREGATES}")

    results: dict[str, list[float]] = {"dbscale": [], "dbscale-raw": [], "eventsourcing": []}
    order = [("dbscale", dbscale_append), ("dbscale-raw", dbscale_raw_append), ("eventsourcing", es_append)]
    for _, fn in order:  # warm up
        threaded(writers, writers * 20, fn)
    for r in range(rounds):
        for name, fn in order[r % 3 :] + order[: r % 3]:
            results[name].append(threaded(writers, total, fn))
    datastore.close()
    with cluster.write() as conn:
        conn.exec_driver_sql(f"DROP TABLE {table}")
    return results


def counting_projector(cluster: Cluster, kind: str, name: str) -> Projector:
    projector = Projector(name, cluster, batch_size=500)

    @projector.on(kind)
    def count(conn: Connection, event: Event) -> None:
        conn.execute(
            text(f"INSERT INTO {name} VALUES (:a, 1) ON CONFLICT (agg) DO UPDATE SET n = {name}.n + 1"),
            {"a": event.aggregate_id},
        )

    with cluster.write() as conn:
        conn.exec_driver_sql(f"CREATE TABLE {name} (agg text PRIMARY KEY, n bigint NOT NULL)")
    return projector


def projection(cluster: Cluster, backlog: int, rounds: int) -> list[float]:
    kind = f"proj{uuid.uuid4().hex[:6]}"
    for start in range(0, backlog, 500):
        with cluster.write() as conn:
            for i in range(start, min(backlog, start + 500)):
                cluster.events.append(conn, kind, {"n": 1}, aggregate_id=f"p{i % AGGREGATES}")
    rates = []
    for r in range(rounds):
        projector = counting_projector(cluster, kind, f"{kind}_r{r}")
        started = time.perf_counter()
        n = projector.run_once()
        elapsed = time.perf_counter() - started
        assert n == backlog, f"the log must hold only this backlog (a fresh topology): {n} != {backlog}"
        rates.append(n / elapsed)
    return rates


def lag(cluster: Cluster, events: int) -> list[float]:
    kind = f"lag{uuid.uuid4().hex[:6]}"
    projector = counting_projector(cluster, kind, kind)
    committed: dict[int, float] = {}
    applied: dict[int, float] = {}

    @projector.after_commit
    def done(batch: Sequence[Event]) -> None:
        now = time.perf_counter()
        applied.update((e.id, now) for e in batch)

    projector.run_once()
    runner = threading.Thread(target=projector.run, daemon=True)
    runner.start()
    time.sleep(1.0)
    for i in range(events):
        with cluster.write() as conn:
            event_id = cluster.events.append(conn, kind, {"n": 1}, aggregate_id=f"l{i % 50}").id
        committed[event_id] = time.perf_counter()
        time.sleep(0.005)
    deadline = time.monotonic() + 10
    while not committed.keys() <= applied.keys() and time.monotonic() < deadline:
        time.sleep(0.01)
    projector.stop()
    runner.join(5)
    # an event can be projected before its writer reads the clock: count that as no lag
    return [max(0.0, applied[i] - t) for i, t in committed.items() if i in applied]


def pct(data: Sequence[float], q: float) -> float:
    ordered = sorted(data)
    return ordered[min(len(ordered) - 1, int(len(ordered) * q))]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, help="dbscale.toml of a running topology (default: start one)")
    parser.add_argument("--events", type=int, default=2_000, help="appends per library per round and writer count")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args(argv)
    with bench_config(args.config, "cqrs") as config, Cluster.from_config(config) as cluster:
        cluster.install()
        proj = statistics.median(projection(cluster, args.events * 2, args.rounds))  # first: the log is empty
        rows = []
        for writers in (1, 4):
            res = appends(cluster, config, writers, args.events, args.rounds)
            base = statistics.median(res["eventsourcing"])
            for name in ("eventsourcing", "dbscale", "dbscale-raw"):
                rate = statistics.median(res[name])
                rows.append((f"append, {writers} writer(s)", name, rate, rate / base))
        lags = lag(cluster, 300)
    print(f"One event per transaction, {args.events} per round, {args.rounds} alternating rounds, medians\n")
    print("| benchmark | library | events/s | ratio vs eventsourcing |")
    print("|---|---|---:|---:|")
    for bench, name, rate, ratio in rows:
        label = {
            "eventsourcing": "eventsourcing `PostgresApplicationRecorder.insert_events`",
            "dbscale": "dbscale `append` in `cluster.write()`",
            "dbscale-raw": "dbscale `append` in a plain `engine.begin()`",
        }[name]
        print(f"| {bench} | {label} | {rate:,.0f} | {ratio:.2f}x |")
    print(
        f"| projection catch-up ({args.events * 2} events, one UPSERT each) | dbscale `run_once()` | {proj:,.0f} | - |"
    )
    print(
        f"\nLag, append COMMIT to projection COMMIT ({len(lags)} events, LISTEN/NOTIFY): "
        f"p50 {statistics.median(lags) * 1e3:.1f} ms, p99 {pct(lags, 0.99) * 1e3:.1f} ms"
    )
    ok = len(lags) == 300 and statistics.median(lags) < 0.050
    print(f"target: p50 lag < 50 ms — {'met' if ok else 'NOT met'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
