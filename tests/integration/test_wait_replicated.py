"""``cluster.wait_replicated()`` on real streaming replicas: it returns once every replica serving reads has
replayed the writer's position, and with one replica's replay paused it times out naming that replica."""

from __future__ import annotations

import asyncio
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import text

from dbscale import AsyncCluster, Cluster, ConfigError, ReplicationTimeout
from dbscale.local import LocalTopology

pytestmark = pytest.mark.integration

REPLICAS = ["main-replica1", "main-replica2"]


@pytest.fixture
def table(topology_config_path: Path) -> Iterator[str]:
    name = f"wr_{uuid.uuid4().hex[:8]}"
    with Cluster.from_config(topology_config_path) as cluster, cluster.write() as conn:
        conn.execute(text(f"CREATE TABLE {name} (k int PRIMARY KEY, v int NOT NULL)"))
    yield name
    with Cluster.from_config(topology_config_path) as cluster, cluster.write() as conn:
        conn.execute(text(f"DROP TABLE IF EXISTS {name}"))


def on_replica(topology: LocalTopology, replica: str, sql: str) -> object:
    """``sql`` run on ``replica`` itself (not through the router)."""
    import psycopg

    with psycopg.connect(topology.url(replica)) as conn:
        row = conn.execute(sql).fetchone()
    return None if row is None else row[0]


def test_a_write_is_on_every_replica_once_wait_replicated_returns(
    topology_config_path: Path, restore_topology: LocalTopology, table: str
) -> None:
    """Replay is paused on one replica while 2,000 rows are written; wait_replicated times out naming that
    replica (and only it); resumed during a second wait, every replica has every row when it returns."""
    with Cluster.from_config(topology_config_path) as cluster:
        restore_topology.pause_replay("main-replica2")
        with cluster.write() as conn:
            conn.execute(text(f"INSERT INTO {table} SELECT g, g FROM generate_series(1, 2000) g"))
        started = time.monotonic()
        with pytest.raises(ReplicationTimeout) as caught:
            cluster.wait_replicated(timeout=1.0)
        assert 1.0 <= time.monotonic() - started < 10
        message = str(caught.value)
        assert "main-replica2 replayed" in message and "bytes short" in message, message
        assert "main-replica1" not in message, message

        threading.Timer(0.5, restore_topology.resume_replay, ["main-replica2"]).start()
        waited = cluster.wait_replicated(timeout=30)
        assert sorted(waited) == REPLICAS
        for replica in REPLICAS:
            assert on_replica(restore_topology, replica, f"SELECT count(*) FROM {table}") == 2000


def test_async_wait_replicated_and_a_bad_timeout(
    topology_config_path: Path, restore_topology: LocalTopology, table: str
) -> None:
    async def main() -> list[str]:
        async with AsyncCluster.from_config(topology_config_path) as acl:
            async with acl.write() as conn:
                await conn.execute(text(f"INSERT INTO {table} VALUES (1, 1)"))
            with pytest.raises(ConfigError, match="timeout=0"):
                await acl.wait_replicated(timeout=0)
            return await acl.wait_replicated(timeout=30)

    assert sorted(asyncio.run(main())) == REPLICAS
    for replica in REPLICAS:
        assert on_replica(restore_topology, replica, f"SELECT v FROM {table} WHERE k = 1") == 1


def test_a_stopped_replica_is_not_waited_for(
    topology_config_path: Path, restore_topology: LocalTopology, table: str
) -> None:
    """A replica that is down serves no reads: the wait is for the others, and it is banned, not an error."""
    with Cluster.from_config(topology_config_path) as cluster:
        cluster.refresh()
        restore_topology.stop("main-replica1")
        with cluster.write() as conn:
            conn.execute(text(f"INSERT INTO {table} VALUES (2, 2)"))
        assert cluster.wait_replicated(timeout=30) == ["main-replica2"]
        assert on_replica(restore_topology, "main-replica2", f"SELECT v FROM {table} WHERE k = 2") == 2
