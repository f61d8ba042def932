"""Write-behind on the real topology: acknowledged changes reach the database, exactly once, in order.

The crash test runs a writer process and a flusher process (``dbscale write-behind run``), SIGKILLs
the flusher twice mid-flush and restarts it; afterwards the database holds exactly the last
acknowledged value of every key. Full size (50,000 saves over 1,000 keys) is ``slow``.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import text

from dbscale import AsyncCluster, Cluster
from dbscale.errors import NotInTransaction, NotReplicated

from .helpers import over_maxmemory, replicated_table

CLI = [sys.executable, "-c", "from dbscale.cli import main; main()"]


@pytest.fixture
def views(topology_config_path: Path) -> Iterator[str]:
    """An empty ``(k int PRIMARY KEY, v bigint CHECK (v >= 0), note text)`` table."""
    with replicated_table(
        topology_config_path, "k int PRIMARY KEY, v bigint NOT NULL CHECK (v >= 0), note text", "SELECT 1"
    ) as name:
        yield name


def _rows(cluster: Cluster, table: str) -> dict[int, dict[str, Any]]:
    with cluster.write() as conn:
        return {r["k"]: dict(r) for r in conn.execute(text(f"SELECT * FROM {table}")).mappings()}


def test_save_get_flush_delete(topology_config_path: Path, views: str) -> None:
    with Cluster.from_config(topology_config_path) as cluster:
        pv = cluster.cache.write_behind(views, key_column="k", key=f"{views}:{{k}}")
        for i in range(10):
            pv.save({"k": 1, "v": i, "note": None})  # coalesced: the last one wins
        pv.save({"k": 2, "v": 5, "note": "x"})
        assert pv.get(1) == {"k": 1, "v": 9, "note": None}  # the newest acknowledged value, before any flush
        assert _rows(cluster, views) == {}
        pv.flush(timeout=30)
        assert _rows(cluster, views) == {1: {"k": 1, "v": 9, "note": None}, 2: {"k": 2, "v": 5, "note": "x"}}
        pv.delete(2)
        assert pv.get(2) is None
        pv.flush(timeout=30)
        assert list(_rows(cluster, views)) == [1]
        st = pv.status()
        assert st["queue_depth"] == 0
        assert cluster.metrics.value("write_behind_flushed_total", table=views) == 12
        pv.close()


def test_constraint_violation_goes_to_dead_letters_and_the_rest_flushes(topology_config_path: Path, views: str) -> None:
    with Cluster.from_config(topology_config_path) as cluster:
        pv = cluster.cache.write_behind(views, key_column="k", key=f"{views}:{{k}}")
        for k in range(20):
            pv.save({"k": k, "v": -1 if k == 7 else k, "note": None})
        pv.save({"k": 30, "v": 1, "colour": "red"})  # a column the table lacks
        pv.flush(timeout=30)
        rows = _rows(cluster, views)
        assert sorted(rows) == [k for k in range(20) if k != 7]
        dead = pv.dead_letters()
        assert len(dead) == 2
        assert dead[0]["data"] == {"k": 7, "v": -1, "note": None}
        assert "check constraint" in dead[0]["error"]
        assert dead[1]["data"]["k"] == 30
        assert "colour" in dead[1]["error"]
        assert cluster.metrics.value("write_behind_dead_letters_total", table=views) == 2
        pv.close()

    out = subprocess.run(
        [*CLI, "write-behind", "dead-letters", "--config", str(topology_config_path), "--table", views,
         "--key-column", "k", "--json"],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    assert json.loads(out.stdout)["dead_letters"][0]["data"]["k"] == 7


def test_a_redelivered_batch_is_a_no_op(topology_config_path: Path, views: str) -> None:
    """A flusher that committed but died before XACK: the next one skips the batch (the checkpoint)."""
    with Cluster.from_config(topology_config_path) as cluster:
        pv = cluster.cache.write_behind(views, key_column="k", key=f"{views}:{{k}}")
        pv.save({"k": 1, "v": 1, "note": None})
        first = pv.flusher(block=0)
        first.takeover()
        client = pv.redis.client
        client.xreadgroup("dbscale-flush", first.consumer, {pv.strategy.stream: ">"}, count=10)
        _, claimed, _ = client.xautoclaim(pv.strategy.stream, "dbscale-flush", first.consumer, 0, "0-0", count=10)
        from dbscale.cache.writes.policy import decode_entry

        first._apply([decode_entry(i, f) for i, f in claimed])  # committed, never acknowledged
        with cluster.write() as conn:  # someone changes the row after the flush
            conn.execute(text(f"UPDATE {views} SET note = 'later' WHERE k = 1"))
        second = pv.flusher(block=0)
        assert second.drain() == 1  # handled (acknowledged) ...
        assert _rows(cluster, views)[1]["note"] == "later"  # ... but not applied again
        assert client.xlen(pv.strategy.stream) == 0
        pv.close()


def test_flushed_rows_invalidate_cache_aside_keys(topology_config_path: Path, views: str) -> None:
    with Cluster.from_config(topology_config_path) as cluster:
        cache = cluster.cache
        cache.set(f"{views}:aside:3", "old")
        pv = cluster.cache.write_behind(
            views, key_column="k", key=f"{views}:{{k}}", invalidates=[f"{views}:aside:{{k}}"]
        )
        pv.save({"k": 3, "v": 3, "note": None})
        assert cache.get(f"{views}:aside:3", l1=False) == "old"  # not before the flusher commits
        pv.flush(timeout=30)
        assert cache.get(f"{views}:aside:3", l1=False) is None
        pv.close()


def test_in_process_flusher_and_async_twin(topology_config_path: Path, views: str) -> None:
    import asyncio

    async def main() -> None:
        async with AsyncCluster.from_config(topology_config_path) as cluster:
            pv = cluster.cache.write_behind(views, key_column="k", key=f"{views}:{{k}}")
            flusher = pv.start_flusher(block=0.05)
            for k in range(50):
                await pv.save({"k": k, "v": k * 2, "note": "a"})
            assert await pv.get(49) == {"k": 49, "v": 98, "note": "a"}
            await pv.flush(timeout=30)
            async with cluster.write() as conn:
                n = (await conn.execute(text(f"SELECT count(*) FROM {views}"))).scalar_one()
            assert n == 50
            await flusher.stop()
            await pv.close()

    asyncio.run(main())


def test_in_process_flusher_thread(topology_config_path: Path, views: str) -> None:
    with Cluster.from_config(topology_config_path) as cluster:
        pv = cluster.cache.write_behind(views, key_column="k", key=f"{views}:{{k}}")
        pv.start_flusher(block=0.05)
        for k in range(50):
            pv.save({"k": k, "v": k, "note": None})
        pv.flush(timeout=30)
        assert len(_rows(cluster, views)) == 50
        pv.close()
    with Cluster.from_config(topology_config_path) as cluster, pytest.raises(NotInTransaction):
        cluster.cache.invalidate_on_commit("x")


WRITER = """
import json, random, sys, time
from dbscale import Cluster
config, table, saves, keys, out, pause = sys.argv[1:7]
last = {}
rng = random.Random(1)
with Cluster.from_config(config) as cluster:
    pv = cluster.cache.write_behind(table, key_column="k", key=table + ":{k}")
    for i in range(int(saves)):
        k = rng.randrange(int(keys))
        if rng.random() < 0.05:
            pv.delete(k)
            last[k] = None
        else:
            pv.save({"k": k, "v": i, "note": "n%d" % i})
            last[k] = i
        if i % 1000 == 0:
            print(i, flush=True)
        if i % 100 == 0:
            time.sleep(float(pause))  # paced: the flusher (started alongside) gets to flush some before the end
    pv.close()
with open(out, "w") as f:
    json.dump(last, f)
"""


def _flusher(config: Path, table: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [*CLI, "write-behind", "run", "--config", str(config), "--table", table, "--key-column", "k",
         "--batch", "200"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip


def _crash(config: Path, table: str, tmp_path: Path, saves: int, keys: int, pause: float = 0.0) -> None:
    out = tmp_path / "last.json"
    writer = subprocess.Popen(
        [sys.executable, "-c", WRITER, str(config), table, str(saves), str(keys), str(out), str(pause)]
    )
    kills = 0
    flusher = _flusher(config, table)
    try:
        with Cluster.from_config(config) as cluster:
            pv = cluster.cache.write_behind(table, key_column="k", key=table + ":{k}")
            while kills < 2:  # SIGKILL the flusher while it has flushed some and has more to flush
                # sampled often: the CLI starts fast, so a flusher can keep up with the writer between samples
                time.sleep(0.2)
                depth, flushed = pv.status()["queue_depth"], _count(cluster, table)
                if flushed and depth:
                    os.kill(flusher.pid, signal.SIGKILL)
                    flusher.wait()
                    kills += 1
                    flusher = _flusher(config, table)
                assert writer.poll() is None or depth, (
                    f"the writer finished before the flusher was killed twice ({kills})"
                )
            assert writer.wait(timeout=600) == 0
            pv.flush(timeout=120)  # with the restarted flusher running
            last = {int(k): v for k, v in json.loads(out.read_text()).items()}
            rows = _rows(cluster, table)
            expected = {k: v for k, v in last.items() if v is not None}
            assert {k: r["v"] for k, r in rows.items()} == expected
            assert all(r["note"] == f"n{r['v']}" for r in rows.values())
            pv.close()
    finally:
        writer.kill()
        flusher.send_signal(signal.SIGTERM)
        flusher.wait(timeout=30)
    assert kills == 2


def _count(cluster: Cluster, table: str) -> int:
    with cluster.write() as conn:
        return int(conn.execute(text(f"SELECT count(*) FROM {table}")).scalar_one())


def test_flusher_sigkilled_twice_loses_nothing(topology_config_path: Path, views: str, tmp_path: Path) -> None:
    _crash(topology_config_path, views, tmp_path, 5_000, 200, pause=0.1)  # 5 s at least: two kills fit


@pytest.mark.slow
def test_flusher_sigkilled_twice_loses_nothing_full(topology_config_path: Path, views: str, tmp_path: Path) -> None:
    _crash(topology_config_path, views, tmp_path, 50_000, 1_000)


def test_status_lines(topology_config_path: Path, views: str) -> None:
    with Cluster.from_config(topology_config_path) as cluster:
        pv = cluster.cache.write_behind(views, key_column="k", key=f"{views}:{{k}}")
        for k in range(3):
            pv.save({"k": k, "v": k, "note": None})
        shown = subprocess.run(
            [*CLI, "status", "--config", str(topology_config_path)], capture_output=True, text=True, check=True
        ).stdout
        line = next(line for line in shown.splitlines() if views in line)
        assert "│ 3 " in line, shown  # queue depth 3, not flushed yet
        pv.flush(timeout=30)
        js = subprocess.run(
            [*CLI, "write-behind", "status", "--config", str(topology_config_path), "--table", views, "--json"],
            capture_output=True, text=True, check=True,
        ).stdout  # fmt: skip
        assert json.loads(js)["write_behind"][0]["queue_depth"] == 0
        pv.close()


def test_wait_replicas_raises_when_redis_has_too_few(topology_config_path: Path, views: str) -> None:
    with Cluster.from_config(topology_config_path) as cluster:
        pv = cluster.cache.write_behind(views, key_column="k", key=f"{views}:{{k}}", wait_replicas=1, wait_timeout=0.05)
        with pytest.raises(NotReplicated, match="0 of 1 Redis replicas"):
            pv.save({"k": 1, "v": 1, "note": None})
        assert pv.get(1) == {"k": 1, "v": 1, "note": None}  # in Redis, still flushed: only its durability is in doubt
        pv.flush(timeout=30)
        assert _rows(cluster, views) == {1: {"k": 1, "v": 1, "note": None}}
        pv.close()


def _count_round_trips(pv: Any) -> list[int]:
    """Record the size of every round trip ``pv`` makes to Redis (its ``_execute`` calls), keeping their effect."""
    sizes: list[int] = []
    execute = pv._execute

    def counted(batch: list[Any]) -> Any:
        sizes.append(len(batch))
        return execute(batch)

    pv._execute = counted
    return sizes


def test_concurrent_saves_share_round_trips_and_each_gets_its_own_reply(topology_config_path: Path, views: str) -> None:
    import threading

    threads, per = 16, 100
    with Cluster.from_config(topology_config_path) as cluster:
        pv = cluster.cache.write_behind(views, key_column="k", key=f"{views}:{{k}}")
        sizes = _count_round_trips(pv)
        ids: list[list[str]] = [[] for _ in range(threads)]

        def writer(t: int) -> None:
            for i in range(per):  # thread t owns keys t, t+16, …: each key's changes stay in order
                ids[t].append(pv.save({"k": t + threads * (i % 5), "v": i, "note": f"t{t}"}))

        workers = [threading.Thread(target=writer, args=(t,)) for t in range(threads)]
        for w in workers:
            w.start()
        for w in workers:
            w.join()
        every = [i for part in ids for i in part]
        assert len(set(every)) == threads * per  # a distinct stream id each: nobody got another's reply
        for part in ids:  # one caller's saves in its call order
            assert sorted(part, key=lambda e: tuple(map(int, e.split("-")))) == part
        assert sum(sizes) == threads * per
        assert max(sizes) > 1 and len(sizes) < threads * per  # callers shared round trips
        expected = {
            t + threads * j: {"k": t + threads * j, "v": 95 + j, "note": f"t{t}"}
            for t in range(threads)
            for j in range(5)
        }
        assert {k: pv.get(k) for k in expected} == expected  # the last acknowledged value of each key
        pv.flush(timeout=60)
        assert _rows(cluster, views) == expected
        pv.close()


def test_async_concurrent_saves_share_round_trips_and_a_cancelled_queued_save_never_lands(
    topology_config_path: Path, views: str
) -> None:
    import asyncio

    async def main() -> None:
        async with AsyncCluster.from_config(topology_config_path) as cluster:
            pv = cluster.cache.write_behind(views, key_column="k", key=f"{views}:{{k}}")
            await pv.save({"k": 0, "v": 0, "note": None})  # persistence check, connection: out of the way
            sizes = _count_round_trips(pv)
            tasks = [asyncio.create_task(pv.save({"k": k, "v": k, "note": None})) for k in range(1, 21)]
            await asyncio.sleep(0)  # task 1 sends its save alone; the others queue behind it
            tasks[9].cancel()  # key 10: still queued, so it never reaches Redis
            done = await asyncio.gather(*tasks, return_exceptions=True)
            assert isinstance(done[9], asyncio.CancelledError)
            assert all(isinstance(d, str) for i, d in enumerate(done) if i != 9)
            assert sizes == [1, 18]  # two round trips for 19 saves
            assert await pv.get(10) is None
            await pv.flush(timeout=30)
            async with cluster.write() as conn:
                keys = set((await conn.execute(text(f"SELECT k FROM {views}"))).scalars())
            assert keys == set(range(21)) - {10}
            await pv.close()

    asyncio.run(main())


def test_a_save_replaces_foreign_data_at_its_entry_and_a_foreign_stream_refuses_the_whole_round_trip(
    topology_config_path: Path, views: str
) -> None:
    import redis

    from dbscale.errors import CacheUnavailable

    with Cluster.from_config(topology_config_path) as cluster:
        pv = cluster.cache.write_behind(views, key_column="k", key=f"{views}:{{k}}")
        raw = redis.Redis.from_url(str(cluster.config.cache.redis_url))
        raw.set(pv.strategy.entry_key(f"{views}:1"), b"not a hash")
        pv.save({"k": 1, "v": 1, "note": None})  # the garbage is replaced by the entry
        assert pv.get(1) == {"k": 1, "v": 1, "note": None}
        pv.flush(timeout=30)
        raw.delete(pv.strategy.stream)
        raw.set(pv.strategy.stream, b"not a stream")
        with pytest.raises(CacheUnavailable, match="WRONGTYPE"):
            pv.save({"k": 2, "v": 2, "note": None})
        assert raw.exists(pv.strategy.entry_key(f"{views}:2")) == 0  # refused as a whole: nothing ran
        raw.delete(pv.strategy.stream)
        raw.close()
        pv.close()
    assert _rows_of(topology_config_path, views) == {1: {"k": 1, "v": 1, "note": None}}


def _xadds(raw: Any) -> int:
    """The XADDs Redis has run, refused or failed so far (``INFO commandstats``)."""
    stats = raw.info("commandstats").get("cmdstat_xadd", {})
    return sum(int(stats.get(field, 0)) for field in ("calls", "rejected_calls", "failed_calls"))


def _assert_out_of_memory(failed: object) -> None:
    from dbscale.errors import CacheUnavailable

    assert isinstance(failed, CacheUnavailable), failed
    assert "out of memory" in str(failed) and "maxmemory" in str(failed), failed


def test_a_save_call_over_maxmemory_is_refused_whole_and_each_of_its_callers_is_told(
    topology_config_path: Path, views: str
) -> None:
    """Over ``maxmemory`` Redis refuses a packed save call before it runs (the script's shebang): no
    change is appended, no entry written, and every save it carried raises; once memory is back, the
    same saves go through."""
    import asyncio

    import redis

    raw = redis.Redis.from_url(load_redis_url(topology_config_path))
    keys = range(1, 9)

    async def main() -> None:
        async with AsyncCluster.from_config(topology_config_path) as cluster:
            pv = cluster.cache.write_behind(views, key_column="k", key=f"{views}:{{k}}")
            await pv.save({"k": 0, "v": 0, "note": None})  # persistence check, script loaded, connection open
            stream, entries = pv.strategy.stream, [pv.strategy.entry_key(f"{views}:{k}") for k in keys]
            depth, xadds = raw.xlen(stream), _xadds(raw)
            sizes = _count_round_trips(pv)
            with over_maxmemory(raw, f"{views}:filler"):
                done = await asyncio.gather(
                    *(pv.save({"k": k, "v": k, "note": "x" * 1000}) for k in keys), return_exceptions=True
                )
                assert sizes == [1, 7]  # the first save alone, then one call carrying the other seven
                for failed in done:
                    _assert_out_of_memory(failed)
                assert raw.xlen(stream) == depth and raw.exists(*entries) == 0  # nothing of either call
                assert _xadds(raw) == xadds  # refused before the script ran: not one XADD was tried
            await asyncio.gather(*(pv.save({"k": k, "v": k, "note": None}) for k in keys))
            assert raw.xlen(stream) == depth + len(keys)
            await pv.flush(timeout=30)
            await pv.close()

    try:
        asyncio.run(main())
    finally:
        raw.close()
    assert _rows_of(topology_config_path, views) == {k: {"k": k, "v": k, "note": None} for k in range(9)}


def test_blocking_saves_sharing_a_call_over_maxmemory_all_raise_and_none_lands(
    topology_config_path: Path, views: str
) -> None:
    import threading

    import redis

    keys = range(1, 9)
    with Cluster.from_config(topology_config_path) as cluster:
        raw = redis.Redis.from_url(str(cluster.config.cache.redis_url))
        pv = cluster.cache.write_behind(views, key_column="k", key=f"{views}:{{k}}")
        pv.save({"k": 0, "v": 0, "note": None})
        stream, entries = pv.strategy.stream, [pv.strategy.entry_key(f"{views}:{k}") for k in keys]
        depth, xadds = raw.xlen(stream), _xadds(raw)
        sizes = _count_round_trips(pv)
        failures: list[BaseException] = []

        def saver(k: int) -> None:
            try:
                pv.save({"k": k, "v": k, "note": "x" * 1000})
            except Exception as exc:
                failures.append(exc)

        with over_maxmemory(raw, f"{views}:filler"):
            pv._sending.acquire()  # as if a round trip were in flight: the savers queue behind it
            workers = [threading.Thread(target=saver, args=(k,)) for k in keys]
            for w in workers:
                w.start()
            deadline = time.monotonic() + 10
            while len(pv._queue) < len(keys):
                assert time.monotonic() < deadline, "the savers did not queue"
                time.sleep(0.01)
            pv._sending.release()
            pv._wake_next()  # the oldest sends every queued save in one call
            for w in workers:
                w.join(timeout=30)
            assert sizes == [len(keys)] and len(failures) == len(keys)
            for failed in failures:
                _assert_out_of_memory(failed)
            assert raw.xlen(stream) == depth and raw.exists(*entries) == 0
            assert _xadds(raw) == xadds
        for k in keys:
            pv.save({"k": k, "v": k, "note": None})
        pv.flush(timeout=30)
        assert _rows(cluster, views) == {k: {"k": k, "v": k, "note": None} for k in range(9)}
        raw.close()
        pv.close()


def _rows_of(config: Path, table: str) -> dict[int, dict[str, Any]]:
    with Cluster.from_config(config) as cluster:
        return _rows(cluster, table)


def test_a_save_connection_the_server_closed_while_idle_is_replaced_before_sending(
    topology_config_path: Path, views: str
) -> None:
    """The save path probes its idle connection before sending (it never re-sends a save): a connection
    Redis closed in between is replaced, and the save goes through, once."""
    import asyncio

    import redis

    def kill_save_connections(raw: redis.Redis) -> None:
        for client in raw.client_list():
            if client["cmd"] == "evalsha":
                raw.client_kill_filter(_id=client["id"])
        time.sleep(0.1)  # the FIN reaches the client's socket

    with Cluster.from_config(topology_config_path) as cluster:
        raw = redis.Redis.from_url(str(cluster.config.cache.redis_url))
        pv = cluster.cache.write_behind(views, key_column="k", key=f"{views}:{{k}}")
        pv.save({"k": 1, "v": 1, "note": None})
        kill_save_connections(raw)
        pv.save({"k": 2, "v": 2, "note": None})

        async def main() -> None:
            async with AsyncCluster.from_config(topology_config_path) as acluster:
                apv = acluster.cache.write_behind(views, key_column="k", key=f"{views}:{{k}}")
                await apv.save({"k": 3, "v": 3, "note": None})
                kill_save_connections(raw)
                await asyncio.sleep(0.05)  # the event loop reads the EOF
                await apv.save({"k": 4, "v": 4, "note": None})
                await apv.close()

        asyncio.run(main())
        assert raw.xlen(pv.strategy.stream) == 4  # each save appended once
        pv.flush(timeout=30)
        assert {k: r["v"] for k, r in _rows(cluster, views).items()} == {1: 1, 2: 2, 3: 3, 4: 4}
        raw.close()
        pv.close()


def test_a_sender_cancelled_mid_round_trip_fails_its_batch_and_the_next_save_goes_through(
    topology_config_path: Path, views: str
) -> None:
    """The caller sending a shared round trip is cancelled while Redis holds it: every save it carried
    fails (it may or may not be in Redis), none hangs, and the next save runs on a fresh connection
    (no stale reply is read for it)."""
    import asyncio

    import redis

    from dbscale.errors import CacheUnavailable

    raw = redis.Redis.from_url(str(load_redis_url(topology_config_path)))

    async def main() -> None:
        async with AsyncCluster.from_config(topology_config_path) as cluster:
            pv = cluster.cache.write_behind(views, key_column="k", key=f"{views}:{{k}}")
            await pv.save({"k": 0, "v": 0, "note": None})  # persistence check, script loaded
            # a shared round trip first: the next sender yields once, so its batch-mates join it
            await asyncio.gather(*(pv.save({"k": k, "v": k, "note": None}) for k in (10, 11, 12)))
            sizes = _count_round_trips(pv)
            raw.client_pause(3000, all=False)  # WRITE mode: Redis holds the save script unanswered
            try:
                tasks = [asyncio.create_task(pv.save({"k": k, "v": k, "note": None})) for k in (1, 2, 3)]
                await asyncio.sleep(0.3)
                assert sizes == [3] and not any(t.done() for t in tasks)  # one round trip, in flight
                tasks[0].cancel()  # the sender
                done = await asyncio.wait_for(asyncio.gather(*tasks, return_exceptions=True), 2)
            finally:
                raw.client_unpause()
            assert isinstance(done[0], asyncio.CancelledError)
            for failed in done[1:]:
                assert isinstance(failed, CacheUnavailable) and "interrupted" in str(failed), failed
            entry_id = await pv.save({"k": 4, "v": 4, "note": None})
            assert await pv.get(4) == {"k": 4, "v": 4, "note": None}
            assert entry_id.encode() in {e[0] for e in raw.xrange(pv.strategy.stream)}
            await pv.flush(timeout=30)
            await pv.close()

    asyncio.run(main())
    raw.close()
    rows = _rows_of(topology_config_path, views)
    assert {0, 4, 10, 11, 12} <= set(rows) <= {0, 1, 2, 3, 4, 10, 11, 12}  # 1–3: maybe, never half-written
    assert all(r["v"] == k for k, r in rows.items())


def load_redis_url(config: Path) -> str:
    from dbscale.config import load_config

    return str(load_config(config).cache.redis_url)


def test_startup_warns_about_redis_settings_that_lose_acknowledged_changes(
    topology_config_path: Path, views: str, caplog: pytest.LogCaptureFixture
) -> None:
    """The first save checks the real Redis: appendonly no (the local topology's setting) and an evicting
    maxmemory-policy each get a warning; appendonly yes with noeviction gets none."""
    import redis

    raw = redis.Redis.from_url(load_redis_url(topology_config_path))
    before = raw.config_get("appendonly", "maxmemory", "maxmemory-policy")

    def first_save_warnings() -> list[str]:
        caplog.clear()
        with Cluster.from_config(topology_config_path) as cluster, caplog.at_level("WARNING", "dbscale.write_behind"):
            cluster.cache.write_behind(views, key_column="k", key=f"{views}:{{k}}").save({"k": 1, "v": 1, "note": None})
        return [r.getMessage() for r in caplog.records if r.name == "dbscale.write_behind"]

    try:
        raw.config_set("appendonly", "no")
        raw.config_set("maxmemory", str(1 << 30))
        raw.config_set("maxmemory-policy", "allkeys-lru")
        aof, evicting = first_save_warnings()
        assert "appendonly no" in aof and "allkeys-lru" in evicting
        raw.config_set("appendonly", "yes")
        raw.config_set("maxmemory-policy", "noeviction")
        assert first_save_warnings() == []
    finally:
        for name, value in before.items():
            raw.config_set(name, value)


def test_a_writer_made_before_fork_saves_and_flushes_in_the_child(topology_config_path: Path, views: str) -> None:
    """A write-behind object made before ``os.fork()`` (gunicorn ``--preload``): in the child, a save goes
    out on the child's own even when a parent's thread held the sender at the fork (else it would wait for
    a thread that is not there, forever), a save the parent had queued is not sent by the child (its caller
    is the parent's), and the parent's flusher object is a consumer of its own there."""
    from dbscale._compat import Wakeup
    from dbscale.cache.writes.policy import SAVE, Queued, pack_save

    with Cluster.from_config(topology_config_path) as cluster:
        pv = cluster.cache.write_behind(views, key_column="k", key=f"{views}:{{k}}")
        pv.save({"k": 1, "v": 1, "note": "parent"})  # the save connection is open
        flusher = pv.start_flusher(interval=0.05)
        s = pv.strategy
        held = {"k": 3, "v": 3, "note": "queued in the parent"}
        queued = Queued(pack_save(s.entry_key(s.key_of(held)), s.key_of(held), SAVE, s.dumps(held)), Wakeup())
        pv._sending.acquire()  # a parent's thread is mid-round-trip at the fork, one save queued behind it
        pv._queue.append(queued)
        read, write = os.pipe()
        pid = os.fork()
        if pid == 0:
            verdict = "failed"
            try:
                pv.save({"k": 2, "v": 2, "note": "child"})
                pv.flush(timeout=30)
                rows = _rows(cluster, views)
                inherited = (flusher.consumer, flusher.epoch)
                verdict = f"rows {sorted(rows)} consumer {inherited[0]} epoch {inherited[1]}"
            except BaseException as exc:
                verdict = f"failed: {exc!r}"
            finally:
                os.write(write, verdict.encode())
                os._exit(0)
        os.close(write)
        try:
            deadline = time.monotonic() + 60
            while os.waitpid(pid, os.WNOHANG) == (0, 0):
                if time.monotonic() > deadline:
                    os.kill(pid, signal.SIGKILL)
                    os.waitpid(pid, 0)
                    pytest.fail("the child's save waited for the parent's sender (a lock held at the fork)")
                time.sleep(0.05)
            with os.fdopen(read, "rb") as pipe:
                verdict = pipe.read().decode()
        finally:
            pv._queue.remove(queued)
            pv._sending.release()
        assert verdict.startswith("rows [1, 2] consumer "), verdict
        consumer = verdict.split()[4]
        assert consumer != flusher.consumer and consumer.split("-")[-2] == str(pid) and verdict.endswith("epoch None")
        assert pv.flusher_running is flusher  # the parent's (the child's flush may have taken the stream over)
        pv.flush(timeout=30)
        assert sorted(_rows(cluster, views)) == [1, 2]  # the parent's queued save was never sent
        flusher.stop()
        pv.close()
