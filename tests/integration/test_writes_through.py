"""Write-through on the real topology: concurrent writers never leave an older row cached.

16 writers (threads; and 16 asyncio tasks) save random rows over 50 keys; afterwards every cache
entry equals its committed row. The control runs the textbook "save, then set the cache" with the
same writers and finds stale entries. Full size (20 s) is ``slow``; the default suite runs 3 s.
"""

from __future__ import annotations

import asyncio
import random
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import text

from dbscale import AsyncCluster, Cluster

from .helpers import over_maxmemory, replicated_table

WRITERS, KEYS = 16, 50


@pytest.fixture
def rows_table(topology_config_path: Path) -> Iterator[str]:
    """An empty ``(k int PRIMARY KEY, v bigint, w text)`` table."""
    with replicated_table(topology_config_path, "k int PRIMARY KEY, v bigint NOT NULL, w text", "SELECT 1") as name:
        yield name


def _committed(cluster: Cluster, table: str) -> dict[int, dict[str, Any]]:
    with cluster.write() as conn:
        return {r["k"]: dict(r) for r in conn.execute(text(f"SELECT * FROM {table}")).mappings()}


def _threads(seconds: float, write: Any) -> int:
    stop = time.monotonic() + seconds
    counts = [0] * WRITERS
    errors: list[BaseException] = []

    def run(w: int) -> None:
        rng = random.Random(w)
        try:
            while time.monotonic() < stop:
                write({"k": rng.randrange(KEYS), "v": rng.randrange(1 << 40), "w": f"w{w}"})
                counts[w] += 1
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(w,)) for w in range(WRITERS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    return sum(counts)


def _race(config: Path, table: str, seconds: float) -> None:
    with Cluster.from_config(config) as cluster:
        users = cluster.cache.write_through(table, key_column="k", key=f"{table}:{{k}}")
        writes = _threads(seconds, users.save)
        assert writes > WRITERS
        rows = _committed(cluster, table)
        assert rows
        stale = {k: (users.redis.fetch(f"{table}:{k}"), row) for k, row in rows.items()}
        assert all(found and cached == row for (found, cached), row in stale.values()), {
            k: v for k, v in stale.items() if v[0] != (True, v[1])
        }
        users.close()


def _textbook_stale(config: Path, table: str, seconds: float) -> int:
    """The textbook write-through: commit, then ``cache.set``. How many keys end stale."""
    with Cluster.from_config(config) as cluster:
        cache = cluster.cache
        prefix = uuid.uuid4().hex[:6]

        def save(row: dict[str, Any]) -> None:
            with cluster.write() as conn:
                conn.execute(
                    text(f"INSERT INTO {table} VALUES (:k, :v, :w) ON CONFLICT (k) DO UPDATE SET v = :v, w = :w"), row
                )
            cache.set(f"{prefix}:{row['k']}", row)

        stale = 0
        deadline = time.monotonic() + 10 * seconds
        while not stale and time.monotonic() < deadline:  # a few rounds: the race is a matter of luck
            _threads(seconds, save)
            rows = _committed(cluster, table)
            stale = sum(cache.get(f"{prefix}:{k}", l1=False) != row for k, row in rows.items())
        return stale


def test_write_through_race_threads(topology_config_path: Path, rows_table: str) -> None:
    _race(topology_config_path, rows_table, 3.0)


@pytest.mark.slow
def test_write_through_race_threads_full(topology_config_path: Path, rows_table: str) -> None:
    _race(topology_config_path, rows_table, 20.0)


def test_textbook_set_after_save_leaves_stale_entries(topology_config_path: Path, rows_table: str) -> None:
    assert _textbook_stale(topology_config_path, rows_table, 3.0) > 0


async def _arace(config: Path, table: str, seconds: float) -> None:
    async with AsyncCluster.from_config(config) as cluster:
        users = cluster.cache.write_through(table, key_column="k", key=f"{table}:{{k}}")
        stop = time.monotonic() + seconds

        async def run(w: int) -> None:
            rng = random.Random(w)
            while time.monotonic() < stop:
                await users.save({"k": rng.randrange(KEYS), "v": rng.randrange(1 << 40), "w": f"w{w}"})

        await asyncio.gather(*(run(w) for w in range(WRITERS)))
        async with cluster.write() as conn:
            rows = {r["k"]: dict(r) for r in (await conn.execute(text(f"SELECT * FROM {table}"))).mappings()}
        assert rows
        for k, row in rows.items():
            assert await users.redis.fetch(f"{table}:{k}") == (True, row)
            assert await users.get(k) == row
        await users.close()


def test_write_through_race_asyncio(topology_config_path: Path, rows_table: str) -> None:
    asyncio.run(_arace(topology_config_path, rows_table, 3.0))


@pytest.mark.slow
def test_write_through_race_asyncio_full(topology_config_path: Path, rows_table: str) -> None:
    asyncio.run(_arace(topology_config_path, rows_table, 20.0))


def test_delete_leaves_a_tombstone_a_late_set_cannot_beat(topology_config_path: Path, rows_table: str) -> None:
    with Cluster.from_config(topology_config_path) as cluster:
        users = cluster.cache.write_through(rows_table, key_column="k", key=f"{rows_table}:{{k}}", tombstone_ttl=30)
        v1 = users.save({"k": 1, "v": 10, "w": "a"})
        v2 = users.delete(1)
        assert v2 > v1
        assert users.get(1) is None
        key = f"{rows_table}:1"
        # a set of the older version arriving late (a slow writer) is refused, and so is a fill
        assert not users.redis.set_if_newer(key, v1, users.strategy.dumps({"k": 1, "v": 10, "w": "a"}), False, 60_000)
        assert not users.redis.set_if_newer(key, 0, users.strategy.dumps({"k": 1, "v": 10, "w": "a"}), False, 60_000)
        assert users.get(1) is None
        v3 = users.save({"k": 1, "v": 30, "w": "b"})
        assert v3 > v2
        assert users.get(1) == {"k": 1, "v": 30, "w": "b"}
        users.close()


def test_get_fills_from_the_database(topology_config_path: Path, rows_table: str) -> None:
    with Cluster.from_config(topology_config_path) as cluster:
        with cluster.write() as conn:
            conn.execute(text(f"INSERT INTO {rows_table} VALUES (7, 70, 'x')"))
        users = cluster.cache.write_through(rows_table, key_column="k", key=f"{rows_table}:{{k}}")
        row = {"k": 7, "v": 70, "w": "x"}
        with cluster.read(after=cluster.causal_token()) as conn:
            assert conn.execute(text(f"SELECT v FROM {rows_table} WHERE k = 7")).scalar_one() == 70
        assert users.get(7) == row
        assert users.redis.fetch(f"{rows_table}:7") == (True, row)
        assert users.get(8) is None
        users.close()


def test_garbage_at_an_entry_is_a_miss_and_is_replaced(topology_config_path: Path, rows_table: str) -> None:
    """Data dbscale did not write at an entry key (another type, or a hash with foreign fields): get() reads the
    database, and the next fill or save replaces it; the row is never lost behind it."""
    import redis

    with Cluster.from_config(topology_config_path) as cluster:
        with cluster.write() as conn:
            conn.execute(text(f"INSERT INTO {rows_table} VALUES (7, 70, 'x'), (8, 80, 'y')"))
        users = cluster.cache.write_through(rows_table, key_column="k", key=f"{rows_table}:{{k}}")
        raw = redis.Redis.from_url(str(cluster.config.cache.redis_url))
        entry7, entry8 = users.strategy.entry_key(f"{rows_table}:7"), users.strategy.entry_key(f"{rows_table}:8")
        raw.set(entry7, b"not a hash")
        raw.hset(entry8, mapping={"v": "zz", "d": b"\x00garbage"})
        corrupt = cluster.metrics.value("cache_corrupt_entries_total")
        with cluster.read(after=cluster.causal_token()) as conn:
            assert conn.execute(text(f"SELECT count(*) FROM {rows_table}")).scalar_one() == 2
        assert users.get(7) == {"k": 7, "v": 70, "w": "x"}  # a WRONGTYPE entry: read through, then filled
        assert users.redis.fetch(f"{rows_table}:7") == (True, {"k": 7, "v": 70, "w": "x"})
        assert users.get(8) == {"k": 8, "v": 80, "w": "y"}  # foreign fields: a counted miss
        assert cluster.metrics.value("cache_corrupt_entries_total") > corrupt
        raw.set(entry7, b"garbage again")
        users.save({"k": 7, "v": 71, "w": "z"})  # committed, then the entry replaces the garbage
        assert users.redis.fetch(f"{rows_table}:7") == (True, {"k": 7, "v": 71, "w": "z"})
        raw.close()
        users.close()


def test_a_save_over_maxmemory_commits_the_row_and_says_redis_is_out_of_memory(
    topology_config_path: Path, rows_table: str
) -> None:
    import redis

    from dbscale.errors import CacheUnavailable

    with Cluster.from_config(topology_config_path) as cluster:
        users = cluster.cache.write_through(rows_table, key_column="k", key=f"{rows_table}:{{k}}")
        users.save({"k": 1, "v": 10, "w": "a"})
        raw = redis.Redis.from_url(str(cluster.config.cache.redis_url))
        with (
            over_maxmemory(raw, f"{rows_table}:filler"),
            pytest.raises(CacheUnavailable, match=r"is committed.*out of memory.*maxmemory"),
        ):
            users.save({"k": 1, "v": 11, "w": "b"})
        assert _committed(cluster, rows_table)[1] == {"k": 1, "v": 11, "w": "b"}  # the database has it
        users.save({"k": 1, "v": 12, "w": "c"})  # memory is back: the entry follows the row again
        assert users.get(1) == {"k": 1, "v": 12, "w": "c"}
        raw.close()
        users.close()
