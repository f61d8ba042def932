"""The local topology against real PostgreSQL, Redis and PgBouncer processes."""

from __future__ import annotations

import functools
import os
import signal
import stat
import time
import tomllib
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psycopg
import pytest
import redis

from dbscale.errors import LocalTopologyError
from dbscale.local import LocalTopology
from dbscale.local.processes import is_alive, wait_gone

pytestmark = pytest.mark.integration

REPLICAS = ("main-replica1", "main-replica2")


def wait_until(predicate: Callable[[], bool], timeout: float = 10.0) -> bool:
    """Poll ``predicate`` until true or ``timeout``; return its last value."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.05)
    return True


def sql(topology: LocalTopology, name: str, query: str, params: tuple[Any, ...] = ()) -> Any:
    """First column of the first row of ``query`` on node ``name`` (None when no row)."""
    with psycopg.connect(topology.url(name), autocommit=True, prepare_threshold=None) as conn:
        cur = conn.execute(query, params)
        row = cur.fetchone() if cur.description else None
    return None if row is None else row[0]


def new_table(topology: LocalTopology) -> str:
    table = f"t_{uuid.uuid4().hex[:10]}"
    sql(topology, "main-primary", f"CREATE TABLE {table} (id int PRIMARY KEY, v text)")
    return table


def has_row(topology: LocalTopology, name: str, table: str, row_id: int) -> bool:
    try:
        return bool(sql(topology, name, f"SELECT count(*) FROM {table} WHERE id = %s", (row_id,)) == 1)
    except psycopg.errors.UndefinedTable:
        return False


def insert(topology: LocalTopology, table: str, row_id: int) -> str:
    """Insert a row on the primary; return the WAL insert LSN after the commit."""
    sql(topology, "main-primary", f"INSERT INTO {table} VALUES (%s, 'x')", (row_id,))
    return str(sql(topology, "main-primary", "SELECT pg_current_wal_insert_lsn()"))


# --------------------------------------------------------------------------- shape and config


def test_nodes_run_with_expected_roles(local_topology: LocalTopology) -> None:
    names = [n.name for n in local_topology.nodes()]
    assert names == [
        "main-primary", "main-replica1", "main-replica2", "shard0-primary", "shard1-primary",
        "redis", "pgbouncer-main", "pgbouncer-shard0", "pgbouncer-shard1",
    ]  # fmt: skip
    for node in local_topology.nodes():
        assert local_topology.is_running(node.name), node.name
        if node.kind == "postgres":
            assert sql(local_topology, node.name, "SELECT pg_is_in_recovery()") == (node.role == "replica")
            assert sql(local_topology, node.name, "SHOW shared_preload_libraries") == "pg_stat_statements"
            assert sql(local_topology, node.name, "SELECT inet_server_port()") == node.port
    for name in REPLICAS:
        assert sql(local_topology, name, "SELECT status FROM pg_stat_wal_receiver") == "streaming"


def test_config_file_describes_the_topology(local_topology: LocalTopology, topology_config_path: Path) -> None:
    assert stat.S_IMODE(topology_config_path.stat().st_mode) == 0o600
    assert stat.S_IMODE(local_topology.state_path.stat().st_mode) == 0o600
    doc = tomllib.loads(topology_config_path.read_text())
    assert set(doc) == {"cache", "groups", "sharding"}
    assert doc["sharding"] == {"strategy": "ring", "groups": ["shard0", "shard1"]}  # `up --shards 2` writes it
    assert doc["cache"] == {"redis_url": local_topology.url("redis")}
    assert list(doc["groups"]) == ["main", "shard0", "shard1"]
    assert doc["groups"]["main"] == {
        "primary": local_topology.url("main-primary"),
        "replicas": [local_topology.url(n) for n in REPLICAS],
        "pgbouncer": local_topology.url("pgbouncer-main"),
    }
    assert doc["groups"]["shard1"]["replicas"] == []
    for url in (doc["groups"]["shard0"]["primary"], doc["groups"]["shard0"]["pgbouncer"]):
        with psycopg.connect(url, prepare_threshold=None) as conn:
            assert conn.execute("SELECT current_user").fetchone() == ("dbscale",)


def test_pgbouncer_pools_for_the_group_primary(local_topology: LocalTopology) -> None:
    port = sql(local_topology, "pgbouncer-shard1", "SELECT inet_server_port()")
    assert port == local_topology.node("shard1-primary").port


def test_up_again_is_a_no_op(local_topology: LocalTopology) -> None:
    before = {n.name: local_topology.pid(n.name) for n in local_topology.nodes()}
    local_topology.up()
    assert {n.name: local_topology.pid(n.name) for n in local_topology.nodes()} == before


def test_shape_mismatch_says_to_purge(local_topology: LocalTopology) -> None:
    with pytest.raises(LocalTopologyError, match=r"replicas=3 \(state has 2\).*down --purge"):
        local_topology.up(replicas=3)


def test_unknown_node_lists_known_names(local_topology: LocalTopology) -> None:
    with pytest.raises(LocalTopologyError, match=r"known nodes: main-primary, main-replica1.*redis"):
        local_topology.stop("main-replica9")


def test_pause_on_a_primary_is_refused(local_topology: LocalTopology) -> None:
    with pytest.raises(LocalTopologyError, match="shard0-primary: it is a primary"):
        local_topology.pause_replay("shard0-primary")
    with pytest.raises(LocalTopologyError, match="redis node"):
        local_topology.pause_replay("redis")


# --------------------------------------------------------------------------- replication


def test_row_written_on_primary_appears_on_every_replica(local_topology: LocalTopology) -> None:
    table = new_table(local_topology)
    insert(local_topology, table, 1)
    for name in REPLICAS:
        assert wait_until(functools.partial(has_row, local_topology, name, table, 1)), name


def test_paused_replica_does_not_replay_until_resumed(restore_topology: LocalTopology) -> None:
    topo = restore_topology
    table = new_table(topo)
    insert(topo, table, 1)
    assert wait_until(lambda: has_row(topo, "main-replica1", table, 1))

    topo.pause_replay("main-replica1")
    assert topo.is_replay_paused("main-replica1")
    lsn = insert(topo, table, 2)
    # The WAL has arrived on the paused replica (received), yet the row is not visible there.
    assert wait_until(
        lambda: sql(topo, "main-replica1", "SELECT pg_last_wal_receive_lsn() >= %s::pg_lsn", (lsn,)) is True
    )
    assert wait_until(lambda: has_row(topo, "main-replica2", table, 2))
    assert not has_row(topo, "main-replica1", table, 2)

    topo.resume_replay("main-replica1")
    assert wait_until(lambda: has_row(topo, "main-replica1", table, 2))
    assert not topo.is_replay_paused("main-replica1")


# --------------------------------------------------------------------------- faults


def test_up_restarts_a_sigkilled_replica(restore_topology: LocalTopology) -> None:
    topo = restore_topology
    node = topo.node("main-replica2")
    old_pid = topo.kill("main-replica2")
    assert old_pid is not None and not is_alive(old_pid)
    assert not topo.is_running("main-replica2")
    assert (node.data_dir / "postmaster.pid").exists()  # stale pid file left behind

    topo.up()
    assert topo.pid("main-replica2") not in (None, old_pid)
    assert sql(topo, "main-replica2", "SELECT status FROM pg_stat_wal_receiver") == "streaming"
    table = new_table(topo)
    insert(topo, table, 7)
    assert wait_until(lambda: has_row(topo, "main-replica2", table, 7))


def test_up_restarts_a_sigkilled_redis(restore_topology: LocalTopology) -> None:
    topo = restore_topology
    client = redis.Redis.from_url(topo.url("redis"), socket_timeout=2)
    assert client.ping()
    old_pid = topo.kill("redis")
    assert old_pid is not None and not topo.is_running("redis")
    with pytest.raises((redis.ConnectionError, redis.TimeoutError)):  # refused, or timed out on a loaded box
        redis.Redis.from_url(topo.url("redis"), socket_timeout=1, socket_connect_timeout=1).ping()
    topo.up()
    assert topo.pid("redis") not in (None, old_pid)
    assert redis.Redis.from_url(topo.url("redis"), socket_timeout=2).ping()


def test_up_thaws_a_frozen_node(restore_topology: LocalTopology) -> None:
    topo = restore_topology
    pid = topo.pid("pgbouncer-shard0")
    assert pid is not None
    os.kill(pid, signal.SIGSTOP)
    with pytest.raises(psycopg.OperationalError):
        psycopg.connect(topo.url("pgbouncer-shard0"), connect_timeout=1).close()
    topo.up()
    assert topo.pid("pgbouncer-shard0") == pid
    assert sql(topo, "pgbouncer-shard0", "SELECT 1") == 1


def test_stop_and_start_a_node(restore_topology: LocalTopology) -> None:
    topo = restore_topology
    topo.stop("shard1-primary")
    assert not topo.is_running("shard1-primary")
    with pytest.raises(psycopg.OperationalError):
        sql(topo, "shard1-primary", "SELECT 1")
    topo.start("shard1-primary")
    assert sql(topo, "shard1-primary", "SELECT 1") == 1
    assert sql(topo, "pgbouncer-shard1", "SELECT 1") == 1


# --------------------------------------------------------------------------- own topologies


def test_down_leaves_no_process_behind(make_topology: Callable[[], LocalTopology]) -> None:
    topo = make_topology()
    topo.up(replicas=1, shards=1, pgbouncer=True)
    pids = topo.running_pids()
    mains = {topo.pid(n.name) for n in topo.nodes()}
    assert None not in mains and mains <= set(pids)
    assert len(pids) > len(mains)  # PostgreSQL children are included

    topo.down()
    assert wait_gone(pids, 0.0) == []
    assert topo.running_pids() == []
    assert not any(topo.is_running(n.name) for n in topo.nodes())
    topo.down()  # a second down is a no-op

    topo.down(purge=True)
    assert not topo.state_dir.exists()
    topo.down(purge=True)  # no state: no-op


def test_down_without_state_is_a_no_op(tmp_path: Path) -> None:
    LocalTopology(tmp_path / "nothing").down(purge=True)
    LocalTopology(tmp_path).down(purge=True)
    assert tmp_path.exists()


def test_promote_a_replica(make_topology: Callable[[], LocalTopology]) -> None:
    topo = make_topology()
    topo.up(replicas=1)
    topo.promote("main-replica1")
    assert sql(topo, "main-replica1", "SELECT pg_is_in_recovery()") is False
    assert topo.node("main-replica1").role == "primary"
    sql(topo, "main-replica1", "CREATE TABLE after_promotion (id int)")
    doc = tomllib.loads(topo.config_path.read_text())
    assert doc["groups"]["main"] == {"primary": topo.url("main-replica1"), "replicas": []}
    with pytest.raises(LocalTopologyError, match="it is a primary"):
        topo.promote("main-replica1")
    assert os.stat(topo.state_path).st_mode & 0o077 == 0
