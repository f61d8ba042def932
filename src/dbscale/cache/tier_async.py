"""The asyncio cache: the hand-written twin of :mod:`dbscale.cache.tier` (keep the two in step).

Differences from the sync shell are only those asyncio requires: ``await`` on redis.asyncio, an
``asyncio.sleep`` between lease polls (no connection is held while waiting), single-flight futures
per event loop, and one redis.asyncio client per running loop.
"""

from __future__ import annotations

import asyncio
import random
import time
import weakref
from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

from dbscale.cache.core import CacheCore, Options
from dbscale.cache.invalidation import Invalidation, encode_message
from dbscale.cache.l2 import CacheUnavailable
from dbscale.cache.l2_async import AsyncRedisL2
from dbscale.cache.leases import LeaseStatus, WaitAction, wait_decision
from dbscale.config import CacheConfig
from dbscale.errors import SerializationError
from dbscale.metrics import Metrics

if TYPE_CHECKING:
    from dbscale.cache.tier import Cache

__all__ = ["AsyncCache"]

T = TypeVar("T")
_MISS: Any = object()


class AsyncCache:
    """Tiered cache for asyncio code (redis.asyncio). Mirrors :class:`~dbscale.cache.Cache` with ``await``.

    ``cached`` also decorates plain ``def`` functions (through :attr:`sync`, which shares this L1).
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
        self.core = (
            core
            if core is not None
            else CacheCore(config or CacheConfig.model_validate({}), metrics, clock=clock, rand=rand)
        )
        self._flights: dict[tuple[int, str], asyncio.Future[Any]] = {}
        self._l2s: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, AsyncRedisL2] = weakref.WeakKeyDictionary()
        self._twin: Cache | None = None

    @property
    def config(self) -> CacheConfig:
        """The cache settings."""
        return self.core.config

    @property
    def metrics(self) -> Metrics:
        """The metrics registry the cache counts into."""
        return self.core.metrics

    @property
    def sync(self) -> Cache:
        """The synchronous twin sharing this cache's L1, metrics and listener."""
        if self._twin is None:
            from dbscale.cache.tier import Cache

            self._twin = Cache(core=self.core)
            self._twin._twin = self
        return self._twin

    def options(
        self,
        ttl: float | None = None,
        *,
        l1: bool = True,
        serve_stale: bool | None = None,
        xfetch_beta: float | None = None,
        tags: Sequence[str] = (),
    ) -> Options:
        """Resolve per-call settings against the config."""
        return self.sync.options(ttl, l1=l1, serve_stale=serve_stale, xfetch_beta=xfetch_beta, tags=tags)

    def _l2(self) -> AsyncRedisL2 | None:
        core = self.core
        if core.url is None:
            return None
        loop = asyncio.get_running_loop()
        l2 = self._l2s.get(loop)
        if l2 is None:
            l2 = AsyncRedisL2(core.url, core.keys, timeout=core.config.redis_timeout, admin_timeout=core.admin_timeout)
            self._l2s[loop] = l2
        return l2

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
        """The cached value of ``key``, awaiting ``loader()`` (once per key across processes) on a miss."""
        opts = self.options(ttl, l1=l1, serve_stale=serve_stale, tags=tags)
        return await self.fetch(key, loader, opts, None)  # type: ignore[no-any-return]

    async def fetch(
        self, key: str, load: Callable[[], Awaitable[Any]], opts: Options, tags: Callable[[], Sequence[str]] | None
    ) -> Any:
        """Read-through used by the decorator: L1, then L2, then (single-flight) lease and loader."""
        core = self.core
        if opts.l1:
            found, value = core.l1.lookup(key, core.clock())
            if found:
                core.stats.l1_hit.inc()
                return value
            core.stats.l1_miss.inc()
        now = core.clock()
        token = core.l1.token()
        l2 = self._l2() if core.url is not None and core.redis_allowed(now) else None
        force = False
        if l2 is not None:
            sample = core.sample_latency()
            t0 = time.perf_counter() if sample else 0.0
            try:
                entry = await l2.get(key)
            except CacheUnavailable as exc:
                core.redis_failed("get", exc)
                l2 = None
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
                            if not core.wants_early(now, expires_ms, delta_ms, opts.xfetch_beta):
                                core.stats.l2_hit.inc()
                                if opts.l1:
                                    core.store_l1(key, value, expires_ms, len(entry), token, now)
                                return value
                            core.stats.early.inc()
                            return await self._lease_path(key, load, opts, tags, l2, token, current=value)
                core.stats.l2_miss.inc()
        return await self._single_flight(key, lambda: self._miss(key, load, opts, tags, l2, token, force))

    async def _single_flight(self, key: str, fn: Callable[[], Awaitable[Any]]) -> Any:
        """Run ``fn`` once for concurrent callers of the same key on this loop; share its outcome."""
        loop = asyncio.get_running_loop()
        fkey = (id(loop), key)
        flight = self._flights.get(fkey)
        if flight is not None:
            return await asyncio.shield(flight)
        flight = loop.create_future()
        self._flights[fkey] = flight
        try:
            value = await fn()
        except BaseException as exc:
            if not flight.done():
                flight.set_exception(exc)
                flight.exception()  # mark retrieved: there may be no followers
            raise
        else:
            flight.set_result(value)
            return value
        finally:
            self._flights.pop(fkey, None)

    async def _miss(
        self,
        key: str,
        load: Callable[[], Awaitable[Any]],
        opts: Options,
        tags: Callable[[], Sequence[str]] | None,
        l2: AsyncRedisL2 | None,
        token: int,
        force: bool,
    ) -> Any:
        if l2 is not None:
            return await self._lease_path(key, load, opts, tags, l2, token, force=force)
        value = (await self._load(load))[0]  # Redis skipped or down: fail open
        if self.core.url is None:
            self.core.store_local(key, value, opts, token)
        return value

    async def _load(self, load: Callable[[], Awaitable[Any]]) -> tuple[Any, float]:
        core = self.core
        core.stats.loader_calls.inc()
        t0 = time.perf_counter()
        value = await load()
        delta = time.perf_counter() - t0
        core.stats.lat_load.observe(delta)
        return value, delta

    async def _lease_path(
        self,
        key: str,
        load: Callable[[], Awaitable[Any]],
        opts: Options,
        tags: Callable[[], Sequence[str]] | None,
        l2: AsyncRedisL2,
        token: int,
        *,
        current: Any = _MISS,
        force: bool = False,
    ) -> Any:
        core = self.core
        tag_list = list(opts.tags) if tags is None else list(tags())
        if not core.config.leases:
            return await self._load_and_set(key, load, opts, l2, tag_list, token)
        lease_token = core.lease_token()
        started = time.monotonic()
        attempt = 0
        waited = False
        while True:
            try:
                reply = await l2.lease(
                    key,
                    tag_list,
                    now_ms=int(core.clock() * 1000),
                    token=lease_token,
                    lease_ms=core.lease_ms,
                    tag_ttl=core.tag_ttl(opts.ttl),
                    force=force or current is not _MISS,
                )
            except CacheUnavailable as exc:
                core.redis_failed("lease", exc)
                return current if current is not _MISS else (await self._load(load))[0]
            if reply.status is LeaseStatus.HIT:
                ok, value, expires_ms = core.apply_lease_hit(key, reply)
                if ok:
                    core.stats.l2_hit.inc()
                    if opts.l1:
                        core.store_l1(key, value, expires_ms, len(reply.entry or b""), token, core.clock())
                    return value
                force = True
                continue
            if reply.status is LeaseStatus.GRANTED:
                return await self._load_and_fill(key, load, opts, l2, lease_token, token)
            if current is not _MISS:
                return current
            if not waited:
                waited = True
                core.stats.lease_waits.inc()
            serve_stale = opts.serve_stale and reply.entry is not None
            if serve_stale:
                try:
                    value = core.decode(reply.entry or b"")[0]
                except SerializationError as exc:
                    core.decode_failed(key, exc)
                else:
                    core.stats.stale_served.inc()
                    return value
            decision = wait_decision(
                elapsed=time.monotonic() - started,
                attempt=attempt,
                lease_wait=core.config.lease_wait,
                serve_stale=False,
                has_stale=False,
                holder_ttl=reply.holder_ttl_ms / 1000,
            )
            if decision.action is WaitAction.LOAD_WITHOUT_FILL:
                core.stats.lease_timeouts.inc()
                return (await self._load(load))[0]
            await asyncio.sleep(decision.sleep)
            attempt += 1

    async def _load_and_fill(
        self,
        key: str,
        load: Callable[[], Awaitable[Any]],
        opts: Options,
        l2: AsyncRedisL2,
        lease_token: str,
        token: int,
    ) -> Any:
        core = self.core
        try:
            value, delta = await self._load(load)
            entry, px, expires_ms = core.make_entry(value, opts.ttl, delta)
        except BaseException:
            try:
                await l2.release(key, lease_token)
            except CacheUnavailable as exc:
                core.redis_failed("release", exc)
            raise
        try:
            stored = await l2.fill(key, lease_token, entry, px)
        except CacheUnavailable as exc:
            core.redis_failed("fill", exc)
            return value
        if stored:
            core.stats.fills.inc()
            if opts.l1:
                core.store_l1(key, value, expires_ms, len(entry), token, core.clock())
        else:
            core.stats.dropped_fills.inc()
        return value

    async def _load_and_set(
        self, key: str, load: Callable[[], Awaitable[Any]], opts: Options, l2: AsyncRedisL2, tags: list[str], token: int
    ) -> Any:
        """Leases off (comparison only): the textbook unconditional SET after loading."""
        core = self.core
        value, delta = await self._load(load)
        entry, px, expires_ms = core.make_entry(value, opts.ttl, delta)
        try:
            await l2.set(key, entry, px, tags, core.tag_ttl(opts.ttl))
        except CacheUnavailable as exc:
            core.redis_failed("fill", exc)
            return value
        core.stats.fills.inc()
        if opts.l1:
            core.store_l1(key, value, expires_ms, len(entry), token, core.clock())
        return value

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
        l2 = self._l2() if core.redis_allowed(now) else None
        if l2 is None:
            return default
        token = core.l1.token()
        try:
            entry = await l2.get(key)
        except CacheUnavailable as exc:
            core.redis_failed("get", exc)
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
        """Store ``value`` (revoking leases, dropping every L1 copy); see :meth:`Cache.set`."""
        core = self.core
        entry, px, _ = core.make_entry(value, core.config.default_ttl if ttl is None else ttl, 0.0)
        inv = Invalidation("key", (key,), stale=False)
        core.drop_local(inv)
        l2 = self._l2()
        if l2 is None:
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
        return True

    async def delete(self, *keys: str) -> bool:
        """Remove keys without keeping a stale copy; see :meth:`invalidate`."""
        return await self._invalidate(Invalidation("key", keys, stale=False))

    async def invalidate(self, *keys: str) -> bool:
        """Invalidate keys everywhere; False if Redis was unreachable (then queued and retried)."""
        return await self._invalidate(Invalidation("key", keys))

    async def invalidate_tags(self, *tags: str) -> bool:
        """Invalidate every key filled with any of ``tags``; see :meth:`invalidate`."""
        return await self._invalidate(Invalidation("tag", tags))

    async def invalidate_pattern(self, pattern: str) -> bool:
        """Invalidate every key matching a Redis glob (SCAN in batches, never KEYS)."""
        return await self._invalidate(Invalidation("pattern", (pattern,)))

    async def _invalidate(self, inv: Invalidation) -> bool:
        core = self.core
        core.stats.invalidation(inv.kind, len(inv.items))
        core.drop_local(inv)
        l2 = self._l2()
        if l2 is None:
            if inv.kind == "tag":
                core.l1.clear()
            return True
        if len(core.retry) or not core.breaker.allow(core.clock()):
            core.queue(inv, None)
            return False
        px = core.stale_px if inv.stale else 0
        try:
            if inv.kind == "key":
                keys = list(inv.items)
                await l2.invalidate(keys, px)
                await l2.publish(core.keys.channel, encode_message(core.origin, keys=keys))
            elif inv.kind == "tag":
                keys = await l2.invalidate_tags(list(inv.items), px)
                if keys:
                    await l2.publish(core.keys.channel, encode_message(core.origin, keys=keys))
            else:
                keys = await l2.invalidate_pattern(inv.items[0], px)
                await l2.publish(core.keys.channel, encode_message(core.origin, keys=keys, pattern=inv.items[0]))
        except CacheUnavailable as exc:
            core.queue(inv, exc)
            return False
        core.breaker.success()
        core.after_redis_invalidation(inv, keys)
        return True

    async def flush_invalidations(self) -> bool:
        """Retry queued invalidations now (in a worker thread); True if none remain."""
        return await asyncio.to_thread(self.core.retry.flush)

    def cached(
        self,
        ttl: float | None = None,
        *,
        key: str | Callable[..., str] | None = None,
        tags: Sequence[str] = (),
        l1: bool = True,
        serve_stale: bool | None = None,
        xfetch_beta: float | None = None,
    ) -> Callable[[Callable[..., Any]], Any]:
        """Cache-aside decorator for async and sync functions; see :func:`dbscale.cache.decorator.cached`."""
        from dbscale.cache.decorator import make_cached

        return make_cached(
            self.sync, self, ttl=ttl, key=key, tags=tags, l1=l1, serve_stale=serve_stale, xfetch_beta=xfetch_beta
        )

    async def close(self) -> None:
        """Close this loop's connections, stop background threads. Idempotent."""
        try:
            loop: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
        except RuntimeError:
            loop = None
        if loop is not None:
            l2 = self._l2s.pop(loop, None)
            if l2 is not None:
                await l2.close()
        self.core.close()
