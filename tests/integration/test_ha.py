"""Patroni HA on the real local topology (``dbscale up --ha``): the primary is SIGKILLed under load.

Four writer and four reader threads share one :class:`dbscale.Cluster`; the leader member (Patroni
and its postmaster) is SIGKILLed. Patroni promotes the synchronous standby; the same threads must
write again within Patroni's failover time, every acknowledged write must be on the new primary
(synchronous replication: nothing acknowledged is lost), and no read may fail. dbscale itself never
promotes (``dbscale node promote`` is refused). PgBouncer must follow the new leader (Patroni
callback), and ``dbscale up`` must bring the old primary back as a replica of the new one.

The default test runs one failover; ``test_repeated_failovers`` (slow) fails over three times in a
row under the same load, each time killing whichever member leads.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import psycopg
import pytest
from sqlalchemy import text

from dbscale import Cluster
from dbscale.errors import LocalTopologyError
from dbscale.local import LocalTopology
from dbscale.local import patroni as local_patroni
from dbscale.probe import patroni_cluster

from ..conftest import make_state_dir

pytestmark = pytest.mark.integration

WRITERS = READERS = 4
#: Patroni's failover time here: the dead leader's lock lives ``ttl`` (10 s), a replica notices within
#: ``loop_wait`` (1 s) and promotes; the router needs one health round (1 s) more. Generous margin for
#: a loaded 2-core machine.
FAILOVER_BUDGET = local_patroni.TTL + 20.0
TABLE = "ha_writes"


@pytest.fixture(scope="module")
def ha() -> Iterator[LocalTopology]:
    """One HA topology for the module: Patroni runs main (primary + 2 replicas), etcd, PgBouncer."""
    state_dir = make_state_dir("dbscale-test-ha-")
    topology = LocalTopology(state_dir)
    try:
        topology.up(replicas=2, ha=True, pgbouncer=True)
        with psycopg.connect(topology.url(leader_name(topology)), autocommit=True) as conn:
            conn.execute(f"CREATE TABLE {TABLE} (id bigint PRIMARY KEY, writer int NOT NULL)")
        yield topology
    finally:
        topology.down(purge=True)
        shutil.rmtree(state_dir, ignore_errors=True)


def patroni_view(topology: LocalTopology) -> dict[str, Any]:
    members = [n for n in topology.nodes() if n.patroni]
    return patroni_cluster([local_patroni.api_url(n) for n in members], timeout=1.0)


def leader_name(topology: LocalTopology) -> str:
    name = local_patroni.leader(patroni_view(topology))
    assert name is not None, patroni_view(topology)
    return name


@dataclass
class Load:
    """Writer and reader threads on one cluster; what they saw, with monotonic timestamps.

    ``acked`` holds (id, writer, started, acknowledged) of every write whose COMMIT returned.
    """

    cluster: Cluster
    acked: list[tuple[int, int, float, float]] = field(default_factory=list)
    write_errors: list[tuple[float, str]] = field(default_factory=list)
    reads: int = 0
    read_errors: list[tuple[float, str]] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)
    lock: threading.Lock = field(default_factory=threading.Lock)
    next_id: list[int] = field(default_factory=lambda: [0] * WRITERS)

    def writer(self, index: int, base: int) -> None:
        while not self.stop.is_set():
            row_id = base + index * 10_000_000 + self.next_id[index]
            self.next_id[index] += 1  # never reuse an id: a write that raised may still have committed
            started = time.monotonic()
            try:
                with self.cluster.write() as conn:
                    conn.execute(text(f"INSERT INTO {TABLE} VALUES (:id, :w)"), {"id": row_id, "w": index})
            except Exception as exc:  # the outage: PrimaryUnavailable, a dropped connection...
                with self.lock:
                    self.write_errors.append((time.monotonic(), f"{type(exc).__name__}: {exc}"[:200]))
                time.sleep(0.05)
                continue
            with self.lock:
                self.acked.append((row_id, index, started, time.monotonic()))
            time.sleep(0.01)

    def reader(self) -> None:
        while not self.stop.is_set():
            try:
                with self.cluster.read() as conn:
                    conn.execute(text(f"SELECT count(*) FROM {TABLE}")).scalar_one()
            except Exception as exc:
                with self.lock:
                    self.read_errors.append((time.monotonic(), f"{type(exc).__name__}: {exc}"[:200]))
            else:
                with self.lock:
                    self.reads += 1
            time.sleep(0.01)


@dataclass(frozen=True)
class Failover:
    old_leader: str
    new_leader: str
    promoted_after: float  # kill -> Patroni reports the new leader running
    writes_resumed_after: float  # kill -> the last of the writers has written again
    acked: int
    lost: int
    reads: int
    read_errors: list[tuple[float, str]]


def fail_over_under_load(topology: LocalTopology, cluster: Cluster, base: int, settle: float = 3.0) -> Failover:
    """SIGKILL the leader during the load; return once every writer has written again and ``settle`` passed."""
    load = Load(cluster)
    threads = [threading.Thread(target=load.writer, args=(i, base), daemon=True) for i in range(WRITERS)]
    threads += [threading.Thread(target=load.reader, daemon=True) for _ in range(READERS)]
    for t in threads:
        t.start()
    try:
        time.sleep(2.0)  # the load runs on the old primary first
        old = leader_name(topology)
        assert len(load.acked) > 0, load.write_errors[-3:]
        killed_at = time.monotonic()
        topology.kill(old)
        dead_at = time.monotonic()  # a write started after this cannot have gone to the old primary
        promoted_at = None
        deadline = killed_at + FAILOVER_BUDGET
        resumed: dict[int, float] = {}
        while time.monotonic() < deadline:
            if promoted_at is None:
                new = local_patroni.leader(patroni_view(topology))
                if new is not None and new != old:
                    promoted_at = time.monotonic()
            with load.lock:
                after = [(writer, acked) for _, writer, started, acked in load.acked if started > dead_at]
            for writer, acked in after:
                resumed.setdefault(writer, acked)
            if promoted_at is not None and len(resumed) == WRITERS:
                break
            time.sleep(0.1)
        time.sleep(settle)  # keep reading and writing on the new primary for a while
    finally:
        load.stop.set()
        for t in threads:
            t.join(30)
    assert promoted_at is not None, f"Patroni promoted nobody within {FAILOVER_BUDGET:.0f}s: {patroni_view(topology)}"
    assert len(resumed) == WRITERS, f"only writers {sorted(resumed)} wrote again; last errors {load.write_errors[-3:]}"
    new_leader = leader_name(topology)
    acked_ids = {row_id for row_id, *_ in load.acked}
    with psycopg.connect(topology.url(new_leader), autocommit=True) as conn:
        present = {r[0] for r in conn.execute(f"SELECT id FROM {TABLE} WHERE id >= %s", (base,))}
    return Failover(
        old_leader=old,
        new_leader=new_leader,
        promoted_after=promoted_at - killed_at,
        writes_resumed_after=max(resumed.values()) - killed_at,
        acked=len(acked_ids),
        lost=len(acked_ids - present),
        reads=load.reads,
        read_errors=load.read_errors,
    )


def check(report: Failover) -> None:
    print(
        f"\nfailover {report.old_leader} -> {report.new_leader}: promoted after {report.promoted_after:.1f}s, "
        f"writes resumed after {report.writes_resumed_after:.1f}s; {report.acked} acknowledged writes, "
        f"{report.lost} lost; {report.reads} reads, {len(report.read_errors)} failed"
    )
    assert report.new_leader != report.old_leader
    assert report.lost == 0, f"{report.lost} acknowledged writes are missing on the new primary"
    assert report.read_errors == [], report.read_errors[:5]
    assert report.writes_resumed_after < FAILOVER_BUDGET


def bouncer_lands_on(topology: LocalTopology) -> tuple[int, bool]:
    with psycopg.connect(topology.url("pgbouncer-main"), autocommit=True, prepare_threshold=None) as conn:
        row = conn.execute("SELECT inet_server_port(), pg_is_in_recovery()").fetchone()
    assert row is not None
    return int(row[0]), bool(row[1])


def wait_for(predicate: Any, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if predicate():
                return True
        except psycopg.Error:
            pass
        time.sleep(0.2)
    return False


def test_up_ha_patroni_leads_with_a_sync_standby_and_status_shows_it(ha: LocalTopology) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "dbscale.cli", "status", "--state-dir", str(ha.state_dir), "--json"],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    members = {m["name"]: m for m in json.loads(result.stdout)["patroni"]["main"]["members"]}
    assert set(members) == {"main-primary", "main-replica1", "main-replica2"}
    assert sorted(m["role"] for m in members.values()) == ["leader", "replica", "sync_standby"]
    assert all(m["state"] == "running" for m in members.values())
    assert bouncer_lands_on(ha) == (ha.node(leader_name(ha)).port, False)


def test_dbscale_never_promotes_in_ha_mode(ha: LocalTopology) -> None:
    replica = next(n.name for n in ha.nodes() if n.patroni and n.name != leader_name(ha))
    with pytest.raises(LocalTopologyError, match="never promotes"):
        ha.promote(replica)


def test_sigkill_primary_under_load_patroni_fails_over_nothing_acknowledged_is_lost(ha: LocalTopology) -> None:
    with Cluster.from_config(ha.config_path) as cluster:
        report = fail_over_under_load(ha, cluster, base=1_000_000_000)
    check(report)
    new_port = ha.node(report.new_leader).port
    assert wait_for(lambda: bouncer_lands_on(ha) == (new_port, False), 15.0), "PgBouncer still points elsewhere"
    ha.up()  # the old leader comes back, rewound, as a replica of the new one
    view = patroni_view(ha)
    roles = {m["name"]: (m["role"], m["state"]) for m in view["members"]}
    assert roles[report.old_leader] in {("replica", "running"), ("sync_standby", "running")}, roles
    assert local_patroni.leader(view) == report.new_leader


@pytest.mark.slow
def test_repeated_failovers(ha: LocalTopology) -> None:
    """Three failovers in a row, each killing whoever leads; the old leader rejoins between them."""
    with Cluster.from_config(ha.config_path) as cluster:
        for round_ in range(3):
            report = fail_over_under_load(ha, cluster, base=(2 + round_) * 1_000_000_000, settle=10.0)
            check(report)
            ha.up()
