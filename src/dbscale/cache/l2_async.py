"""L2 over Redis: the lease scripts, batched invalidation, and error translation.

The asyncio client (``l2_async.py``, over redis.asyncio) is the source; the blocking one (``l2.py``,
over redis-py) is generated from it by ``scripts/unasync.py``; what they share is in
:mod:`dbscale.cache.l2_base`. A redis.asyncio client belongs to the event loop it first ran on, so
the asyncio cache keeps one client per running loop.

Every redis-py error (and socket error) leaving this module is a :class:`CacheUnavailable`, raised
``from`` the original, so the tier above can fail open without knowing about redis-py — except a
per-key error (a key of the wrong Redis type), which is a :class:`~dbscale.errors.CacheEntryError`.

The read of a hit (:meth:`AsyncRedisL2.get`) does not go through ``Redis.get``: it sends a
pre-packed ``GET`` on a connection of its own idle list. redis-py's pool probes every connection
before every command (``can_read``: three socket syscalls; redis.asyncio runs it under
``asyncio.timeout(0)``, an extra turn of the event loop) to catch one the server closed or one left
with an unread reply; on a hit that probe and the command layers around it cost more than the rest
of the cache together. Neither case can go unnoticed here: a connection is disconnected on any
error or interruption during a send or a read (so no reply is ever left unread), and a connection
the server closed fails at once on the next send or read, which :meth:`AsyncRedisL2.get` then
retries once on a fresh connection (GET is idempotent). Timeouts are never retried, so a slow Redis
still fails the read within ``timeout``: the asyncio client bounds send and read together with one
deadline (``_compat.adeadline``), the blocking one with its socket timeout. Idle connections are
dropped in a forked child.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, cast

import redis.asyncio as aredis

from dbscale._compat import adeadline
from dbscale.cache.invalidation import Invalidation, encode_message
from dbscale.cache.keys import RedisKeys
from dbscale.cache.l2_base import (
    BATCH,
    ERRORS,
    AConn,
    CacheUnavailable,
    aconnected,
    adrop,
    aget_options,
    client_options,
    failure,
    live,
    make_connection,
    packed_get,
    translate,
    unreplicated,
)
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

__all__ = ["BATCH", "AsyncRedisL2", "CacheUnavailable", "client_options", "failure"]


class AsyncRedisL2:
    """The cache's Redis operations. ``timeout`` bounds reads; ``admin_timeout`` invalidations."""

    def __init__(self, url: str, keys: RedisKeys, *, timeout: float, admin_timeout: float) -> None:
        self.url = url
        self.keys = keys
        self.timeout = timeout
        self._wait_ms = max(1, int(admin_timeout * 1000))
        self._value_prefix = keys.value("")[:-1]  # "ns:v:{"; a value key is this + key + "}"
        self._get_pool = aredis.ConnectionPool.from_url(url, **aget_options(timeout))
        self._idle: list[AConn] = []
        self.client = aredis.Redis.from_url(url, **client_options(timeout))
        self.admin = aredis.Redis.from_url(url, **client_options(admin_timeout))
        self._lease = self.client.register_script(LEASE_SCRIPT)
        self._fill = self.client.register_script(FILL_SCRIPT)
        self._set = self.client.register_script(SET_SCRIPT)
        self._release = self.client.register_script(RELEASE_SCRIPT)
        self._invalidate = self.admin.register_script(INVALIDATE_SCRIPT)
        self._mark = self.admin.register_script(MARK_SCRIPT)
        live.add(self)

    async def get(self, key: str) -> bytes | None:
        """The raw entry of ``key`` (None if absent); see the module docstring for the transport."""
        command = packed_get((self._value_prefix + key + "}").encode())
        idle = self._idle
        conn = idle.pop() if idle else self._new_connection()
        was_connected = aconnected(conn)
        try:
            if not was_connected:
                await conn.connect()  # bounded by socket_connect_timeout
            async with adeadline(self.timeout):
                await conn.send_packed_command(command, check_health=False)
                entry = await conn.read_response()
        except aredis.ConnectionError as exc:  # not a timeout: redis.TimeoutError is no ConnectionError
            if not was_connected:
                idle.append(conn)
                raise failure(self.url, "GET", exc) from exc
            return await self._get_again(conn, command)  # the server closed it while idle: once more, fresh
        except ERRORS as exc:
            await adrop(conn)  # a timeout may leave the reply unread
            idle.append(conn)
            raise failure(self.url, "GET", exc) from exc
        except BaseException:
            await adrop(conn)  # interrupted between send and read: the reply must not be read by another call
            idle.append(conn)
            raise
        idle.append(conn)
        return cast(bytes | None, entry)

    def _new_connection(self) -> AConn:
        return cast(AConn, make_connection(self._get_pool))

    async def _get_again(self, conn: AConn, command: tuple[bytes]) -> bytes | None:
        try:
            await adrop(conn)
            await conn.connect()
            async with adeadline(self.timeout):
                await conn.send_packed_command(command, check_health=False)
                entry = await conn.read_response()
        except ERRORS as exc:
            await adrop(conn)
            raise failure(self.url, "GET", exc) from exc
        except BaseException:
            await adrop(conn)
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

    async def apply(self, inv: Invalidation, stale_px: int, origin: str, marker_px: int = 0) -> list[str]:
        """Apply ``inv`` to Redis and broadcast it; returns the keys it reached. Raises CacheUnavailable."""
        px = stale_px if inv.stale else 0
        mark = (inv.marker, marker_px)
        channel = self.keys.channel
        if inv.kind == "key":
            keys = list(inv.items)
            await self.invalidate(keys, px, *mark)
            await self.publish(channel, encode_message(origin, keys=keys))
            return keys
        if inv.kind == "tag":
            keys = await self.invalidate_tags(list(inv.items), px, *mark)
            if keys:
                await self.publish(channel, encode_message(origin, keys=keys))
            return keys
        keys = []
        for pattern in inv.items:
            found = await self.invalidate_pattern(pattern, px, *mark)
            await self.publish(channel, encode_message(origin, keys=found, pattern=pattern))
            keys.extend(found)
        return keys

    async def invalidate(
        self, keys: Sequence[str], stale_px: int, marker: str = "", marker_px: int = 0, replicas: int = 0
    ) -> int:
        """Invalidate cache keys in pipelined batches, recording ``marker`` (a causal token) for each
        first; returns how many held a value. With ``replicas`` (a Redis Cluster master's), each batch
        counts as applied only once ``WAIT`` saw it on that many replicas (see docs/redis-cluster.md §3)."""
        found = 0
        with translate(self.url, "invalidate"):
            for start in range(0, len(keys), BATCH):
                pipe = self.admin.pipeline(transaction=False)
                for key in keys[start : start + BATCH]:
                    await self._invalidate(
                        [*self.keys.triple(key), self.keys.marker(key)], [stale_px, marker, marker_px], client=pipe
                    )
                if replicas:
                    cast(Any, pipe).execute_command("WAIT", replicas, self._wait_ms)
                replies = await pipe.execute()
                if replicas and int(replies.pop()) < replicas:
                    raise unreplicated(self.url, replicas, self._wait_ms)
                found += sum(int(r) for r in replies)
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
                cursor, found = cast(tuple[int, list[bytes]], await self.admin.scan(cursor, match=match, count=BATCH))
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
