"""Round trips on the hot path, counted on the wire by a loopback proxy in front of each node.

A warm one-statement ``read()`` is one exchange (no ping, no BEGIN/ROLLBACK); a warm one-statement
``write()`` is at most three (BEGIN, the statement, COMMIT carrying the causal LSN back), with the
token recorded; ``read(snapshot=True)`` with two statements is at most four (BEGIN, two, ROLLBACK).
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import text

from dbscale import AsyncCluster, Cluster
from dbscale.config import load_config

from .helpers import RoundTripProxy, wait_replicated

pytestmark = pytest.mark.integration

WARM = 10  # past psycopg's prepare_threshold (5), whose PREPARE is a round trip of its own


class Proxied:
    def __init__(self, path: Path) -> None:
        main = load_config(path).groups["main"]
        assert main.pgbouncer is not None
        self.path = path
        self.primary = RoundTripProxy(str(main.primary))
        self.replica = RoundTripProxy(str(main.replicas[0]))
        self.bouncer = RoundTripProxy(str(main.pgbouncer))
        self.table = f"rt_{uuid.uuid4().hex[:8]}"

    def settings(self, via_pgbouncer: bool = False, **pool: Any) -> dict[str, Any]:
        return {
            "groups": {
                "main": {
                    "primary": self.primary.url,
                    "replicas": [self.replica.url],
                    "weights": None,
                    "pgbouncer": self.bouncer.url if via_pgbouncer else None,
                    "health_interval": "60s",  # no monitor traffic while counting
                    **({"pool": pool} if pool else {}),
                }
            }
        }

    def reset(self) -> None:
        for proxy in (self.primary, self.replica, self.bouncer):
            proxy.reset()

    def counts(self) -> tuple[int, int, int]:
        return self.primary.count, self.replica.count, self.bouncer.count


@pytest.fixture
def proxied(topology_config_path: Path) -> Iterator[Proxied]:
    p = Proxied(topology_config_path)
    with Cluster.from_config(topology_config_path, **p.settings()) as cluster:
        with cluster.write() as conn:
            conn.execute(text(f"CREATE TABLE {p.table} (id int PRIMARY KEY, v int NOT NULL)"))
            conn.execute(text(f"INSERT INTO {p.table} SELECT g, 0 FROM generate_series(1, 100) g"))
        wait_replicated(cluster)
    yield p
    with Cluster.from_config(topology_config_path) as cluster, cluster.write() as conn:
        conn.execute(text(f"DROP TABLE {p.table}"))
    for proxy in (p.primary, p.replica, p.bouncer):
        proxy.close()


@pytest.mark.parametrize("via_pgbouncer", [False, True], ids=["direct", "pgbouncer"])
def test_round_trips_sync(proxied: Proxied, via_pgbouncer: bool) -> None:
    select = text(f"SELECT v FROM {proxied.table} WHERE id = :id")
    update = text(f"UPDATE {proxied.table} SET v = v + 1 WHERE id = :id")
    with Cluster.from_config(proxied.path, **proxied.settings(via_pgbouncer)) as cluster:
        cluster.start()
        for i in range(WARM):
            with cluster.write() as conn:
                conn.execute(update, {"id": i + 1})
        wait_replicated(cluster)
        cluster.reset_causal()
        for i in range(WARM):
            with cluster.read() as conn:
                conn.execute(select, {"id": i + 1}).scalar_one()
            with cluster.read(snapshot=True) as conn:
                conn.execute(select, {"id": 1}).scalar_one()
                conn.execute(select, {"id": 2}).scalar_one()

        proxied.reset()
        with cluster.read() as conn:
            conn.execute(select, {"id": 7}).scalar_one()
            assert conn.node == "main-replica1"
        read = proxied.counts()

        proxied.reset()
        with cluster.read(snapshot=True) as conn:
            first = conn.execute(text("SELECT now()")).scalar_one()
            second = conn.execute(text("SELECT now()")).scalar_one()
        snapshot = proxied.counts()
        assert first == second  # one transaction

        with cluster.write() as conn:  # warm: the write pool's connection may have idled past ping_idle
            conn.execute(update, {"id": 4})
        proxied.reset()
        with cluster.write() as conn:
            conn.execute(update, {"id": 3})
        write = proxied.counts()
        print(
            f"round trips ({'pgbouncer' if via_pgbouncer else 'direct'}): read {read}, snapshot {snapshot}, write {write}"
        )
        token = cluster.causal_token()
        assert token is not None

        cluster.reset_causal()
        with cluster.write() as conn:
            conn.execute(text("SELECT 1"))
        assert cluster.causal_token() is None  # wrote nothing: no token

    writes = write[2] if via_pgbouncer else write[0]
    assert read == (0, 1, 0)
    assert snapshot[1] <= 4 and snapshot[0] == snapshot[2] == 0
    assert writes <= 3 and write[1] == 0


def test_round_trips_async(proxied: Proxied) -> None:
    select = text(f"SELECT v FROM {proxied.table} WHERE id = :id")
    update = text(f"UPDATE {proxied.table} SET v = v + 1 WHERE id = :id")

    async def main() -> tuple[tuple[int, int, int], ...]:
        async with AsyncCluster.from_config(proxied.path, **proxied.settings()) as acl:
            await acl.start()
            for i in range(WARM):
                async with acl.write() as conn:
                    await conn.execute(update, {"id": i + 1})
            await asyncio.sleep(0.5)
            await acl.refresh()
            acl.reset_causal()
            for i in range(WARM):
                async with acl.read() as rc:
                    (await rc.execute(select, {"id": i + 1})).scalar_one()
                async with acl.read(snapshot=True) as rc:
                    (await rc.execute(select, {"id": 1})).scalar_one()
                    (await rc.execute(select, {"id": 2})).scalar_one()
            proxied.reset()
            async with acl.read() as rc:
                (await rc.execute(select, {"id": 7})).scalar_one()
            read = proxied.counts()
            proxied.reset()
            async with acl.read(snapshot=True) as rc:
                first = (await rc.execute(text("SELECT now()"))).scalar_one()
                second = (await rc.execute(text("SELECT now()"))).scalar_one()
            snapshot = proxied.counts()
            assert first == second
            async with acl.write() as conn:  # warm: the write pool's connection idled past ping_idle
                await conn.execute(update, {"id": 4})
            proxied.reset()
            async with acl.write() as conn:
                await conn.execute(update, {"id": 3})
            write = proxied.counts()
            assert acl.causal_token() is not None
            return read, snapshot, write

    read, snapshot, write = asyncio.run(main())
    print(f"round trips (async): read {read}, snapshot {snapshot}, write {write}")
    assert read == (0, 1, 0)
    assert snapshot[1] <= 4 and snapshot[0] == 0
    assert write[0] <= 3 and write[1] == 0


@pytest.mark.parametrize("pre_ping", [True, False])
def test_idle_connections_are_pinged_recent_ones_not(proxied: Proxied, pre_ping: bool) -> None:
    select = text(f"SELECT v FROM {proxied.table} WHERE id = 1")
    settings = proxied.settings(pre_ping=pre_ping, ping_idle="200ms")
    with Cluster.from_config(proxied.path, **settings) as cluster:
        cluster.start()
        for _ in range(WARM):
            with cluster.read() as conn:
                conn.execute(select).scalar_one()
        proxied.reset()
        with cluster.read() as conn:
            conn.execute(select).scalar_one()
        recent = proxied.replica.count
        time.sleep(0.4)
        proxied.reset()
        with cluster.read() as conn:
            conn.execute(select).scalar_one()
        idle = proxied.replica.count
    assert recent == 1
    assert idle == (2 if pre_ping else 1)  # the ping, then the statement
