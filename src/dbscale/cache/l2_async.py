"""L2 over redis.asyncio: the asyncio twin of :mod:`dbscale.cache.l2` (hand-written, same operations).

A redis.asyncio client belongs to the event loop it first ran on, so the async tier keeps one
:class:`AsyncRedisL2` per running loop.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager

import redis.asyncio as aredis

from dbscale.cache.keys import RedisKeys
from dbscale.cache.l2 import _ERRORS, BATCH, RELEASE_SCRIPT, CacheUnavailable, client_options
from dbscale.cache.leases import (
    FILL_SCRIPT,
    INVALIDATE_SCRIPT,
    LEASE_SCRIPT,
    SET_SCRIPT,
    LeaseReply,
    parse_lease_reply,
)
from dbscale.config import mask_url

__all__ = ["AsyncRedisL2"]


@asynccontextmanager
async def atranslate(url: str, op: str) -> AsyncIterator[None]:
    """Turn redis-py, socket and asyncio timeout errors into CacheUnavailable."""
    try:
        yield
    except (TimeoutError, *_ERRORS) as exc:
        raise CacheUnavailable(f"redis {mask_url(url)}: {op} failed: {type(exc).__name__}: {exc}") from exc


class AsyncRedisL2:
    """Asynchronous Redis operations of the cache."""

    def __init__(self, url: str, keys: RedisKeys, *, timeout: float, admin_timeout: float) -> None:
        self.url = url
        self.keys = keys
        self.client = aredis.Redis.from_url(url, **client_options(timeout))
        self.admin = aredis.Redis.from_url(url, **client_options(admin_timeout))
        self._lease = self.client.register_script(LEASE_SCRIPT)
        self._fill = self.client.register_script(FILL_SCRIPT)
        self._set = self.client.register_script(SET_SCRIPT)
        self._release = self.client.register_script(RELEASE_SCRIPT)
        self._invalidate = self.admin.register_script(INVALIDATE_SCRIPT)

    async def get(self, key: str) -> bytes | None:
        """The raw entry of ``key`` (None if absent)."""
        try:  # inline, not atranslate(): this is the hot path
            return await self.client.get(self.keys.value(key))  # type: ignore[no-any-return]
        except (TimeoutError, *_ERRORS) as exc:
            raise CacheUnavailable(f"redis {mask_url(self.url)}: GET failed: {type(exc).__name__}: {exc}") from exc

    async def lease(
        self, key: str, tags: Sequence[str], *, now_ms: int, token: str, lease_ms: int, tag_ttl: int, force: bool
    ) -> LeaseReply:
        """Run the lease script (see :mod:`dbscale.cache.leases`)."""
        keys = [*self.keys.triple(key), *(self.keys.tag(t) for t in tags)]
        async with atranslate(self.url, "lease"):
            reply = await self._lease(keys, [now_ms, token, lease_ms, tag_ttl, key, "1" if force else "0"])
        return parse_lease_reply(reply)

    async def fill(self, key: str, token: str, entry: bytes, px: int) -> bool:
        """Store ``entry`` if ``token`` still holds the lease; False means the fill was dropped."""
        async with atranslate(self.url, "fill"):
            return bool(await self._fill(self.keys.triple(key), [token, entry, px]))

    async def release(self, key: str, token: str) -> None:
        """Give the lease back if ``token`` still holds it."""
        async with atranslate(self.url, "release"):
            await self._release([self.keys.triple(key)[1]], [token])

    async def set(self, key: str, entry: bytes, px: int, tags: Sequence[str], tag_ttl: int) -> None:
        """Write ``entry`` unconditionally, revoking any lease."""
        keys = [*self.keys.triple(key), *(self.keys.tag(t) for t in tags)]
        async with atranslate(self.url, "set"):
            await self._set(keys, [entry, px, tag_ttl, key])

    async def invalidate(self, keys: Sequence[str], stale_px: int) -> int:
        """Invalidate cache keys in pipelined batches; returns how many held a value."""
        found = 0
        async with atranslate(self.url, "invalidate"):
            for start in range(0, len(keys), BATCH):
                pipe = self.admin.pipeline(transaction=False)
                for key in keys[start : start + BATCH]:
                    await self._invalidate(self.keys.triple(key), [stale_px], client=pipe)
                found += sum(int(r) for r in await pipe.execute())
        return found

    async def invalidate_tags(self, tags: Sequence[str], stale_px: int) -> list[str]:
        """Invalidate every key of each tag (SPOP batches, then per-key scripts); returns the keys."""
        out: list[str] = []
        for tag in tags:
            tag_key = self.keys.tag(tag)
            while True:
                async with atranslate(self.url, "SPOP"):
                    members = await self.admin.spop(tag_key, BATCH)
                if not members:
                    break
                batch = [m.decode() if isinstance(m, bytes) else str(m) for m in members]
                await self.invalidate(batch, stale_px)
                out.extend(batch)
        return out

    async def invalidate_pattern(self, pattern: str, stale_px: int) -> list[str]:
        """Invalidate every key matching a Redis glob, found with SCAN batches (never KEYS)."""
        out: list[str] = []
        seen: set[str] = set()
        cursor = 0
        match = self.keys.scan_pattern(pattern)
        while True:
            async with atranslate(self.url, "SCAN"):
                cursor, found = await self.admin.scan(cursor, match=match, count=BATCH)
            batch = [k for k in {self.keys.user_key(r) for r in found} if k not in seen]
            if batch:
                await self.invalidate(batch, stale_px)
                seen.update(batch)
                out.extend(batch)
            if cursor == 0:
                return out

    async def publish(self, channel: str, message: bytes) -> None:
        """Broadcast an invalidation message."""
        async with atranslate(self.url, "PUBLISH"):
            await self.admin.publish(channel, message)

    async def ping(self) -> bool:
        """True if Redis answers."""
        async with atranslate(self.url, "PING"):
            return bool(await self.client.ping())

    async def close(self) -> None:
        """Close both connection pools."""
        await self.client.aclose()
        await self.admin.aclose()
