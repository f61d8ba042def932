"""Request-scoped causal context and cancellation bookkeeping, on the real topology."""

from __future__ import annotations

import asyncio
import contextlib
import random
import threading
import time
from pathlib import Path

import pytest
from sqlalchemy import text

from dbscale import AsyncCluster, Cluster
from dbscale.local import LocalTopology

pytestmark = pytest.mark.integration

REPLICAS = ("main-replica1", "main-replica2")


def in_thread(fn):  # type: ignore[no-untyped-def]
    """Run ``fn`` in a new thread (a fresh context: none of the caller's causal marks) and return its result."""
    out: list[object] = []
    t = threading.Thread(target=lambda: out.append(fn()))
    t.start()
    t.join(60)
    return out[0]


def test_causal_scope_makes_plain_reads_of_another_cluster_see_the_write(
    restore_topology: LocalTopology, topology_config_path: Path, table: str
) -> None:
    with Cluster.from_config(topology_config_path) as writer, Cluster.from_config(topology_config_path) as other:
        other.start()
        for replica in REPLICAS:
            restore_topology.pause_replay(replica)
        with writer.write() as conn:
            conn.execute(text(f"UPDATE {table} SET v = -1 WHERE k = 1"))
        token = writer.causal_token()
        assert token is not None

        def request(token: str | None) -> tuple[int, str, str | None]:
            with other.causal_scope(token) as scoped, other.read() as conn:  # a plain read, no after=
                value = conn.execute(text(f"SELECT v FROM {table} WHERE k = 1")).scalar_one()
                return value, conn.node, scoped

        # without the token the other cluster reads a paused replica: the old value (the test can fail)
        assert in_thread(lambda: request(None))[0] == 10
        value, node, scoped = in_thread(lambda: request(token))
        assert (value, node, scoped) == (-1, "main-primary", token)
        # the scope ends with the block: the thread's own (empty) marks are back
        assert in_thread(lambda: (request(token), other.causal_token())[1]) is None

        async def async_request() -> tuple[int, str]:
            async with AsyncCluster.from_config(topology_config_path) as acl:
                with acl.causal_scope(token):
                    async with acl.read() as conn:
                        result = await conn.execute(text(f"SELECT v FROM {table} WHERE k = 1"))
                        return result.scalar_one(), conn.node

        assert asyncio.run(async_request()) == (-1, "main-primary")


def test_causal_scope_writes_move_the_token_forward_inside_the_block(topology_config_path: Path, table: str) -> None:
    with Cluster.from_config(topology_config_path) as cluster:
        with cluster.write() as conn:
            conn.execute(text(f"UPDATE {table} SET v = v WHERE k = 2"))
        outer = cluster.causal_token()
        with cluster.causal_scope(outer) as carried:
            assert carried == outer
            with cluster.write() as conn:
                conn.execute(text(f"UPDATE {table} SET v = v WHERE k = 3"))
            inner = cluster.causal_token()
        assert inner is not None and outer is not None and inner != outer
        assert cluster.causal_token() == outer


def test_cancelled_async_reads_release_in_flight_counts_and_stay_balanced(
    topology_config_path: Path, table: str
) -> None:
    async def run() -> tuple[dict[str, int], dict[str, int], int, int]:
        async with AsyncCluster.from_config(topology_config_path) as acl:
            await acl.start()
            router = acl.router()
            rng = random.Random(8)

            async def read(k: int, cancel_on_exit: bool = False) -> None:
                async with acl.read() as conn:
                    await conn.execute(text(f"SELECT v FROM {table} WHERE k = :k"), {"k": k})
                    if cancel_on_exit:  # delivered at the first await of __aexit__ (returning the connection)
                        task = asyncio.current_task()
                        assert task is not None
                        task.cancel()

            started = time.perf_counter()
            for i in range(50):
                await read(i + 1)
            typical = (time.perf_counter() - started) / 50
            cancelled = 0
            for i in range(1000):
                # half cancelled from outside at a random moment (planning, checkout, query, exit), half
                # exactly inside __aexit__, where a cancellation used to skip the in-flight release
                task = asyncio.ensure_future(read(i % 100 + 1, cancel_on_exit=i % 2 == 1))
                if i % 2 == 0:
                    await asyncio.sleep(rng.uniform(0.0, 1.2 * typical))
                    task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
                cancelled += task.cancelled()
                assert task.cancelled() or i % 2 == 0  # a cancellation in __aexit__ is never swallowed
            await asyncio.sleep(0.2)  # shielded closes finish
            in_flight = {row["node"]: row["in_flight"] for row in router.status()}
            nodes: dict[str, int] = {}
            for i in range(1000):
                async with acl.read() as conn:
                    await conn.execute(text(f"SELECT v FROM {table} WHERE k = :k"), {"k": i % 100 + 1})
                    nodes[conn.node] = nodes.get(conn.node, 0) + 1
            checked_out = sum(acl.engine(n, read_only=True).pool.checkedout() for n in REPLICAS)  # type: ignore[attr-defined]
            return in_flight, nodes, cancelled, checked_out

    in_flight, nodes, cancelled, checked_out = asyncio.run(run())
    print(f"cancelled {cancelled} of 1000; then {nodes}")
    assert cancelled >= 500
    assert set(in_flight.values()) == {0}
    assert checked_out == 0
    assert sum(nodes.values()) == 1000
    assert all(400 <= nodes.get(r, 0) <= 600 for r in REPLICAS), nodes
