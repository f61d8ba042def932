"""Checked by mypy (``make lint`` and tests/unit/test_typing.py), never run: ``cached`` keeps signatures.

Each ``assert_type`` is a claim mypy verifies; a wrong one is a mypy error, so this file passing
``mypy --strict`` is the proof that the decorated functions keep their parameters and results.
"""

from __future__ import annotations

from typing import Any, assert_type

from dbscale.cache import AsyncCache, Cache


def sync_front(cache: Cache) -> None:
    @cache.cached(ttl=60, key="user:{user_id}")
    def get_user(user_id: int, *, fresh: bool = False) -> dict[str, Any] | None:
        return {"id": user_id}

    assert_type(get_user(42), dict[str, Any] | None)
    assert_type(get_user(user_id=42, fresh=True), dict[str, Any] | None)
    assert_type(get_user.invalidate(42), bool)
    assert_type(get_user.refresh(42), dict[str, Any] | None)
    assert_type(get_user.cache_key(user_id=42), str)

    @cache.cached(ttl=60)
    async def count(n: int) -> int:  # the blocking cache decorates async functions too
        return n

    async def use() -> None:
        assert_type(await count(1), int)
        assert_type(await count.invalidate(1), bool)
        assert_type(await count.refresh(1), int)


async def async_front(cache: AsyncCache) -> None:
    @cache.cached(ttl=60, key="order:{order_id}")
    async def get_order(order_id: str) -> list[int]:
        return [1]

    assert_type(await get_order("a"), list[int])
    assert_type(await get_order.invalidate(order_id="a"), bool)
    assert_type(await get_order.refresh("a"), list[int])
    assert_type(get_order.cache_key("a"), str)

    @cache.cached(ttl=60)
    def plain(x: float) -> float:
        return x

    assert_type(plain(1.5), float)
    assert_type(plain.invalidate(1.5), bool)
    assert_type(cache.sync, Cache)
    assert_type(cache.aio, AsyncCache)


def methods(cache: Cache, acache: AsyncCache) -> None:
    class Repo:
        @cache.cached(ttl=60, key="user:{user_id}")
        def get_user(self, user_id: int) -> dict[str, Any] | None:
            return {"id": user_id}

        @acache.cached(ttl=60)
        async def count(self, n: int) -> int:
            return n

    repo = Repo()
    assert_type(repo.get_user(42), dict[str, Any] | None)  # the instance is bound
    assert_type(repo.get_user.invalidate(42), bool)
    assert_type(repo.get_user.cache_key(42), str)
    assert_type(Repo.get_user(repo, 42), dict[str, Any] | None)
    Repo.get_user("not a repo", 42)  # type: ignore[arg-type]

    async def use() -> None:
        assert_type(await repo.count(1), int)
        assert_type(await repo.count.invalidate(1), bool)
