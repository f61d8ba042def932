"""invalidate_on_commit: queued inside ``cluster.write()``, run right after COMMIT, dropped on rollback."""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path

import pytest
from sqlalchemy import text

from dbscale import AsyncCluster, Cluster
from dbscale.errors import NotInTransaction


def _key() -> str:
    return f"ioc:{uuid.uuid4().hex[:8]}"


def test_rollback_leaves_the_cache_and_commit_invalidates_before_write_returns(
    topology_config_path: Path, table: str
) -> None:
    with Cluster.from_config(topology_config_path) as cluster:
        cache = cluster.cache
        key, tagged = _key(), _key()
        cache.set(key, "old")
        cache.set(tagged, "old", tags=[f"{tagged}:tag"])
        with pytest.raises(RuntimeError, match="boom"), cluster.write() as conn:
            conn.execute(text(f"UPDATE {table} SET v = -1 WHERE k = 1"))
            cache.invalidate_on_commit(key, tags=[f"{tagged}:tag"])
            raise RuntimeError("boom")
        assert cache.get(key, l1=False) == "old"
        assert cache.get(tagged, l1=False) == "old"

        with cluster.write() as conn:
            conn.execute(text(f"UPDATE {table} SET v = -1 WHERE k = 1"))
            cache.invalidate_on_commit(key, tags=[f"{tagged}:tag"])
            assert cache.get(key, l1=False) == "old", "an invalidation ran before COMMIT"
        assert cache.get(key, l1=False) is None
        assert cache.get(key) is None
        assert cache.get(tagged, l1=False) is None


def test_a_failed_commit_drops_the_queue(topology_config_path: Path, table: str) -> None:
    with Cluster.from_config(topology_config_path) as cluster:
        cache = cluster.cache
        key = _key()
        cache.set(key, "old")
        with pytest.raises(Exception), cluster.write() as conn:  # noqa: B017 - whatever the driver raises
            cache.invalidate_on_commit(key)
            conn.execute(text(f"INSERT INTO {table} VALUES (1, 1)"))  # duplicate key: the transaction fails
        assert cache.get(key, l1=False) == "old"


def test_decorated_function_invalidate_on_commit(topology_config_path: Path, table: str) -> None:
    with Cluster.from_config(topology_config_path) as cluster:
        calls: list[int] = []
        prefix = uuid.uuid4().hex[:6]

        @cluster.cache.cached(ttl=60, key=prefix + ":{k}")
        def value(k: int) -> int:
            calls.append(k)
            with cluster.write() as conn:  # the primary: what was committed
                return int(conn.execute(text(f"SELECT v FROM {table} WHERE k = :k"), {"k": k}).scalar_one())

        assert value(2) == 20
        with cluster.write() as conn:
            conn.execute(text(f"UPDATE {table} SET v = 21 WHERE k = 2"))
            value.invalidate_on_commit(2)  # type: ignore[attr-defined]
            assert value(2) == 20  # still cached inside the transaction
        assert value(2) == 21
        assert calls == [2, 2]


def test_outside_a_write_block_is_an_error(topology_config_path: Path) -> None:
    with Cluster.from_config(topology_config_path) as cluster, pytest.raises(NotInTransaction, match="inside"):
        cluster.cache.invalidate_on_commit(_key())


def test_async_twin(topology_config_path: Path, table: str) -> None:
    async def main() -> None:
        async with AsyncCluster.from_config(topology_config_path) as cluster:
            cache = cluster.cache
            key = _key()
            await cache.set(key, "old")
            with pytest.raises(RuntimeError):
                async with cluster.write() as conn:
                    await conn.execute(text(f"UPDATE {table} SET v = -1 WHERE k = 3"))
                    cache.invalidate_on_commit(key)
                    raise RuntimeError("boom")
            assert await cache.get(key, l1=False) == "old"
            async with cluster.write() as conn:
                await conn.execute(text(f"UPDATE {table} SET v = -1 WHERE k = 3"))
                cache.invalidate_on_commit(key)
                assert await cache.get(key, l1=False) == "old"
            assert await cache.get(key, l1=False) is None

    asyncio.run(main())
