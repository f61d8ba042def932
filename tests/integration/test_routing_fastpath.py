"""The driver-level fast path on the real topology: what users get back is what SQLAlchemy gives them.

``text()`` and plain Core ``select()`` statements run on the pooled psycopg connection directly
(:mod:`dbscale.routing.fast`); under asyncio a checkout that needs no I/O skips SQLAlchemy's
greenlet (:mod:`dbscale.routing.quick`). These tests compare each result with the same statement
run through SQLAlchemy on the same connection, and check errors, prepared statements and checkouts.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Integer, column, select, table, text
from sqlalchemy import exc as sa_exc

from dbscale import AsyncCluster, Cluster
from dbscale.config import load_config
from dbscale.routing.quick import checkin_idle, checkout_without_io

pytestmark = pytest.mark.integration

REPLICA = "main-replica1"


def one_replica(path: Path) -> dict[str, Any]:
    main = load_config(path).groups["main"]
    return {"groups": {"main": {"replicas": [str(main.replicas[0])], "weights": None, "pgbouncer": None}}}


def shapes(result: Any) -> Any:
    return [tuple(row) for row in result]


def test_fast_results_match_sqlalchemy(topology_config_path: Path, table: str) -> None:
    t = table_of(table)
    statements: list[tuple[Any, Any]] = [
        (text(f"SELECT k, v FROM {table} WHERE k <= :n ORDER BY k"), {"n": 3}),
        (select(t.c.k, t.c.v).where(t.c.k <= 3).order_by(t.c.k), None),
        (text(f"SELECT v FROM {table} WHERE k = 999"), None),
    ]
    with Cluster.from_config(topology_config_path, **one_replica(topology_config_path)) as cluster:
        cluster.reset_causal()
        with cluster.read() as conn:
            for statement, params in statements:
                fast = conn.execute(statement, params)
                slow = conn.connection.execute(statement, params)  # SQLAlchemy's own path, same connection
                assert shapes(fast) == shapes(slow)
                assert conn.execute(statement, params).mappings().all() == (
                    conn.connection.execute(statement, params).mappings().all()
                )
            row = conn.execute(text(f"SELECT k, v FROM {table} WHERE k = :k"), {"k": 7}).one()
            assert (row.k, row.v, row._mapping["v"], row[1]) == (7, 70, 70, 70)
            assert conn.scalar(select(t.c.v).where(t.c.k == 8)) == 80
            assert conn.scalars(select(t.c.v).where(t.c.k < 3).order_by(t.c.k)).all() == [10, 20]
            assert conn.exec_driver_sql(f"SELECT v FROM {table} WHERE k = %(k)s", {"k": 9}).scalar_one() == 90
            assert conn.exec_driver_sql("SELECT 7 % 4").scalar_one() == 3  # no parameters: % is literal
            assert conn.node == REPLICA


def table_of(name: str) -> Any:
    return table(name, column("k", Integer), column("v", Integer))


def test_fast_errors_are_sqlalchemys(topology_config_path: Path, table: str) -> None:
    with Cluster.from_config(topology_config_path, **one_replica(topology_config_path)) as cluster:
        cluster.reset_causal()
        with cluster.read() as conn:
            with pytest.raises(sa_exc.ProgrammingError):
                conn.execute(text("SELECT no_such_column FROM pg_class"))
            assert conn.execute(text("SELECT 1")).scalar_one() == 1  # autocommit: nothing left aborted
        with pytest.raises(sa_exc.IntegrityError), cluster.write() as wconn:
            assert wconn.execute(text(f"UPDATE {table} SET v = -1 WHERE k = 1")).rowcount == 1
            wconn.execute(text(f"INSERT INTO {table} VALUES (2, 0)"))
        with cluster.write() as wconn:  # the failed transaction was rolled back, the pool's connection is clean
            assert wconn.execute(text(f"SELECT v FROM {table} WHERE k = 1")).scalar_one() == 10
            result = wconn.execute(text(f"UPDATE {table} SET v = v WHERE k <= :n"), {"n": 4})
            assert result.rowcount == 4 and not result.returns_rows


def test_direct_reads_use_prepared_statements(topology_config_path: Path, table: str) -> None:
    query = text(f"SELECT v FROM {table} WHERE k = :k")
    with Cluster.from_config(topology_config_path, **one_replica(topology_config_path)) as cluster:
        cluster.reset_causal()
        for k in range(1, 11):  # past psycopg's prepare_threshold (5)
            with cluster.read() as conn:
                assert conn.execute(query, {"k": k}).scalar_one() == k * 10
        with cluster.read() as conn:  # one reader: the pool hands out the connection the reads prepared on
            prepared = conn.exec_driver_sql(
                "SELECT count(*) FROM pg_prepared_statements WHERE statement LIKE %s", (f"%FROM {table} WHERE k%",)
            ).scalar_one()
        assert prepared == 1


def test_async_checkout_skips_the_greenlet_only_without_io(topology_config_path: Path) -> None:
    settings = one_replica(topology_config_path)
    settings["groups"]["main"]["pool"] = {"ping_idle": "300ms"}

    async def main() -> None:
        async with AsyncCluster.from_config(topology_config_path, **settings) as acl:
            acl.reset_causal()
            async with acl.read() as conn:
                assert (await conn.execute(text("SELECT 1"))).scalar_one() == 1
            pool = acl.router().engine(REPLICA, True).sync_engine.pool
            fairy = checkout_without_io(pool)  # used just now: no ping, no connect, no greenlet
            assert fairy is not None and pool.checkedout() == 1  # type: ignore[attr-defined]
            assert checkin_idle(fairy) and pool.checkedout() == 0  # type: ignore[attr-defined]
            await asyncio.sleep(0.4)
            assert checkout_without_io(pool) is None  # idle past the window: the ping needs I/O
            assert pool.checkedout() == 0  # type: ignore[attr-defined]
            async with acl.read() as conn:  # through the greenlet, pinged
                assert (await conn.execute(text("SELECT 2"))).scalar_one() == 2
            assert pool.checkedout() == 0  # type: ignore[attr-defined]

    asyncio.run(main())


def test_async_fast_path(topology_config_path: Path, table: str) -> None:
    t = table_of(table)

    async def main() -> None:
        async with AsyncCluster.from_config(topology_config_path, **one_replica(topology_config_path)) as acl:
            acl.reset_causal()
            async with acl.read() as conn:
                statement = select(t.c.k, t.c.v).where(t.c.k <= 3).order_by(t.c.k)
                fast = (await conn.execute(statement)).all()
                slow = (await conn.connection.execute(statement)).all()
                assert [tuple(r) for r in fast] == [tuple(r) for r in slow] == [(1, 10), (2, 20), (3, 30)]
                assert fast[0].v == 10
                assert await conn.scalar(text(f"SELECT v FROM {table} WHERE k = :k"), {"k": 5}) == 50
                with pytest.raises(sa_exc.ProgrammingError):
                    await conn.execute(text("SELECT no_such_column FROM pg_class"))
            with pytest.raises(sa_exc.IntegrityError):
                async with acl.write() as wconn:
                    await wconn.execute(text(f"UPDATE {table} SET v = -1 WHERE k = 1"))
                    await wconn.execute(text(f"INSERT INTO {table} VALUES (2, 0)"))
            async with acl.write() as wconn:
                assert (await wconn.execute(text(f"SELECT v FROM {table} WHERE k = 1"))).scalar_one() == 10
                result = await wconn.execute(text(f"UPDATE {table} SET v = v WHERE k <= :n"), {"n": 4})
                assert result.rowcount == 4

    asyncio.run(main())
