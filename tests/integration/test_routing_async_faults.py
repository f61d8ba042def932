"""Routing under faults through ``AsyncCluster``: a SIGKILLed replica, a stopped primary and a promotion."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError

from dbscale import AsyncCluster, Cluster, PrimaryUnavailable
from dbscale.local import LocalTopology
from dbscale.routing.errors import is_read_only_error

pytestmark = pytest.mark.integration

REPLICAS = ("main-replica1", "main-replica2")


def test_async_sigkilled_replica_during_reads_loses_no_read(
    restore_topology: LocalTopology, topology_config_path: Path, table: str
) -> None:
    tasks, per_task = 8, 250
    total = tasks * per_task

    async def run() -> None:
        failures: list[BaseException] = []
        nodes: dict[str, int] = {}
        done = 0
        async with AsyncCluster.from_config(topology_config_path, groups={"main": {"health_interval": 0.5}}) as acl:
            await acl.start()

            async def reader(seed: int) -> None:
                nonlocal done
                for i in range(per_task):
                    k = (seed * per_task + i) % 100 + 1
                    try:
                        async with acl.read() as conn:
                            result = await conn.execute(text(f"SELECT v FROM {table} WHERE k = :k"), {"k": k})
                            assert result.scalar_one() == k * 10
                            node = conn.node
                    except BaseException as exc:
                        failures.append(exc)
                        continue
                    nodes[node] = nodes.get(node, 0) + 1
                    done += 1

            workers = [asyncio.create_task(reader(s)) for s in range(tasks)]
            while done + len(failures) < 300:  # failures too, so a broken read path fails rather than hangs
                await asyncio.sleep(0.002)
            assert nodes.get("main-replica1", 0) > 0  # it was serving reads when it died
            await asyncio.to_thread(restore_topology.kill, "main-replica1")  # readers keep going meanwhile
            killed_at = done
            await asyncio.wait_for(asyncio.gather(*workers), 120)
            assert killed_at < total  # the kill landed while reads were running
            assert failures == []
            assert sum(nodes.values()) == total
            assert acl.metrics.value("bans_total", group="main", node="main-replica1") >= 1
            assert acl.metrics.value("read_retries_total", group="main") >= 1  # the retry path ran
            assert acl.metrics.value("read_errors_total", group="main") == 0
            status = {row["node"]: row for row in await acl.routing_status()}
            assert status["main-replica1"]["health"] in ("banned", "probation")
            assert all(row["in_flight"] == 0 for row in status.values())  # no leaked in-flight counts

    asyncio.run(run())


def test_async_promoted_replica_takes_writes_in_the_same_process(
    make_topology: Callable[[], LocalTopology],
) -> None:
    topo = make_topology()
    topo.up(replicas=1, shards=0, pgbouncer=False)
    write_timeout = 2.0
    # A long interval: the monitor only looks again when a write kicks it, so the moment between the
    # promotion and the router noticing it is under the test's control.
    settings = {"groups": {"main": {"health_interval": 30.0, "write_timeout": write_timeout, "ban_initial": 1.0}}}

    async def run(cluster: Cluster) -> None:
        async with AsyncCluster.from_config(topo.config_path, **settings) as acl:
            async with acl.write() as conn:
                await conn.execute(text("CREATE TABLE failover (id serial PRIMARY KEY, note text)"))
                await conn.execute(text("INSERT INTO failover (note) VALUES ('before')"))
                old_port = (await conn.execute(text("SELECT inet_server_port()"))).scalar_one()
            cluster.start()  # a sync twin that takes no writes, so nothing kicks its monitor
            await asyncio.to_thread(topo.stop, "main-primary")
            # no writer: a clear error within the configured timeout, not a hang
            for _ in range(2):
                started = time.monotonic()
                with pytest.raises(PrimaryUnavailable):
                    async with acl.write() as conn:
                        await conn.execute(text("INSERT INTO failover (note) VALUES ('lost')"))
                assert time.monotonic() - started <= write_timeout + 1.0
            assert acl.router().writer() is None
            await asyncio.to_thread(topo.promote, "main-replica1")
            # Not re-checked yet, the promoted node still looks like a replica and gets the read; the
            # read stays read-only although the node would now accept writes.
            async with acl.read() as conn:
                assert conn.node == "main-replica1"
                with pytest.raises(DBAPIError) as caught:
                    await conn.execute(text("INSERT INTO failover (note) VALUES ('from a read')"))
                assert is_read_only_error(caught.value)
            with cluster.read() as sconn:
                assert sconn.node == "main-replica1"
                with pytest.raises(DBAPIError) as caught:
                    sconn.execute(text("INSERT INTO failover (note) VALUES ('from a sync read')"))
                assert is_read_only_error(caught.value)
            deadline = time.monotonic() + 20
            while True:
                try:
                    async with acl.write() as conn:
                        await conn.execute(text("INSERT INTO failover (note) VALUES ('after')"))
                        port = (await conn.execute(text("SELECT inet_server_port()"))).scalar_one()
                    break
                except PrimaryUnavailable:
                    assert time.monotonic() < deadline, "the promoted replica never took writes"
            assert port != old_port
            assert acl.router().state.writer == "main-replica1"
            async with acl.read() as conn:
                notes = (await conn.execute(text("SELECT note FROM failover ORDER BY id"))).scalars().all()
            assert notes == ["before", "after"]

    with Cluster.from_config(topo.config_path, **settings) as cluster:
        asyncio.run(run(cluster))
