"""The cache front end: L1 → Redis L2 → loader, with leases, single-flight and fail-open.

The asyncio front end (``tier_async.py``) is the source; the blocking one (``tier.py``) is generated
from it by ``scripts/unasync.py`` (edit the source, then run the script). This holds the public API,
the hit path and direct access (get/set/invalidate). The miss path is :func:`dbscale.cache.miss.miss_flow`, driven
here by :meth:`AsyncCache._run`; in-process single-flight is :mod:`dbscale.cache.flight`. Waiting
between lease polls holds no connection. The two front ends do not import each other: a front
builds its twin over the same core by flavour (:class:`~dbscale.cache.core.CacheFront`).
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

from dbscale._compat import ALoopLocal, acall_loader, asleep, ato_thread
from dbscale.cache.core import CacheCore, CacheFront, Options
from dbscale.cache.decorator import Decorator, make_cached
from dbscale.cache.flight import AsyncSingleFlight
from dbscale.cache.invalidation import Invalidation, encode_message
from dbscale.cache.keys import TagBuilder
from dbscale.cache.l2_async import AsyncRedisL2
from dbscale.cache.l2_cluster_async import make_l2
from dbscale.cache.miss import Flow, Op, miss_flow, tag_thunk
from dbscale.config import CacheConfig
from dbscale.errors import CacheEntryError, CacheUnavailable, MarkerUnavailable, SerializationError
from dbscale.metrics import Metrics

if TYPE_CHECKING:
    from dbscale.cache.writes.behind_aio import AsyncWriteBehind
    from dbscale.cache.writes.through_aio import AsyncWriteThrough

__all__ = ["AsyncCache"]

T = TypeVar("T")


class AsyncCache(CacheFront, flavour="async"):
    """Tiered cache for asyncio code (redis.asyncio). Safe to share between tasks.

    >>> cache = AsyncCache(CacheConfig(redis_url="redis://127.0.0.1:6380/0", namespace="app"))  # doctest: +SKIP
    >>> @cache.cached(ttl=300, key="user:{user_id}", tags=["user:{user_id}"])  # doctest: +SKIP
    ... async def get_user(user_id: int) -> dict | None: ...
    >>> await cache.invalidate_tags("user:42")  # doctest: +SKIP

    ``cached`` also decorates functions of the other kind (through the twin sharing this L1).
    With ``redis_url = None`` the cache is L1-only.
    """

    def __init__(
        self,
        config: CacheConfig | None = None,
        *,
        metrics: Metrics | None = None,
        clock: Callable[[], float] = time.time,
        rand: Callable[[], float] = random.random,
        core: CacheCore | None = None,
    ) -> None:
        super().__init__(config, metrics, clock, rand, core)
        self._flight = AsyncSingleFlight(self.core.l1.key_invalidated_since)
        self._l2s = self.core.l2_clients(ALoopLocal, make_l2)

    def _l2(self) -> AsyncRedisL2 | None:
        return self._l2s.get() if self.core.url is not None else None

    # -- read path --------------------------------------------------------------------------------
    async def get_or_load(
        self,
        key: str,
        loader: Callable[[], Awaitable[T]],
        *,
        ttl: float | None = None,
        tags: Sequence[str] = (),
        l1: bool = True,
        serve_stale: bool | None = None,
    ) -> T:
        """The cached value of ``key``, calling ``loader()`` (once per key across processes) on a miss."""
        opts = self.options(ttl, l1=l1, serve_stale=serve_stale, tags=tags)
        return await self.fetch(key, loader, (), {}, opts, None)  # type: ignore[no-any-return]

    async def fetch(
        self,
        key: str,
        func: Callable[..., Awaitable[Any]],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        opts: Options,
        tags: TagBuilder | None,
    ) -> Any:
        """Read-through used by the decorator: L1, then L2, then (single-flight) lease and ``func(*args, **kwargs)``.

        The L2 hit is the hot path: the client already made and the gate healthy (no clock read,
        no counting), one GET (:meth:`AsyncRedisL2.get`), the header check and ``orjson.loads``
        (:meth:`CacheCore.decode`), a lock-free counter. The loader closure is only built on a miss.
        """
        core = self.core
        if opts.l1:
            found, value = core.l1.lookup(key, core.clock())
            if found:
                core.stats.l1_hit.inc()
                return value
            core.stats.l1_miss.inc()
        now = core.clock()
        token = core.l1.token()
        l2 = self._l2s.peek() if core.gate.healthy() else None
        if l2 is None and core.redis_allowed(now):
            l2 = self._l2s.get()
        force = False
        if l2 is not None:
            sample = core.sample_latency()
            t0 = time.perf_counter() if sample else 0.0
            try:
                entry = await l2.get(key)
            except CacheUnavailable as exc:
                core.redis_failed("get", exc)
                l2 = None
            except CacheEntryError as exc:  # this key only (wrong Redis type): a miss the lease script clears
                core.entry_failed(key, exc)
                force = True
            else:
                core.breaker.success()
                if sample:
                    core.stats.lat_l2_get.observe(time.perf_counter() - t0)
                if entry is not None:
                    try:
                        value, expires_ms, delta_ms = core.decode(entry)
                    except SerializationError as exc:
                        core.decode_failed(key, exc)
                        force = True
                    else:
                        if expires_ms > now * 1000:
                            if not opts.xfetch_beta or not core.wants_early(
                                now, expires_ms, delta_ms, opts.xfetch_beta
                            ):
                                core.stats.l2_hit.inc()
                                if opts.l1:
                                    core.store_l1(key, value, expires_ms, len(entry), token, now)
                                return value
                            core.stats.early.inc()
                            flow = miss_flow(
                                core, key, opts, tag_thunk(tags, args, kwargs), token, redis=True, current=value
                            )
                            return await self._run(flow, l2, func, args, kwargs)
                core.stats.l2_miss.inc()
        flow = miss_flow(core, key, opts, tag_thunk(tags, args, kwargs), token, redis=l2 is not None, force=force)
        return await self._flight.run(key, lambda: self._run(flow, l2, func, args, kwargs), token)

    async def _run(
        self,
        flow: Flow,
        l2: AsyncRedisL2 | None,
        func: Callable[..., Awaitable[Any]],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
    ) -> Any:
        """Drive a :func:`~dbscale.cache.miss.miss_flow` (no connection held while sleeping)."""
        result: Any = None
        error: BaseException | None = None
        while True:
            try:
                request = flow.send(result) if error is None else flow.throw(error)
            except StopIteration as stop:
                return stop.value
            result = error = None
            op = request[0]
            try:
                if op is Op.LOAD:
                    result = await self._load(func, args, kwargs, request[1] if len(request) > 1 else None)
                elif op is Op.SLEEP:
                    await asleep(request[1])
                else:
                    assert l2 is not None
                    if op is Op.LEASE:
                        result = await l2.lease(*request[1:])
                    elif op is Op.FILL:
                        result = await l2.fill(*request[1:])
                    elif op is Op.RELEASE:  # (asyncio: shielded, a second cancellation must not orphan the lease)
                        await asyncio.shield(l2.release(*request[1:]))
                    else:
                        await l2.set(*request[1:])
            except BaseException as exc:  # handed to the flow, which decides (fail open, release, re-raise)
                error = exc

    async def _load(
        self, func: Callable[..., Awaitable[Any]], args: tuple[Any, ...], kwargs: dict[str, Any], marker: str | None
    ) -> tuple[Any, float]:
        stats = self.core.stats
        stats.loader_calls.inc()
        t0 = time.perf_counter()
        with self.core.load_scope(marker):
            value = await acall_loader(func, args, kwargs)
        delta = time.perf_counter() - t0
        stats.lat_load.observe(delta)
        return value, delta

    # -- direct access ----------------------------------------------------------------------------
    async def get(self, key: str, default: Any = None, *, l1: bool = True) -> Any:
        """The fresh cached value of ``key`` or ``default`` (Redis errors count as a miss)."""
        core = self.core
        now = core.clock()
        if l1:
            found, value = core.l1.lookup(key, now)
            if found:
                core.stats.l1_hit.inc()
                return value
        token = core.l1.token()  # before the Redis check: see CacheCore.queue
        l2 = self._l2() if core.redis_allowed(now) else None
        if l2 is None:
            return default
        try:
            entry = await l2.get(key)
        except CacheUnavailable as exc:
            core.redis_failed("get", exc)
            return default
        except CacheEntryError as exc:
            core.entry_failed(key, exc)
            return default
        core.breaker.success()
        if entry is None:
            core.stats.l2_miss.inc()
            return default
        try:
            value, expires_ms, _ = core.decode(entry)
        except SerializationError as exc:
            core.decode_failed(key, exc)
            return default
        if expires_ms <= now * 1000:
            core.stats.l2_miss.inc()
            return default
        core.stats.l2_hit.inc()
        if l1:
            core.store_l1(key, value, expires_ms, len(entry), token, now)
        return value

    async def set(self, key: str, value: Any, *, ttl: float | None = None, tags: Sequence[str] = ()) -> bool:
        """Store ``value`` (revoking leases, dropping every L1 copy). False if Redis was unavailable,
        in which case an invalidation of ``key`` is queued so no old value survives in Redis."""
        core = self.core
        entry, px, _ = core.make_entry(value, core.config.default_ttl if ttl is None else ttl, 0.0)
        inv = Invalidation("key", (key,), stale=False)
        l2 = self._l2()
        if l2 is None:
            core.fence_l1(inv)
            return core.l1.put(key, value, min(core.config.l1_ttl, px / 1000), core.clock(), size=len(entry))
        if not core.redis_allowed(core.clock()):
            core.queue(inv, None)
            return False
        try:
            await l2.set(key, entry, px, list(tags), core.tag_ttl(px / 1000))
            await l2.publish(core.keys.channel, encode_message(core.origin, keys=[key]))
        except CacheUnavailable as exc:
            core.queue(inv, exc)
            return False
        except CacheEntryError as exc:  # the scripts clear foreign keys; should one slip through, never keep the old
            core.entry_failed(key, exc)
            core.queue(inv, None)
            return False
        core.fence_l1(inv)  # after Redis: see CacheCore.fence_l1
        return True

    async def delete(self, *keys: str) -> bool:
        """Remove keys without keeping a stale copy; see :meth:`invalidate`."""
        return await self._invalidate(Invalidation("key", keys, stale=False))

    async def invalidate(self, *keys: str) -> bool:
        """Invalidate keys everywhere: Redis (revoking leases), this L1 and every other process's L1.

        Returns False if Redis was unreachable: the invalidation is then queued, retried until it
        succeeds and counted (``cache_invalidation_retries``); the local L1 is cleared regardless.
        """
        return await self._invalidate(Invalidation("key", keys))

    async def invalidate_tags(self, *tags: str) -> bool:
        """Invalidate every key filled with any of ``tags``; see :meth:`invalidate`."""
        return await self._invalidate(Invalidation("tag", tags))

    async def invalidate_pattern(self, pattern: str) -> bool:
        """Invalidate every key matching a Redis glob (SCAN in batches, never KEYS); see :meth:`invalidate`."""
        return await self._invalidate(Invalidation("pattern", (pattern,)))

    async def _invalidate(self, inv: Invalidation) -> bool:
        core = self.core
        core.stats.invalidation(inv.kind, len(inv.items))
        l2 = self._l2()
        if l2 is None:
            core.fence_l1(inv)
            return True
        inv = await self._marked(inv)
        if len(core.retry) or not core.breaker.allow(core.clock()):
            core.queue(inv, None)
            return False
        try:
            keys = await l2.apply(inv, core.stale_px, core.origin, core.marker_px)
        except CacheUnavailable as exc:
            core.queue(inv, exc)
            return False
        core.breaker.success()
        core.fence_l1(inv, keys)  # after Redis, never only before: see CacheCore.fence_l1
        return True

    async def _marked(self, inv: Invalidation) -> Invalidation:
        """``inv`` carrying the write position its lag-aware fill markers record (unchanged when markers are off)."""
        causality = self.core.causality
        if causality is None:
            return inv
        try:
            token = await causality.ainvalidation_token()
        except MarkerUnavailable as exc:
            return self.core.marker_failed(inv, exc)
        return self.core.with_marker(inv, token)

    async def flush_invalidations(self) -> bool:
        """Retry queued invalidations now; True if none remain."""
        return await ato_thread(self.core.retry.flush)

    def write_through(self, table: Any, *, key_column: str, key: str, **options: Any) -> AsyncWriteThrough:
        """A write-through view of ``table``; see :class:`dbscale.cache.writes.through_aio.AsyncWriteThrough`."""
        from dbscale.cache.writes.through_aio import AsyncWriteThrough

        return AsyncWriteThrough(self, table, key_column=key_column, key=key, **options)

    def write_behind(self, table: Any, *, key_column: str, key: str, **options: Any) -> AsyncWriteBehind:
        """A write-behind view of ``table``; see :class:`dbscale.cache.writes.behind_aio.AsyncWriteBehind`."""
        from dbscale.cache.writes.behind_aio import AsyncWriteBehind

        return AsyncWriteBehind(self, table, key_column=key_column, key=key, **options)

    def cached(
        self,
        ttl: float | None = None,
        *,
        key: str | Callable[..., str] | None = None,
        tags: Sequence[str] = (),
        l1: bool = True,
        serve_stale: bool | None = None,
        xfetch_beta: float | None = None,
    ) -> Decorator:
        """Cache-aside decorator for sync and async functions; see :mod:`dbscale.cache.decorator`."""
        opts = self.options(ttl, l1=l1, serve_stale=serve_stale, xfetch_beta=xfetch_beta)
        return make_cached(self, opts=opts, key=key, tags=tags)

    async def close(self) -> None:
        """Close this front's Redis connections and stop background threads. Idempotent."""
        l2 = self._l2s.pop()
        if l2 is not None:
            await l2.close()
        self.core.close()
