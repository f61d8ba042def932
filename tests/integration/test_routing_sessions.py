"""ORM read sessions and read-only reads on the real local topology (primary + 2 streaming replicas)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Connection, select, text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncConnection
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from dbscale import AsyncCluster, Cluster, PoolTimeout
from dbscale.local import LocalTopology
from dbscale.local.processes import is_alive
from dbscale.routing.errors import is_read_only_error

from .helpers import wait_replicated

pytestmark = pytest.mark.integration

REPLICAS = ("main-replica1", "main-replica2")
ROWS = 20


class Base(DeclarativeBase):
    pass


class Item(Base):
    """The rows of the ``table`` fixture."""

    __tablename__ = "rt_orm_items"
    k: Mapped[int] = mapped_column(primary_key=True)
    v: Mapped[int]


@pytest.fixture
def table(topology_config_path: Path) -> Iterator[str]:
    """A fresh ``Item`` table with ROWS rows (v = 10 k), replayed by both replicas."""
    name = Item.__tablename__
    with Cluster.from_config(topology_config_path) as cluster:
        with cluster.write() as conn:
            conn.execute(text(f"DROP TABLE IF EXISTS {name}"))
            conn.execute(text(f"CREATE TABLE {name} (k int PRIMARY KEY, v int NOT NULL)"))
            conn.execute(text(f"INSERT INTO {name} SELECT g, g * 10 FROM generate_series(1, {ROWS}) g"))
        wait_replicated(cluster)
    yield name
    with Cluster.from_config(topology_config_path) as cluster, cluster.write() as conn:
        conn.execute(text(f"DROP TABLE IF EXISTS {name}"))


def backend_pid(bind: Connection) -> int:
    """The server pid behind a bound connection, read from libpq without running a statement."""
    pid: int = bind.connection.driver_connection.info.backend_pid  # type: ignore[union-attr]
    return pid


def kill_and_wait(topology: LocalTopology, node: str, backend: int) -> None:
    """SIGKILL ``node`` and wait until the backend of the session's connection has exited too."""
    topology.kill(node)
    deadline = time.monotonic() + 10
    while is_alive(backend):
        assert time.monotonic() < deadline, "the backend outlived its postmaster"
        time.sleep(0.01)


def counters(cluster: Cluster | AsyncCluster, node: str) -> tuple[float, float]:
    return (
        cluster.metrics.value("bans_total", group="main", node=node),
        cluster.metrics.value("read_retries_total", group="main"),
    )


def test_read_session_moves_off_a_replica_killed_before_its_first_query(
    restore_topology: LocalTopology, topology_config_path: Path, table: str
) -> None:
    with Cluster.from_config(topology_config_path) as cluster:
        cluster.start()
        with cluster.session() as s:
            victim = s.info["dbscale_node"]
            assert victim in REPLICAS
            assert isinstance(s.bind, Connection)
            kill_and_wait(restore_topology, victim, backend_pid(s.bind))
            items = s.scalars(select(Item).order_by(Item.k)).all()
            assert [(i.k, i.v) for i in items] == [(k, k * 10) for k in range(1, ROWS + 1)]
            moved_to = s.info["dbscale_node"]
            assert moved_to in REPLICAS and moved_to != victim
            assert s.get(Item, 1) is items[0]  # the identity map survived: one session, one snapshot
            assert s.execute(text("SELECT pg_is_in_recovery()")).scalar_one() is True
        assert counters(cluster, victim) == (1, 1)
        assert cluster.metrics.value("read_errors_total", group="main") == 0


def test_async_read_session_moves_off_a_replica_killed_before_its_first_query(
    restore_topology: LocalTopology, topology_config_path: Path, table: str
) -> None:
    async def run() -> None:
        async with AsyncCluster.from_config(topology_config_path) as acl:
            await acl.start()
            async with acl.session() as s:
                victim = s.info["dbscale_node"]
                assert victim in REPLICAS
                assert isinstance(s.bind, AsyncConnection)
                pid = backend_pid(s.bind.sync_connection)
                await asyncio.to_thread(kill_and_wait, restore_topology, victim, pid)
                items = (await s.scalars(select(Item).order_by(Item.k))).all()
                assert [(i.k, i.v) for i in items] == [(k, k * 10) for k in range(1, ROWS + 1)]
                moved_to = s.info["dbscale_node"]
                assert moved_to in REPLICAS and moved_to != victim
                assert await s.get(Item, 1) is items[0]
            assert counters(acl, victim) == (1, 1)
            assert acl.metrics.value("read_errors_total", group="main") == 0

    asyncio.run(run())


def test_read_session_after_a_write_reads_it_read_only(
    restore_topology: LocalTopology, topology_config_path: Path, table: str
) -> None:
    """Replay paused: a read session honours the causal token (primary) and cannot write there."""
    for name in REPLICAS:
        restore_topology.pause_replay(name)
    with Cluster.from_config(topology_config_path) as cluster:
        with cluster.session(write=True) as s:
            s.get_one(Item, 1).v = -1
        token = cluster.causal_token()
        with cluster.session() as s:
            assert s.info["dbscale_node"] == "main-primary"
            assert s.get_one(Item, 1).v == -1
            s.add(Item(k=ROWS + 1, v=0))
            with pytest.raises(DBAPIError) as caught:
                s.flush()
            assert is_read_only_error(caught.value)

        async def run() -> tuple[Any, ...]:
            # the token carried over to another cluster object
            async with AsyncCluster.from_config(topology_config_path) as acl, acl.session(after=token) as s:
                node, value = s.info["dbscale_node"], (await s.get_one(Item, 1)).v
                with pytest.raises(DBAPIError) as caught:
                    await s.execute(text(f"DELETE FROM {table}"))
                return node, value, is_read_only_error(caught.value)

        assert asyncio.run(run()) == ("main-primary", -1, True)
        with cluster.write() as conn:
            assert conn.execute(text(f"SELECT count(*) FROM {table}")).scalar_one() == ROWS


def test_reads_are_read_only_transactions_on_replicas_and_on_the_primary_fallback(
    topology_config_path: Path, table: str
) -> None:
    insert = text(f"INSERT INTO {table} VALUES ({ROWS + 1}, 0)")
    with Cluster.from_config(topology_config_path) as cluster, cluster.read() as conn:
        assert conn.node in REPLICAS
        assert conn.execute(text("SHOW transaction_read_only")).scalar_one() == "on"
        with pytest.raises(DBAPIError) as caught:
            conn.execute(insert)
        assert is_read_only_error(caught.value)
    # No replica configured: every read falls back to the primary, on the primary's read-only pool;
    # writes use its read-write pool (no PgBouncer in between), so read-only never leaks into a write.
    solo = {"replicas": [], "write_via_pgbouncer": False, "pool": {"pool_size": 1, "max_overflow": 0}}
    with Cluster.from_config(topology_config_path, groups={"main": solo}) as cluster:
        for _ in range(2):
            with cluster.read() as conn:
                assert conn.node == "main-primary"
                assert conn.execute(text("SHOW transaction_read_only")).scalar_one() == "on"
                with pytest.raises(DBAPIError) as caught:
                    conn.execute(insert)
                assert is_read_only_error(caught.value)
            with cluster.write() as conn:
                assert conn.execute(text("SHOW transaction_read_only")).scalar_one() == "off"
                conn.execute(text(f"UPDATE {table} SET v = v WHERE k = 1"))
        assert cluster.metrics.value("pool_connects_total", group="main", node="main-primary") == 2  # ro + rw
        assert cluster.metrics.value("read_fallbacks_total", group="main") == 2

    async def run() -> tuple[str, bool]:
        async with AsyncCluster.from_config(topology_config_path, groups={"main": solo}) as acl:
            async with acl.read() as conn:
                node = conn.node
                with pytest.raises(DBAPIError) as caught:
                    await conn.execute(insert)
            async with acl.write() as wconn:
                await wconn.execute(text(f"UPDATE {table} SET v = v WHERE k = 1"))
            return node, is_read_only_error(caught.value)

    assert asyncio.run(run()) == ("main-primary", True)


def test_a_read_that_times_out_on_the_pool_gives_back_its_in_flight_count(topology_config_path: Path) -> None:
    solo = {"replicas": [], "pool": {"pool_size": 1, "max_overflow": 0, "pool_timeout": 0.2}}
    with Cluster.from_config(topology_config_path, groups={"main": solo}) as cluster:
        with cluster.read() as held:
            held.execute(text("SELECT 1"))
            with pytest.raises(PoolTimeout), cluster.read():
                pass
        assert cluster.router().status()[0]["in_flight"] == 0

    async def run() -> int:
        async with AsyncCluster.from_config(topology_config_path, groups={"main": solo}) as acl:
            async with acl.read() as held:
                await held.execute(text("SELECT 1"))
                with pytest.raises(PoolTimeout):
                    async with acl.read():
                        pass
            in_flight: int = acl.router().status()[0]["in_flight"]
            return in_flight

    assert asyncio.run(run()) == 0


def test_read_session_connection_ends_the_retry_window(topology_config_path: Path, table: str) -> None:
    """Once the caller holds ``session.connection()``, a dead connection is its error, not a silent move."""
    with Cluster.from_config(topology_config_path) as cluster:
        cluster.start()
        with cluster.session() as s:
            node = s.info["dbscale_node"]
            pid = backend_pid(s.connection())
            with cluster.engine(node).connect() as other:
                assert other.execute(text("SELECT pg_terminate_backend(:p)"), {"p": pid}).scalar_one()
            deadline = time.monotonic() + 10
            while is_alive(pid):
                assert time.monotonic() < deadline
                time.sleep(0.01)
            with pytest.raises(DBAPIError):
                s.execute(select(Item))
            assert s.info["dbscale_node"] == node
        assert cluster.metrics.value("read_retries_total", group="main") == 0
