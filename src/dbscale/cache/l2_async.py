"""L2 over redis.asyncio: the asyncio twin of :mod:`dbscale.cache.l2` (hand-written, same operations).

A redis.asyncio client belongs to the event loop it first ran on, so the async tier keeps one
:class:`AsyncRedisL2` per running loop.

:meth:`AsyncRedisL2.get` uses the same transport as the sync :meth:`~dbscale.cache.l2.RedisL2.get`
(its own idle connections, no per-command pool probe; see :mod:`dbscale.cache.l2`). The probe costs
even more here: redis.asyncio runs it under ``asyncio.timeout(0)``, an extra turn of the event loop
per command. Its connections have no socket timeout of their own (with one, every send is wrapped
in ``asyncio.wait_for``, a new task per command); one ``asyncio.timeout`` bounds the send and the
read together, and (re)connecting is bounded by the connect timeout, as in the sync client.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any, Protocol, cast

import redis.asyncio as aredis

from dbscale.cache.keys import RedisKeys
from dbscale.cache.l2 import _ERRORS, BATCH, client_options, failure, packed_get, translate
from dbscale.cache.leases import (
    FILL_SCRIPT,
    INVALIDATE_SCRIPT,
    LEASE_SCRIPT,
    MARK_SCRIPT,
    RELEASE_SCRIPT,
    SET_SCRIPT,
    LeaseReply,
    lease_request,
    parse_lease_reply,
)
from dbscale.errors import CacheEntryError

__all__ = ["AsyncRedisL2"]


class _AConn(Protocol):
    """The part of a redis.asyncio connection the GET fast path uses."""

    @property
    def is_connected(self) -> bool: ...

    async def send_packed_command(self, command: bytes, check_health: bool = True) -> Any: ...

    async def read_response(self) -> Any: ...

    async def connect(self) -> Any: ...

    async def disconnect(self, nowait: bool = False) -> Any: ...


class AsyncRedisL2:
    """Asynchronous Redis operations of the cache."""

    def __init__(self, url: str, keys: RedisKeys, *, timeout: float, admin_timeout: float) -> None:
        self.url = url
        self.keys = keys
        self.timeout = timeout
        self._value_prefix = keys.value("")[:-1]  # "ns:v:{"; a value key is this + key + "}"
        self._get_pool = aredis.ConnectionPool.from_url(url, **{**client_options(timeout), "socket_timeout": None})
        self._idle: list[_AConn] = []
        self.client = aredis.Redis.from_url(url, **client_options(timeout))
        self.admin = aredis.Redis.from_url(url, **client_options(admin_timeout))
        self._lease = self.client.register_script(LEASE_SCRIPT)
        self._fill = self.client.register_script(FILL_SCRIPT)
        self._set = self.client.register_script(SET_SCRIPT)
        self._release = self.client.register_script(RELEASE_SCRIPT)
        self._invalidate = self.admin.register_script(INVALIDATE_SCRIPT)
        self._mark = self.admin.register_script(MARK_SCRIPT)

    async def get(self, key: str) -> bytes | None:
        """The raw entry of ``key`` (None if absent); see the module docstring for the transport."""
        command = packed_get((self._value_prefix + key + "}").encode())
        idle = self._idle
        conn = idle.pop() if idle else cast(_AConn, self._get_pool.make_connection())  # type: ignore[no-untyped-call]
        was_connected = conn.is_connected
        try:
            if not was_connected:
                await conn.connect()  # bounded by socket_connect_timeout, as in the sync client
            async with asyncio.timeout(self.timeout):
                await conn.send_packed_command(command, check_health=False)
                entry = await conn.read_response()
        except aredis.ConnectionError as exc:  # not a timeout: redis.TimeoutError is no ConnectionError
            if not was_connected:
                idle.append(conn)
                raise failure(self.url, "GET", exc) from exc
            return await self._get_again(conn, command)  # the server closed it while idle: once more, fresh
        except _ERRORS as exc:
            await conn.disconnect(nowait=True)  # a timeout may leave the reply unread
            idle.append(conn)
            raise failure(self.url, "GET", exc) from exc
        except BaseException:
            await conn.disconnect(nowait=True)  # cancelled: the reply must not be read by another call
            idle.append(conn)
            raise
        idle.append(conn)
        return cast(bytes | None, entry)

    async def _get_again(self, conn: _AConn, command: bytes) -> bytes | None:
        try:
            await conn.disconnect(nowait=True)
            await conn.connect()
            async with asyncio.timeout(self.timeout):
                await conn.send_packed_command(command, check_health=False)
                entry = await conn.read_response()
        except _ERRORS as exc:
            await conn.disconnect(nowait=True)
            raise failure(self.url, "GET", exc) from exc
        except BaseException:
            await conn.disconnect(nowait=True)
            raise
        finally:
            self._idle.append(conn)
        return cast(bytes | None, entry)

    async def lease(
        self,
        key: str,
        tags: Sequence[str],
        now_ms: int,
        token: str,
        lease_ms: int,
        tag_ttl: int,
        force: bool,
        markers: bool = False,
    ) -> LeaseReply:
        """Run the lease script (see :mod:`dbscale.cache.leases`); ``markers`` reads the key's lag-aware fill markers."""
        keys, argv = lease_request(self.keys, key, tags, now_ms, token, lease_ms, tag_ttl, force, markers)
        with translate(self.url, "lease"):
            reply = await self._lease(keys, argv)
        return parse_lease_reply(reply)

    async def fill(self, key: str, token: str, entry: bytes, px: int) -> bool:
        """Store ``entry`` if ``token`` still holds the lease; False means the fill was dropped."""
        with translate(self.url, "fill"):
            return bool(await self._fill(self.keys.triple(key), [token, entry, px]))

    async def release(self, key: str, token: str) -> None:
        """Give the lease back if ``token`` still holds it."""
        with translate(self.url, "release"):
            await self._release([self.keys.triple(key)[1]], [token])

    async def set(self, key: str, entry: bytes, px: int, tags: Sequence[str], tag_ttl: int) -> None:
        """Write ``entry`` unconditionally, revoking any lease."""
        keys = [*self.keys.triple(key), *(self.keys.tag(t) for t in tags)]
        with translate(self.url, "set"):
            await self._set(keys, [entry, px, tag_ttl, key])

    async def invalidate(self, keys: Sequence[str], stale_px: int, marker: str = "", marker_px: int = 0) -> int:
        """Invalidate cache keys in pipelined batches, recording ``marker`` (a causal token) for each
        first; returns how many held a value."""
        found = 0
        with translate(self.url, "invalidate"):
            for start in range(0, len(keys), BATCH):
                pipe = self.admin.pipeline(transaction=False)
                for key in keys[start : start + BATCH]:
                    await self._invalidate(
                        [*self.keys.triple(key), self.keys.marker(key)], [stale_px, marker, marker_px], client=pipe
                    )
                found += sum(int(r) for r in await pipe.execute())
        return found

    async def invalidate_tags(
        self, tags: Sequence[str], stale_px: int, marker: str = "", marker_px: int = 0
    ) -> list[str]:
        """Invalidate every key of each tag (SPOP batches, then per-key scripts); returns the keys.
        ``marker`` is recorded per tag before any value is deleted."""
        out: list[str] = []
        if marker:
            with translate(self.url, "mark"):
                await self._mark([self.keys.tag_marker(t) for t in tags], [marker, marker_px])
        for tag in tags:
            tag_key = self.keys.tag(tag)
            while True:
                try:
                    with translate(self.url, "SPOP"):
                        members = await self.admin.spop(tag_key, BATCH)
                except CacheEntryError:  # not a set: not ours, so it names no key to reach; clear it
                    with translate(self.url, "DEL"):
                        await self.admin.delete(tag_key)
                    break
                if not members:
                    break
                batch = [m.decode() if isinstance(m, bytes) else str(m) for m in members]
                await self.invalidate(batch, stale_px, marker, marker_px)
                out.extend(batch)
        return out

    async def invalidate_pattern(self, pattern: str, stale_px: int, marker: str = "", marker_px: int = 0) -> list[str]:
        """Invalidate every key matching a Redis glob, found with SCAN batches (never KEYS).
        ``marker`` is recorded first, namespace-wide."""
        out: list[str] = []
        if marker:
            with translate(self.url, "mark"):
                await self._mark([self.keys.pattern_marker], [marker, marker_px])
        seen: set[str] = set()
        cursor = 0
        match = self.keys.scan_pattern(pattern)
        while True:
            with translate(self.url, "SCAN"):
                cursor, found = await self.admin.scan(cursor, match=match, count=BATCH)
            batch = [k for k in {self.keys.user_key(r) for r in found} if k not in seen]
            if batch:
                await self.invalidate(batch, stale_px, marker, marker_px)
                seen.update(batch)
                out.extend(batch)
            if cursor == 0:
                return out

    async def publish(self, channel: str, message: bytes) -> None:
        """Broadcast an invalidation message."""
        with translate(self.url, "PUBLISH"):
            await self.admin.publish(channel, message)

    async def close(self) -> None:
        """Close the connection pools and the idle GET connections."""
        idle, self._idle = self._idle, []
        for conn in idle:
            await conn.disconnect()
        await self.client.aclose()
        await self.admin.aclose()
