"""A cluster made before ``os.fork()`` (gunicorn ``--preload``, Celery prefork, ``multiprocessing``'s fork).

The parent warms its pools (reads that park, writes), then forks children while one of its threads
keeps reading and writing. Every child reads and writes rows of its own through the inherited
cluster and checks each answer; a connection shared with the parent (or a sibling) shows up as a
wrong or interleaved answer, a protocol error, a hang, or a server backend both processes read on.
The child's health monitor must run again (the parent's thread does not exist in a child).
"""

from __future__ import annotations

import asyncio
import multiprocessing as mp
import os
import threading
import time
from multiprocessing.queues import SimpleQueue
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import text

from dbscale import AsyncCluster, Cluster
from tests.integration.helpers import replicated_table

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]

CHILDREN = 4
ROUNDS = 200
COLUMNS = "owner int, seq int, v text NOT NULL, PRIMARY KEY (owner, seq)"
INSERT = "INSERT INTO {t} (owner, seq, v) VALUES (:o, :s, :v)"
#: The row just written, the tag echoed back, and the server backend that answered.
CHECK = "SELECT v, CAST(:v AS text), pg_backend_pid() FROM {t} WHERE owner = :o AND seq = :s"


def round_trip(cluster: Cluster, table: str, owner: int, seq: int) -> int:
    """Write a row tagged with ``owner``/``seq``, read it back (read-your-writes), check both; the read's backend."""
    tag = f"{owner}-{seq}"
    with cluster.write() as conn:
        conn.execute(text(INSERT.format(t=table)), {"o": owner, "s": seq, "v": tag})
        echoed = conn.execute(text("SELECT CAST(:v AS text)"), {"v": tag}).scalar_one()
        assert echoed == tag, f"write connection answered {echoed!r} for {tag!r}"
    with cluster.read() as conn:
        row = conn.execute(text(CHECK.format(t=table)), {"o": owner, "s": seq, "v": tag}).one()
    assert (row[0], row[1]) == (tag, tag), f"read answered {tuple(row)!r} for {tag!r}"
    return int(row[2])


def child(cluster: Cluster, table: str, out: SimpleQueue[Any]) -> None:
    """A forked child's work on the inherited cluster; exits non-zero (an assertion) at the first wrong answer."""
    router = cluster.router()
    rounds = router.state.rounds
    owner = os.getpid()
    backends = {round_trip(cluster, table, owner, seq) for seq in range(ROUNDS)}
    deadline = time.monotonic() + 3 * router.settings.health_interval + 5
    while router.state.rounds <= rounds:  # the monitor's background rounds, run in this process
        assert time.monotonic() < deadline, "the health monitor ran no round in the child"
        time.sleep(0.05)
    out.put((owner, sorted(backends)))


def test_forked_children_use_their_own_connections(topology_config_path: Path) -> None:
    with (
        replicated_table(topology_config_path, COLUMNS, "SELECT") as table,
        Cluster.from_config(topology_config_path) as cluster,
    ):
        parent = os.getpid()
        parent_backends = {round_trip(cluster, table, parent, seq) for seq in range(20)}  # reads park, writes pool
        stop = threading.Event()
        problems: list[BaseException] = []
        busy_rounds = [0]

        def keep_busy() -> None:
            seq = 1000
            while not stop.is_set():
                try:
                    parent_backends.add(round_trip(cluster, table, parent, seq))
                except BaseException as exc:  # the test reports it
                    problems.append(exc)
                    return
                seq += 1
                busy_rounds[0] += 1

        thread = threading.Thread(target=keep_busy, daemon=True)
        thread.start()
        ctx = mp.get_context("fork")
        out: SimpleQueue[Any] = ctx.SimpleQueue()
        children = []
        for _ in range(CHILDREN):
            time.sleep(0.05)  # fork in the middle of the parent's reads and writes
            proc = ctx.Process(target=child, args=(cluster, table, out))
            proc.start()
            children.append(proc)
        for proc in children:
            proc.join(90)
        hung = [p.pid for p in children if p.is_alive()]
        for proc in children:
            if proc.is_alive():
                proc.kill()
                proc.join(5)
        stop.set()
        thread.join(30)
        assert not thread.is_alive(), "the parent's busy thread hangs (its connection was used by a child)"
        assert not problems, problems
        assert not hung, f"children {hung} hang (a connection shared with the parent or a sibling)"
        assert [p.exitcode for p in children] == [0] * CHILDREN
        assert busy_rounds[0] > 0
        reports = dict(out.get() for _ in range(CHILDREN))
        for owner, backends in reports.items():
            shared = set(backends) & parent_backends
            assert not shared, f"child {owner} read on the parent's server backends {shared}"
        for owner in reports:
            others = set().union(*(set(b) for o, b in reports.items() if o != owner))
            assert not set(reports[owner]) & others, "two children read on one server backend"
        for seq in range(20, 70):  # the parent's own connections, parked ones included, still answer right
            round_trip(cluster, table, parent, seq)
        with cluster.write() as conn:
            counts = dict(conn.execute(text(f"SELECT owner, count(*) FROM {table} GROUP BY owner")).all())
        assert {o: counts.get(o) for o in reports} == dict.fromkeys(reports, ROUNDS)


# -- AsyncCluster: made before the fork, used only in the child's own event loop -------------------------
async def async_round_trips(cluster: AsyncCluster, table: str, owner: int, seqs: range) -> set[int]:
    """:func:`round_trip` for the asyncio cluster."""
    backends = set()
    for seq in seqs:
        tag = f"{owner}-{seq}"
        async with cluster.write() as conn:
            await conn.execute(text(INSERT.format(t=table)), {"o": owner, "s": seq, "v": tag})
        async with cluster.read() as conn:
            row = (await conn.execute(text(CHECK.format(t=table)), {"o": owner, "s": seq, "v": tag})).one()
        assert (row[0], row[1]) == (tag, tag), f"read answered {tuple(row)!r} for {tag!r}"
        backends.add(int(row[2]))
    return backends


def async_child(cluster: AsyncCluster, table: str, out: SimpleQueue[Any]) -> None:
    """The child's own event loop: checked round trips, then a round of the monitor running on that loop."""

    async def work() -> list[int]:
        router = cluster.router()
        rounds = router.state.rounds
        backends = await async_round_trips(cluster, table, os.getpid(), range(ROUNDS // 4))
        deadline = time.monotonic() + 3 * router.settings.health_interval + 5
        while router.state.rounds <= rounds:
            assert time.monotonic() < deadline, "the health monitor ran no round in the child"
            await asyncio.sleep(0.05)
        await cluster.close()
        return sorted(backends)

    out.put(asyncio.run(work()))


def test_async_cluster_made_before_fork_uses_new_connections_in_the_child(topology_config_path: Path) -> None:
    with replicated_table(topology_config_path, COLUMNS, "SELECT") as table:
        cluster = AsyncCluster.from_config(topology_config_path)
        parent = os.getpid()

        async def warm() -> set[int]:
            return await async_round_trips(cluster, table, parent, range(20))

        loop = asyncio.new_event_loop()
        try:
            parent_backends = loop.run_until_complete(warm())
            ctx = mp.get_context("fork")
            out: SimpleQueue[Any] = ctx.SimpleQueue()
            proc = ctx.Process(target=async_child, args=(cluster, table, out))
            proc.start()  # no loop runs at the fork: asyncio does not support forking inside a running loop
            proc.join(90)
            if proc.is_alive():
                proc.kill()
            assert proc.exitcode == 0
            assert not set(out.get()) & parent_backends, "the child read on the parent's server backends"
            loop.run_until_complete(async_round_trips(cluster, table, parent, range(20, 40)))
        finally:
            loop.run_until_complete(cluster.close())
            loop.close()


# -- the cache: L1 coherent across the fork, both ways --------------------------------------------------
def cache_child(cluster: Cluster, table: str, to_parent: Any, to_child: Any) -> None:
    """Reads the parent's row through the inherited cache, sees the parent's change to it, then changes a
    row the parent has in its L1 and invalidates it (the parent must see that change)."""

    @cluster.cache.cached(ttl=300, key=f"{table}:{{seq}}")
    def value(seq: int) -> str:
        with cluster.read() as conn:
            return str(conn.execute(text(f"SELECT v FROM {table} WHERE seq = :s"), {"s": seq}).scalar_one())

    assert value(1) == "one"
    assert cluster.cache.core.listener is None or cluster.cache.core.listener.wait_ready(5)
    to_parent.put("ready")
    assert to_child.get(timeout=30) == "changed"  # the parent updated row 1 and invalidated its key
    deadline = time.monotonic() + 10
    while value(1) != "uno":  # an L1 copy kept from the parent (or no subscription) would stay "one"
        assert time.monotonic() < deadline, "the child never saw the parent's invalidation"
        time.sleep(0.05)
    with cluster.write() as conn:
        conn.execute(text(f"UPDATE {table} SET v = 'dos' WHERE seq = 2"))
    cluster.cache.invalidate(f"{table}:2")
    to_parent.put("changed")


def test_the_cache_of_a_cluster_made_before_fork_stays_coherent_both_ways(topology_config_path: Path) -> None:
    """Parent and child each keep values in L1 across the fork: each one's invalidation reaches the
    other (the child subscribes anew and has its own origin; nothing inherited in L1 outlives it)."""
    columns = "owner int, seq int, v text NOT NULL, PRIMARY KEY (owner, seq)"
    with (
        replicated_table(
            topology_config_path, columns, "INSERT INTO {name} VALUES (0, 1, 'one'), (0, 2, 'two')"
        ) as table,
        Cluster.from_config(topology_config_path, cache={"namespace": f"fork{os.getpid()}", "l1_ttl": 300}) as cluster,
    ):

        @cluster.cache.cached(ttl=300, key=f"{table}:{{seq}}")
        def value(seq: int) -> str:
            with cluster.read() as conn:
                return str(conn.execute(text(f"SELECT v FROM {table} WHERE seq = :s"), {"s": seq}).scalar_one())

        assert (value(1), value(2)) == ("one", "two")
        listener = cluster.cache.core.listener
        assert listener is not None and listener.wait_ready(5)
        assert (value(1), value(2)) == ("one", "two")  # now in the parent's L1
        ctx = mp.get_context("fork")
        to_parent, to_child = ctx.Queue(), ctx.Queue()
        proc = ctx.Process(target=cache_child, args=(cluster, table, to_parent, to_child))
        proc.start()
        try:
            assert to_parent.get(timeout=30) == "ready"
            with cluster.write() as conn:
                conn.execute(text(f"UPDATE {table} SET v = 'uno' WHERE seq = 1"))
            cluster.cache.invalidate(f"{table}:1")
            to_child.put("changed")
            assert to_parent.get(timeout=30) == "changed", "the child failed"  # it updated row 2, invalidated it
            deadline = time.monotonic() + 10
            while value(2) != "dos":  # the child's broadcast taken for the parent's own would leave "two"
                assert time.monotonic() < deadline, "the parent never saw the child's invalidation"
                time.sleep(0.05)
            proc.join(30)
            assert proc.exitcode == 0
        finally:
            if proc.is_alive():
                proc.kill()


def test_a_metrics_lock_held_at_the_fork_does_not_hang_the_child(topology_config_path: Path) -> None:
    """A parent's thread making a metric at the fork holds the registry's lock; the child's copy of that lock
    would stay held forever, so the child's first new metric would hang without a new one."""
    with Cluster.from_config(topology_config_path) as cluster:
        cluster.metrics._lock.acquire()
        try:
            pid = os.fork()
            if pid == 0:
                code = 1
                try:
                    cluster.metrics.counter("fork_probe", "made in a forked child").inc()
                    code = 0
                finally:
                    os._exit(code)
            deadline = time.monotonic() + 30
            while (done := os.waitpid(pid, os.WNOHANG)) == (0, 0):
                if time.monotonic() > deadline:
                    os.kill(pid, 9)
                    os.waitpid(pid, 0)
                    pytest.fail("the child waited for the parent's metrics lock")
                time.sleep(0.02)
            assert os.waitstatus_to_exitcode(done[1]) == 0
        finally:
            cluster.metrics._lock.release()
