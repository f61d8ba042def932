"""Parked read connections (:mod:`dbscale.routing.park`) on the real topology.

A read whose session is idle at the end leaves its connection checked out, parked in front of the
pool, for the next read. These tests hold the mechanism to its promises: a parked connection counts
as idle (``checkedout()`` stays a leak check), never makes a checkout wait or time out, is closed
by ``dispose``, is pinged after the idle window, and is dropped when a read on its node fails; the
write pool never parks.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import threading
import time
from pathlib import Path
from typing import Any

import psycopg
import pytest
from sqlalchemy import text

from dbscale import AsyncCluster, Cluster
from dbscale.config import libpq_conninfo, load_config
from dbscale.routing.park import AsyncParkingPool, ParkingPool
from dbscale.routing.pool import idle_window
from dbscale.routing.quick import checkin_idle, checkout_without_io

pytestmark = pytest.mark.integration

REPLICA = "main-replica1"


def one_replica(path: Path, **pool: Any) -> dict[str, Any]:
    main = load_config(path).groups["main"]
    group: dict[str, Any] = {"replicas": [str(main.replicas[0])], "weights": None, "pgbouncer": None}
    if pool:
        group["pool"] = pool
    return {"groups": {"main": group}}


def terminate(path: Path, pids: list[int]) -> None:
    """End the backends ``pids`` on the replica, waiting until they are gone."""
    main = load_config(path).groups["main"]
    with psycopg.connect(libpq_conninfo(str(main.replicas[0])), autocommit=True) as conn:
        for pid in pids:
            assert conn.execute("SELECT pg_terminate_backend(%s, 5000)", (pid,)).fetchone() == (True,)


def test_parked_connections_count_as_idle_and_writes_never_park(topology_config_path: Path, table: str) -> None:
    query = text(f"SELECT v FROM {table} WHERE k = :k")
    with Cluster.from_config(topology_config_path, **one_replica(topology_config_path)) as cluster:
        cluster.reset_causal()
        pool: Any = cluster.engine(REPLICA, read_only=True).pool
        assert isinstance(pool, ParkingPool)
        for k in range(1, 51):
            with cluster.read() as conn:
                assert conn.execute(query, {"k": k}).scalar_one() == k * 10
                assert pool.checkedout() == 1 and pool.parked() == 0  # in use: counted, not parked
        assert pool.parked() == 1  # one connection served all 50 reads, and waits parked
        assert pool.checkedout() == 0 and pool.checkedin() == 1
        assert "Current Checked out connections: 0" in pool.status()
        assert cluster.metrics.value("pool_connects_total", group="main", node=REPLICA) == 1
        with cluster.read() as a, cluster.read() as b:  # two at once: two connections, both parked after
            assert a.execute(query, {"k": 1}).scalar_one() == b.execute(query, {"k": 2}).scalar_one() - 10
            assert pool.checkedout() == 2
        assert pool.parked() == 2 and pool.checkedout() == 0
        with cluster.read() as conn:  # a read that used its SQLAlchemy Connection is checked in as usual
            assert conn.connection.execute(query, {"k": 3}).scalar_one() == 30
        assert pool.checkedout() == 0 and pool.checkedin() == 2
        # writes: a plain pool, nothing parked, nothing left checked out
        wpool: Any = cluster.engine("main-primary").pool
        assert not isinstance(wpool, ParkingPool)
        with cluster.write() as wconn:
            wconn.execute(text(f"UPDATE {table} SET v = v WHERE k = 1"))
        assert wpool.checkedout() == 0


@pytest.mark.parametrize("flavour", ["sync", "async"])
def test_parked_connections_never_make_a_checkout_wait(topology_config_path: Path, table: str, flavour: str) -> None:
    """More readers than connections: a finished read's connection goes to a waiting reader, not the stack.

    With pool_size 2, no overflow and a 3 s pool_timeout, 8 readers that each hold their connection
    a moment would time out if a finished read parked its connection while others wait in the pool.
    """
    settings = one_replica(topology_config_path, pool_size=2, max_overflow=0, pool_timeout="3s")
    query = text(f"SELECT v FROM {table} WHERE k = :k")
    readers, per_reader = 8, 60
    if flavour == "sync":
        errors: list[BaseException] = []
        with Cluster.from_config(topology_config_path, **settings) as cluster:
            cluster.reset_causal()

            def reader(seed: int) -> None:
                try:
                    for i in range(per_reader):
                        with cluster.read() as conn:
                            k = (seed + i) % 100 + 1
                            assert conn.execute(query, {"k": k}).scalar_one() == k * 10
                            time.sleep(0.002)
                except BaseException as exc:
                    errors.append(exc)

            threads = [threading.Thread(target=reader, args=(s,)) for s in range(readers)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            pool: Any = cluster.engine(REPLICA, read_only=True).pool
            assert errors == []
            assert pool.checkedout() == 0 and pool.parked() + pool._pool.qsize() <= 2
            assert cluster.metrics.value("pool_timeouts_total", group="main", node=REPLICA) == 0
            assert cluster.metrics.value("pool_connects_total", group="main", node=REPLICA) <= 2
        return

    async def main() -> None:
        async with AsyncCluster.from_config(topology_config_path, **settings) as acl:
            acl.reset_causal()

            async def reader(seed: int) -> None:
                for i in range(per_reader):
                    async with acl.read() as conn:
                        k = (seed + i) % 100 + 1
                        assert (await conn.execute(query, {"k": k})).scalar_one() == k * 10
                        await asyncio.sleep(0.002)

            await asyncio.gather(*(reader(s) for s in range(readers)))
            pool: Any = acl.engine(REPLICA, read_only=True).sync_engine.pool
            assert isinstance(pool, AsyncParkingPool)
            assert pool.checkedout() == 0 and pool.parked() + pool._pool.qsize() <= 2
            assert acl.metrics.value("pool_connects_total", group="main", node=REPLICA) <= 2

    asyncio.run(main())


def test_dispose_closes_parked_connections(topology_config_path: Path) -> None:
    cluster = Cluster.from_config(topology_config_path, **one_replica(topology_config_path))
    cluster.reset_causal()
    with cluster.read() as conn:
        assert conn.execute(text("SELECT 1")).scalar_one() == 1
    pool: Any = cluster.engine(REPLICA, read_only=True).pool
    fairy = checkout_without_io(pool)  # the parked one, handed out as it is
    assert fairy is not None
    driver = fairy.driver_connection
    assert checkin_idle(fairy) and pool.parked() == 1
    cluster.close()
    assert driver.closed and pool.parked() == 0

    async def main() -> None:
        acl = AsyncCluster.from_config(topology_config_path, **one_replica(topology_config_path))
        acl.reset_causal()
        async with acl.read() as conn:
            assert (await conn.execute(text("SELECT 1"))).scalar_one() == 1
        apool: Any = acl.engine(REPLICA, read_only=True).sync_engine.pool
        assert apool.parked() == 1
        adriver = apool._parked[-1].driver_connection
        await acl.close()
        assert adriver.closed and apool.parked() == 0

    asyncio.run(main())


def test_the_pool_a_dispose_makes_parks_too(topology_config_path: Path, table: str) -> None:
    """``engine.dispose()`` (failover handling, a forked worker) replaces the engine's pool with
    ``pool.recreate()``; reads park their connection in the new pool as in the old one, and the write
    pool keeps its idle window (what lets a checkout skip the ping, and an asyncio one skip the greenlet)."""
    query = text(f"SELECT v FROM {table} WHERE k = :k")

    def check(metrics: Any, old: Any, pool: Any) -> None:
        assert pool is not old and type(pool) is type(old) and old.parked() == 0
        assert pool.parked() == 1 and pool.checkedout() == 0  # one connection served the reads, and waits parked
        assert metrics.value("pool_connects_total", group="main", node=REPLICA) == 2  # one per pool

    def check_write_pool(engine: Any) -> None:
        old = engine.pool
        window = idle_window(old)
        assert window == 0.5  # the default ping_idle
        engine.dispose()
        assert engine.pool is not old and idle_window(engine.pool) == window

    with Cluster.from_config(topology_config_path, **one_replica(topology_config_path)) as cluster:
        cluster.reset_causal()
        engine = cluster.engine(REPLICA, read_only=True)
        with cluster.read() as conn:
            assert conn.execute(query, {"k": 1}).scalar_one() == 10
        old = engine.pool
        engine.dispose()
        for k in range(1, 21):
            with cluster.read() as conn:
                assert conn.execute(query, {"k": k}).scalar_one() == k * 10
        check(cluster.metrics, old, engine.pool)
        check_write_pool(cluster.engine("main-primary"))

    async def main() -> None:
        async with AsyncCluster.from_config(topology_config_path, **one_replica(topology_config_path)) as acl:
            acl.reset_causal()
            aengine = acl.engine(REPLICA, read_only=True)
            async with acl.read() as conn:
                assert (await conn.execute(query, {"k": 1})).scalar_one() == 10
            aold = aengine.sync_engine.pool
            await aengine.dispose()
            for k in range(1, 21):
                async with acl.read() as conn:
                    assert (await conn.execute(query, {"k": k})).scalar_one() == k * 10
            check(acl.metrics, aold, aengine.sync_engine.pool)
            check_write_pool(acl.engine("main-primary").sync_engine)

    asyncio.run(main())


def test_a_dead_parked_connection_is_retried_once_and_its_node_drops_the_rest(
    topology_config_path: Path, table: str
) -> None:
    """Within the idle window a parked connection is handed out unpinged: when it died, the read's one
    retry moves it (here to the primary), and the node's other parked connections are dropped."""
    query = text(f"SELECT v FROM {table} WHERE k = :k")
    with Cluster.from_config(topology_config_path, **one_replica(topology_config_path, ping_idle="30s")) as cluster:
        cluster.reset_causal()
        pool: Any = cluster.engine(REPLICA, read_only=True).pool
        with cluster.read() as a, cluster.read() as b:
            pids = [c.exec_driver_sql("SELECT pg_backend_pid()").scalar_one() for c in (a, b)]
        assert pool.parked() == 2
        terminate(topology_config_path, pids)
        with cluster.read() as conn:
            assert conn.execute(query, {"k": 4}).scalar_one() == 40
            assert conn.node == "main-primary"  # the replica is banned after the failure; the fallback served it
        assert cluster.metrics.value("read_retries_total", group="main") == 1
        assert pool.parked() == 0 and pool.checkedout() == 0  # neither dead connection is kept


def test_a_parked_connection_idle_past_the_window_is_pinged(topology_config_path: Path, table: str) -> None:
    query = text(f"SELECT v FROM {table} WHERE k = :k")

    def check(metrics: Any, pool: Any, node: str) -> None:
        assert node == REPLICA  # the ping found the dead connection and the pool reconnected: no retry
        assert metrics.value("read_retries_total", group="main") == 0
        assert metrics.value("pool_connects_total", group="main", node=REPLICA) == 2
        assert pool.parked() == 1 and pool.checkedout() == 0

    with Cluster.from_config(topology_config_path, **one_replica(topology_config_path, ping_idle="200ms")) as cluster:
        cluster.reset_causal()
        with cluster.read() as conn:
            pid = conn.exec_driver_sql("SELECT pg_backend_pid()").scalar_one()
        terminate(topology_config_path, [pid])
        time.sleep(0.3)
        with cluster.read() as conn:
            assert conn.execute(query, {"k": 5}).scalar_one() == 50
            node = conn.node
        check(cluster.metrics, cluster.engine(REPLICA, read_only=True).pool, node)

    async def main() -> None:
        settings = one_replica(topology_config_path, ping_idle="200ms")
        async with AsyncCluster.from_config(topology_config_path, **settings) as acl:
            acl.reset_causal()
            async with acl.read() as conn:
                pid = (await conn.exec_driver_sql("SELECT pg_backend_pid()")).scalar_one()
            terminate(topology_config_path, [pid])
            await asyncio.sleep(0.3)
            async with acl.read() as conn:
                assert (await conn.execute(query, {"k": 5})).scalar_one() == 50
                node = conn.node
            check(acl.metrics, acl.engine(REPLICA, read_only=True).sync_engine.pool, node)

    asyncio.run(main())


def test_cancelled_async_reads_leave_parked_connections_valid(topology_config_path: Path, table: str) -> None:
    """Reads cancelled at random moments (checkout, statement, exit) leak nothing, and every parked
    connection is live and idle: the next reads all succeed on it."""
    query = text(f"SELECT v FROM {table} WHERE k = :k")

    async def main() -> None:
        settings = one_replica(topology_config_path, pool_size=3, max_overflow=0, pool_timeout="3s")
        async with AsyncCluster.from_config(topology_config_path, **settings) as acl:
            acl.reset_causal()
            rng = random.Random(10)

            async def read(k: int) -> None:
                async with acl.read() as conn:
                    assert (await conn.execute(query, {"k": k})).scalar_one() == k * 10

            started = time.perf_counter()
            for k in range(1, 21):
                await read(k)
            typical = (time.perf_counter() - started) / 20
            for i in range(300):
                tasks = [asyncio.ensure_future(read((i + j) % 100 + 1)) for j in range(3)]
                await asyncio.sleep(rng.uniform(0.0, 1.5 * typical))
                for task in tasks:
                    task.cancel()
                for task in tasks:
                    with contextlib.suppress(asyncio.CancelledError):
                        await task
            await asyncio.sleep(0.2)  # shielded closes finish
            pool: Any = acl.engine(REPLICA, read_only=True).sync_engine.pool
            assert pool.checkedout() == 0
            assert pool.parked() + pool._pool.qsize() <= 3
            for f in pool._parked:
                assert f.driver_connection.pgconn.transaction_status == psycopg.pq.TransactionStatus.IDLE
            await asyncio.gather(*(read(k) for k in range(1, 31)))
            assert pool.checkedout() == 0
            assert acl.metrics.value("read_retries_total", group="main") == 0

    asyncio.run(main())
