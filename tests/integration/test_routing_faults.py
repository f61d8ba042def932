"""Routing under faults on real servers: a SIGKILLed replica, a promoted replica, PgBouncer."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.exc import DBAPIError

from dbscale import Cluster, PrimaryUnavailable
from dbscale.config import sqlalchemy_url
from dbscale.local import LocalTopology

pytestmark = pytest.mark.integration


def test_sigkilled_replica_during_reads_loses_no_read(
    restore_topology: LocalTopology, topology_config_path: Path, table: str
) -> None:
    threads, per_thread = 4, 500
    failures: list[BaseException] = []
    nodes: dict[str, int] = {}
    done = [0]
    lock = threading.Lock()
    with Cluster.from_config(topology_config_path, groups={"main": {"health_interval": 0.5}}) as cluster:
        cluster.start()

        def reader(seed: int) -> None:
            for i in range(per_thread):
                k = (seed * per_thread + i) % 100 + 1
                try:
                    with cluster.read() as conn:
                        v = conn.execute(text(f"SELECT v FROM {table} WHERE k = :k"), {"k": k}).scalar_one()
                        assert v == k * 10
                        node = conn.node
                except BaseException as exc:
                    with lock:
                        failures.append(exc)
                    continue
                with lock:
                    nodes[node] = nodes.get(node, 0) + 1
                    done[0] += 1

        workers = [threading.Thread(target=reader, args=(s,)) for s in range(threads)]
        for w in workers:
            w.start()
        while done[0] + len(failures) < 300:  # failures too, so a broken read path fails rather than hangs
            time.sleep(0.005)
        before = nodes.get("main-replica1", 0)
        assert before > 0  # it was serving reads when it died
        restore_topology.kill("main-replica1")
        for w in workers:
            w.join(120)
        assert failures == []
        assert sum(nodes.values()) == threads * per_thread
        assert cluster.metrics.value("bans_total", group="main", node="main-replica1") >= 1
        assert cluster.metrics.value("read_retries_total", group="main") >= 1  # the retry path ran
        # after the kill, replica1 stopped getting reads (the few in flight were retried elsewhere)
        status = {row["node"]: row for row in cluster.routing_status()}
        assert status["main-replica1"]["health"] in ("banned", "probation")


def test_fifty_clients_through_pgbouncer_have_no_prepared_statement_errors(
    topology_config_path: Path, table: str
) -> None:
    clients, repeats = 50, 20
    errors: list[BaseException] = []

    def hammer(run: Callable[[int], None]) -> list[BaseException]:
        found: list[BaseException] = []
        barrier = threading.Barrier(clients)

        def client(c: int) -> None:
            barrier.wait()
            for i in range(repeats):
                try:
                    run((c * repeats + i) % 100 + 1)
                except BaseException as exc:
                    found.append(exc)

        ts = [threading.Thread(target=client, args=(c,)) for c in range(clients)]
        for t in ts:
            t.start()
        for t in ts:
            t.join(120)
        return found

    cfg = {"groups": {"main": {"pool": {"pool_size": clients, "max_overflow": 0}}}}
    with Cluster.from_config(topology_config_path, **cfg) as cluster:

        def via_cluster(k: int) -> None:
            with cluster.write() as conn:  # writes go through the group's PgBouncer
                conn.execute(text(f"UPDATE {table} SET v = v WHERE k = :k"), {"k": k})

        errors = hammer(via_cluster)
        assert errors == []
        assert cluster.metrics.value("pool_connects_total", group="main", node="pgbouncer-main") > 0
        assert cluster.metrics.value("pool_connects_total", group="main", node="main-primary") == 0
        assert cluster.metrics.value("writes_total", group="main", node="main-primary") == clients * repeats
        bouncer_url = cluster.node("pgbouncer-main").url

    # Control: the same load with psycopg's prepared statements on does break behind PgBouncer.
    engine = create_engine(
        sqlalchemy_url(bouncer_url), pool_size=clients, max_overflow=0, connect_args={"prepare_threshold": 0}
    )
    try:

        def prepared(k: int) -> None:
            with engine.begin() as conn:
                conn.execute(text(f"UPDATE {table} SET v = v WHERE k = :k"), {"k": k})

        control = hammer(prepared)
    finally:
        engine.dispose()
    assert any(isinstance(e, DBAPIError) and "prepared statement" in str(e) for e in control)


def test_promoted_replica_takes_writes_in_the_same_process(
    make_topology: Callable[[], LocalTopology],
) -> None:
    topo = make_topology()
    topo.up(replicas=1, shards=0, pgbouncer=False)
    settings = {"groups": {"main": {"health_interval": 0.25, "write_timeout": 2.0, "ban_initial": 1.0}}}
    with Cluster.from_config(topo.config_path, **settings) as cluster:
        with cluster.write() as conn:
            conn.execute(text("CREATE TABLE failover (id serial PRIMARY KEY, note text)"))
            conn.execute(text("INSERT INTO failover (note) VALUES ('before')"))
        primary_port = cluster.node("main-primary").url.split(":")[-1].split("/")[0]
        topo.stop("main-primary")
        # no writer: a clear error within the configured timeout, not a hang
        for _ in range(2):
            started = time.monotonic()
            with pytest.raises(PrimaryUnavailable), cluster.write() as conn:
                conn.execute(text("INSERT INTO failover (note) VALUES ('lost')"))
            assert time.monotonic() - started <= 2.0 + 1.0
        topo.promote("main-replica1")
        deadline = time.monotonic() + 20
        while True:
            try:
                with cluster.write() as conn:
                    conn.execute(text("INSERT INTO failover (note) VALUES ('after')"))
                    port = conn.execute(text("SELECT inet_server_port()")).scalar_one()
                break
            except PrimaryUnavailable:
                assert time.monotonic() < deadline, "the promoted replica never took writes"
        assert str(port) != primary_port
        assert cluster.router().state.writer == "main-replica1"
        with cluster.read() as conn:
            notes = conn.execute(text("SELECT note FROM failover ORDER BY id")).scalars().all()
        assert notes == ["before", "after"]
