"""The synchronous cache: L1 → Redis L2 → loader, with leases, single-flight and fail-open.

:class:`AsyncCache` (in :mod:`dbscale.cache.tier_async`) is the hand-written asyncio twin of this
module; keep the two in step. Both take their decisions from the pure modules.
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

from dbscale.cache.core import CacheCore, Options
from dbscale.cache.invalidation import Invalidation, apply_invalidation
from dbscale.cache.l2 import CacheUnavailable, RedisL2
from dbscale.cache.leases import LeaseStatus, WaitAction, wait_decision
from dbscale.config import CacheConfig
from dbscale.errors import SerializationError
from dbscale.metrics import Metrics

if TYPE_CHECKING:
    from dbscale.cache.tier_async import AsyncCache

__all__ = ["Cache"]

T = TypeVar("T")
_MISS: Any = object()


class _Flight:
    """One in-process load that concurrent callers of the same key wait for (a held lock, not an Event: cheaper)."""

    __slots__ = ("_lock", "error", "value")

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._lock.acquire()
        self.value: Any = None
        self.error: BaseException | None = None

    def wait(self) -> None:
        with self._lock:
            pass

    def finish(self) -> None:
        self._lock.release()


class Cache:
    """Tiered cache for synchronous code (redis-py). Thread-safe.

    >>> cache = Cache(CacheConfig(redis_url="redis://127.0.0.1:6380/0", namespace="app"))  # doctest: +SKIP
    >>> @cache.cached(ttl=300, key="user:{user_id}", tags=["user:{user_id}"])  # doctest: +SKIP
    ... def get_user(user_id: int) -> dict | None: ...
    >>> cache.invalidate_tags("user:42")  # doctest: +SKIP

    ``cached`` also decorates ``async def`` functions (through :attr:`aio`, which shares this L1).
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
        self.core = (
            core
            if core is not None
            else CacheCore(config or CacheConfig.model_validate({}), metrics, clock=clock, rand=rand)
        )
        self._flights: dict[str, _Flight] = {}
        self._flock = threading.Lock()
        self._twin: AsyncCache | None = None

    @property
    def config(self) -> CacheConfig:
        """The cache settings."""
        return self.core.config

    @property
    def metrics(self) -> Metrics:
        """The metrics registry the cache counts into."""
        return self.core.metrics

    @property
    def aio(self) -> AsyncCache:
        """The asyncio twin sharing this cache's L1, metrics and listener."""
        if self._twin is None:
            from dbscale.cache.tier_async import AsyncCache

            self._twin = AsyncCache(core=self.core)
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
        cfg = self.core.config
        return Options(
            cfg.default_ttl if ttl is None else ttl,
            l1=l1 and cfg.l1_size > 0,
            serve_stale=cfg.serve_stale if serve_stale is None else serve_stale,
            xfetch_beta=cfg.xfetch_beta if xfetch_beta is None else xfetch_beta,
            tags=tuple(tags),
        )

    # -- read path --------------------------------------------------------------------------------
    def get_or_load(
        self,
        key: str,
        loader: Callable[[], T],
        *,
        ttl: float | None = None,
        tags: Sequence[str] = (),
        l1: bool = True,
        serve_stale: bool | None = None,
    ) -> T:
        """The cached value of ``key``, calling ``loader()`` (once per key across processes) on a miss."""
        opts = self.options(ttl, l1=l1, serve_stale=serve_stale, tags=tags)
        return self.fetch(key, loader, opts, None)  # type: ignore[no-any-return]

    def fetch(self, key: str, load: Callable[[], Any], opts: Options, tags: Callable[[], Sequence[str]] | None) -> Any:
        """Read-through used by the decorator: L1, then L2, then (single-flight) lease and loader."""
        core = self.core
        if opts.l1:
            found, value = core.l1.lookup(key, core.clock())
            if found:
                core.stats.l1_hit.inc()
                return value
            core.stats.l1_miss.inc()
        now = core.clock()
        token = core.l1._gen
        l2 = core.healthy_l2() or (core.sync_l2() if core.url is not None and core.redis_allowed(now) else None)
        force = False
        if l2 is not None:
            sample = core.sample_latency()
            t0 = time.perf_counter() if sample else 0.0
            try:
                entry = l2.get(key)
            except CacheUnavailable as exc:
                core.redis_failed("get", exc)
                l2 = None
            else:
                if core.breaker._d.failures:
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
                            return self._lease_path(key, load, opts, tags, l2, token, current=value)
                core.stats.l2_miss.inc()
        return self._single_flight(key, lambda: self._miss(key, load, opts, tags, l2, token, force))

    def _single_flight(self, key: str, fn: Callable[[], Any]) -> Any:
        """Run ``fn`` once for concurrent callers of the same key in this process; share its outcome."""
        with self._flock:
            flight = self._flights.get(key)
            leader = flight is None
            if flight is None:
                flight = self._flights[key] = _Flight()
        if not leader:
            flight.wait()
            if flight.error is not None:
                raise flight.error
            return flight.value
        try:
            flight.value = fn()
            return flight.value
        except BaseException as exc:
            flight.error = exc
            raise
        finally:
            with self._flock:
                del self._flights[key]
            flight.finish()

    def _miss(
        self,
        key: str,
        load: Callable[[], Any],
        opts: Options,
        tags: Callable[[], Sequence[str]] | None,
        l2: RedisL2 | None,
        token: int,
        force: bool,
    ) -> Any:
        if l2 is not None:
            return self._lease_path(key, load, opts, tags, l2, token, force=force)
        value = self._load(load)[0]  # Redis skipped or down: fail open
        if self.core.url is None:
            self.core.store_local(key, value, opts, token)
        return value

    def _load(self, load: Callable[[], Any]) -> tuple[Any, float]:
        core = self.core
        core.stats.loader_calls.inc()
        t0 = time.perf_counter()
        value = load()
        delta = time.perf_counter() - t0
        core.stats.lat_load.observe(delta)
        return value, delta

    def _lease_path(
        self,
        key: str,
        load: Callable[[], Any],
        opts: Options,
        tags: Callable[[], Sequence[str]] | None,
        l2: RedisL2,
        token: int,
        *,
        current: Any = _MISS,
        force: bool = False,
    ) -> Any:
        core = self.core
        tag_list = list(opts.tags) if tags is None else list(tags())
        if not core.config.leases:
            return self._load_and_set(key, load, opts, l2, tag_list, token)
        lease_token = core.lease_token()
        started = time.monotonic()
        attempt = 0
        waited = False
        while True:
            try:
                reply = l2.lease(
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
                return current if current is not _MISS else self._load(load)[0]
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
                return self._load_and_fill(key, load, opts, l2, lease_token, token)
            # HELD by someone else
            if current is not _MISS:
                return current  # XFetch: another caller is already recomputing; ours is still fresh
            if not waited:
                waited = True
                core.stats.lease_waits.inc()
            decision = wait_decision(
                elapsed=time.monotonic() - started,
                attempt=attempt,
                lease_wait=core.config.lease_wait,
                serve_stale=opts.serve_stale,
                has_stale=reply.entry is not None,
                holder_ttl=reply.holder_ttl_ms / 1000,
            )
            if decision.action is WaitAction.SERVE_STALE:
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
                return self._load(load)[0]
            time.sleep(decision.sleep)
            attempt += 1

    def _load_and_fill(
        self, key: str, load: Callable[[], Any], opts: Options, l2: RedisL2, lease_token: str, token: int
    ) -> Any:
        core = self.core
        try:
            value, delta = self._load(load)
            entry, px, expires_ms = core.make_entry(value, opts.ttl, delta)
        except BaseException:
            try:
                l2.release(key, lease_token)
            except CacheUnavailable as exc:
                core.redis_failed("release", exc)
            raise
        try:
            stored = l2.fill(key, lease_token, entry, px)
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

    def _load_and_set(
        self, key: str, load: Callable[[], Any], opts: Options, l2: RedisL2, tags: list[str], token: int
    ) -> Any:
        """Leases off (comparison only): the textbook unconditional SET after loading."""
        core = self.core
        value, delta = self._load(load)
        entry, px, expires_ms = core.make_entry(value, opts.ttl, delta)
        try:
            l2.set(key, entry, px, tags, core.tag_ttl(opts.ttl))
        except CacheUnavailable as exc:
            core.redis_failed("fill", exc)
            return value
        core.stats.fills.inc()
        if opts.l1:
            core.store_l1(key, value, expires_ms, len(entry), token, core.clock())
        return value

    # -- direct access ----------------------------------------------------------------------------
    def get(self, key: str, default: Any = None, *, l1: bool = True) -> Any:
        """The fresh cached value of ``key`` or ``default`` (Redis errors count as a miss)."""
        core = self.core
        now = core.clock()
        if l1:
            found, value = core.l1.lookup(key, now)
            if found:
                core.stats.l1_hit.inc()
                return value
        if not core.redis_allowed(now):
            return default
        l2 = core.sync_l2()
        assert l2 is not None
        token = core.l1.token()
        try:
            entry = l2.get(key)
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

    def set(self, key: str, value: Any, *, ttl: float | None = None, tags: Sequence[str] = ()) -> bool:
        """Store ``value`` (revoking leases, dropping every L1 copy). False if Redis was unavailable,
        in which case an invalidation of ``key`` is queued so no old value survives in Redis."""
        core = self.core
        entry, px, _ = core.make_entry(value, core.config.default_ttl if ttl is None else ttl, 0.0)
        inv = Invalidation("key", (key,), stale=False)
        core.drop_local(inv)
        l2 = core.sync_l2()
        if l2 is None:
            return core.l1.put(key, value, min(core.config.l1_ttl, px / 1000), core.clock(), size=len(entry))
        if not core.redis_allowed(core.clock()):
            core.queue(inv, None)
            return False
        try:
            l2.set(key, entry, px, list(tags), core.tag_ttl(px / 1000))
            apply_invalidation_publish(l2, core, [key])
        except CacheUnavailable as exc:
            core.queue(inv, exc)
            return False
        return True

    def delete(self, *keys: str) -> bool:
        """Remove keys without keeping a stale copy; see :meth:`invalidate`."""
        return self._invalidate(Invalidation("key", keys, stale=False))

    def invalidate(self, *keys: str) -> bool:
        """Invalidate keys everywhere: Redis (revoking leases), this L1 and every other process's L1.

        Returns False if Redis was unreachable: the invalidation is then queued, retried until it
        succeeds and counted (``cache_invalidation_retries``); the local L1 is cleared regardless.
        """
        return self._invalidate(Invalidation("key", keys))

    def invalidate_tags(self, *tags: str) -> bool:
        """Invalidate every key filled with any of ``tags``; see :meth:`invalidate`."""
        return self._invalidate(Invalidation("tag", tags))

    def invalidate_pattern(self, pattern: str) -> bool:
        """Invalidate every key matching a Redis glob (SCAN in batches, never KEYS); see :meth:`invalidate`."""
        return self._invalidate(Invalidation("pattern", (pattern,)))

    def _invalidate(self, inv: Invalidation) -> bool:
        core = self.core
        core.stats.invalidation(inv.kind, len(inv.items))
        core.drop_local(inv)
        l2 = core.sync_l2()
        if l2 is None:
            if inv.kind == "tag":
                core.l1.clear()
            return True
        if len(core.retry) or not core.breaker.allow(core.clock()):
            core.queue(inv, None)
            return False
        try:
            keys = apply_invalidation(l2, inv, core.stale_px, core.origin)
        except CacheUnavailable as exc:
            core.queue(inv, exc)
            return False
        core.breaker.success()
        core.after_redis_invalidation(inv, keys)
        return True

    def flush_invalidations(self) -> bool:
        """Retry queued invalidations now; True if none remain."""
        return self.core.retry.flush()

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
        """Cache-aside decorator for sync and async functions; see :func:`dbscale.cache.decorator.cached`."""
        from dbscale.cache.decorator import make_cached

        return make_cached(
            self, self.aio, ttl=ttl, key=key, tags=tags, l1=l1, serve_stale=serve_stale, xfetch_beta=xfetch_beta
        )

    def close(self) -> None:
        """Stop background threads and close connections. Idempotent."""
        self.core.close()


def apply_invalidation_publish(l2: RedisL2, core: CacheCore, keys: list[str]) -> None:
    """Tell other processes to drop ``keys`` from their L1."""
    from dbscale.cache.invalidation import encode_message

    l2.publish(core.keys.channel, encode_message(core.origin, keys=keys))
