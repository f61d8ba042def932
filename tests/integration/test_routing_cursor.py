"""The fast path's one cursor per pooled connection (``CURSOR_ATTR`` in :mod:`dbscale.routing.aio`)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import exc as sa_exc
from sqlalchemy import text

from dbscale import AsyncCluster, Cluster
from dbscale.config import load_config
from dbscale.routing.aio import CURSOR_ATTR, KEEP_ROWS

pytestmark = pytest.mark.integration


def one_replica(path: Path) -> dict[str, Any]:
    main = load_config(path).groups["main"]
    return {"groups": {"main": {"replicas": [str(main.replicas[0])], "weights": None, "pgbouncer": None}}}


def test_one_cursor_per_connection_reused_across_reads_errors_and_writes(
    topology_config_path: Path, table: str
) -> None:
    query = text(f"SELECT k, v FROM {table} WHERE k = :k")
    with Cluster.from_config(topology_config_path, **one_replica(topology_config_path)) as cluster:
        cluster.reset_causal()
        cursors = set()
        for k in range(1, 6):
            with cluster.read() as conn:
                assert conn.execute(query, {"k": k}).one() == (k, k * 10)
                cursors.add(id(getattr(conn._fairy.driver_connection, CURSOR_ATTR)))
        assert len(cursors) == 1  # one parked connection, one cursor
        with cluster.read() as conn:
            with pytest.raises(sa_exc.ProgrammingError):
                conn.execute(text("SELECT no_such_column FROM pg_class"))
            assert conn.execute(query, {"k": 7}).one() == (7, 70)  # the same cursor, after the error
            many = conn.execute(text("SELECT g FROM generate_series(1, :n) g"), {"n": KEEP_ROWS + 1}).scalars().all()
            assert many == list(range(1, KEEP_ROWS + 2))
            driver = conn._fairy.driver_connection
            assert CURSOR_ATTR not in driver.__dict__  # a large result is not kept by the connection
            assert conn.execute(query, {"k": 8}).one() == (8, 80)
            assert CURSOR_ATTR in driver.__dict__
        with cluster.write() as wconn:
            assert wconn.execute(text(f"UPDATE {table} SET v = v WHERE k <= :n"), {"n": 4}).rowcount == 4
            assert wconn.execute(query, {"k": 2}).one() == (2, 20)
            wdriver: Any = wconn.connection.driver_connection
            assert CURSOR_ATTR in wdriver.__dict__


def test_async_fast_path_reuses_its_cursor(topology_config_path: Path, table: str) -> None:
    query = text(f"SELECT v FROM {table} WHERE k = :k")

    async def main() -> None:
        async with AsyncCluster.from_config(topology_config_path, **one_replica(topology_config_path)) as acl:
            acl.reset_causal()
            seen = set()
            for k in range(1, 6):
                async with acl.read() as conn:
                    assert (await conn.execute(query, {"k": k})).scalar_one() == k * 10
                    seen.add(id(getattr(conn._fairy.driver_connection, CURSOR_ATTR)))
            assert len(seen) == 1

    asyncio.run(main())
