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

from .helpers import replicated_table

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
import json, random, sys
from dbscale import Cluster
config, table, saves, keys, out = sys.argv[1:6]
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


def _crash(config: Path, table: str, tmp_path: Path, saves: int, keys: int) -> None:
    out = tmp_path / "last.json"
    writer = subprocess.Popen([sys.executable, "-c", WRITER, str(config), table, str(saves), str(keys), str(out)])
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
    _crash(topology_config_path, views, tmp_path, 5_000, 200)


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
