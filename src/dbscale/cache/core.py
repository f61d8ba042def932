"""State shared by the sync and async cache front ends: config, L1, entry codec, Redis gate, metrics, clients.

:class:`CacheCore` holds no event-loop objects, so one core serves a :class:`~dbscale.cache.Cache`
and its :class:`~dbscale.cache.AsyncCache` twin at once (they share the L1 and the invalidation
listener). Nothing is started by the constructor: the Redis clients and the invalidation listener
are made on first use of Redis (:meth:`CacheCore.l2_clients`). The hit path and the write path live
in the front end (:mod:`~dbscale.cache.tier_async`, and the generated :mod:`~dbscale.cache.tier`),
the miss path in :mod:`~dbscale.cache.miss`; the decisions they take are in the pure modules
(:mod:`~dbscale.cache.leases`, :mod:`~dbscale.cache.policy`, :mod:`~dbscale.cache.l1`).
"""

from __future__ import annotations

import itertools
import logging
import math
import random
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import replace
from typing import TYPE_CHECKING, Any, ClassVar, Literal, TypeVar, overload

from dbscale._compat import LoopLocal
from dbscale.cache.entry import EntryCodec
from dbscale.cache.gate import RedisGate
from dbscale.cache.invalidation import Invalidation, Listener, RetryQueue
from dbscale.cache.keys import RedisKeys, glob_to_regex
from dbscale.cache.l1 import L1
from dbscale.cache.l2 import CacheUnavailable, RedisL2
from dbscale.cache.l2_cluster import make_l2
from dbscale.cache.leases import LeaseReply
from dbscale.cache.markers import Causality, marker_ttl
from dbscale.cache.policy import CircuitBreaker, check_ttl, jittered_ttl, xfetch_should_recompute
from dbscale.cache.serde import Serializer
from dbscale.cache.stats import CacheStats
from dbscale.config import CacheConfig
from dbscale.errors import CacheEntryError, MarkerUnavailable, SerializationError
from dbscale.forks import AtFork, inherit
from dbscale.metrics import Metrics

if TYPE_CHECKING:
    from dbscale.cache.tier import Cache
    from dbscale.cache.tier_async import AsyncCache

__all__ = ["CacheCore", "CacheFront", "Options"]

log = logging.getLogger("dbscale.cache")

_C = TypeVar("_C")
_H = TypeVar("_H")


def _close_client(client: Any) -> Any:
    """``client.close()``: an asyncio L2 client's coroutine, awaited when its event loop ends (``ALoopLocal``)."""
    return client.close()


class Options:
    """Per-call (or per-decorated-function) settings, resolved against the config once."""

    __slots__ = ("l1", "serve_stale", "tags", "ttl", "xfetch_beta")

    def __init__(
        self, ttl: float, *, l1: bool, serve_stale: bool, xfetch_beta: float, tags: tuple[str, ...] = ()
    ) -> None:
        self.ttl, self.l1, self.serve_stale, self.xfetch_beta, self.tags = ttl, l1, serve_stale, xfetch_beta, tags


class CacheCore:
    """Shared, loop-independent cache state. ``clock`` returns Unix seconds; ``rand`` uniform [0, 1)."""

    def __init__(
        self,
        config: CacheConfig,
        metrics: Metrics | None = None,
        *,
        clock: Callable[[], float] = time.time,
        rand: Callable[[], float] = random.random,
        causality: Causality | None = None,
    ) -> None:
        self.config = config
        self.metrics = metrics if metrics is not None else Metrics()
        self.stats = CacheStats(self.metrics)
        self.keys = RedisKeys(config.namespace, config.invalidation_channel)
        self.serde = Serializer(
            config.serializer,
            compress_threshold=config.compress_threshold,
            hmac_key=config.hmac_key,
            allow_pickle=config.allow_pickle,
        )
        self.l1 = L1(config.l1_size, config.l1_max_bytes)
        self.breaker = CircuitBreaker(config.breaker_threshold, config.breaker_cooldown)
        self.clock, self.rand = clock, rand
        self.monotonic: Callable[[], float] = time.monotonic  # lease waits: elapsed time, not wall time
        self.origin = uuid.uuid4().hex
        #: The cluster this cache belongs to (set by it): write-through/behind write through its ``write()``.
        self.owner: Any = None
        self.url: str | None = None if config.redis_url is None else str(config.redis_url)
        self.admin_timeout = max(10 * config.redis_timeout, 0.25)
        self.stale_px = int(config.stale_ttl * 1000)
        self.lease_ms = max(1, int(config.lease_ttl * 1000))
        self.codec = EntryCodec(
            self.serde,
            plain_json=config.hmac_key is None,
            jitter=config.jitter,
            negative_ttl=config.negative_ttl,
            stale_px=self.stale_px,
            clock=clock,
            rand=rand,
        )
        self.make_entry = self.codec.make
        self.decode = self.codec.decode
        #: Lag-aware fills: on with a causality provider, Redis and ``lag_aware_fills`` (see :mod:`.markers`).
        self.causality = causality if config.lag_aware_fills and self.url is not None else None
        self.markers = self.causality is not None
        self.marker_px = 0
        if self.causality is not None:
            self.marker_px = max(1, int(marker_ttl(config.marker_ttl, self.causality.max_lag()) * 1000))
        self._lock = threading.Lock()
        self._clients: dict[Callable[..., Any], Any] = {}
        self._listener: Listener | None = None
        self.retry = RetryQueue(self._apply_queued, self.stats.pending.set)
        self.gate = RedisGate(self.breaker, self.retry, self.stats, clock)
        self.redis_failed = self.gate.failed
        self.closed = False
        self._tick = itertools.count().__next__
        _cores.add(self)

    # -- I/O pieces made on first use (Redis clients, the listener thread) ------------------------
    def l2_clients(
        self, holder: Callable[[Callable[[], _C], Callable[[_C], Any]], _H], client: Callable[..., _C]
    ) -> _H:
        """The ``holder`` of this core's ``client`` L2 clients, shared by every front of the core.

        A front asks once, with its flavour's pair (``ALoopLocal`` and ``l2_cluster_async.make_l2``:
        a client per event loop; ``LoopLocal`` and ``l2_cluster.make_l2``: one client). Making the first client of any
        flavour starts the invalidation listener: L1 is only written while subscribed, so it
        subscribes as early as Redis is used, and not before.
        """
        with self._lock:
            found = self._clients.get(client)
            if found is None:

                def make() -> _C:
                    self.start_listener()
                    return client(
                        self.url, self.keys, timeout=self.config.redis_timeout, admin_timeout=self.admin_timeout
                    )

                found = self._clients[client] = holder(make, _close_client)
        return found

    def sync_l2(self) -> RedisL2 | None:
        """The blocking L2 client (None when no redis_url is configured): the retry queue's, and the blocking front's."""
        if self.url is None:
            return None
        return self.l2_clients(LoopLocal, make_l2).get()

    @property
    def listener(self) -> Listener | None:
        """The invalidation listener: None until Redis is first used (or without Redis, or without L1)."""
        return self._listener

    def start_listener(self) -> Listener | None:
        """Start the invalidation listener once (only with Redis and a non-empty L1)."""
        if self._listener is None and self.url is not None and self.config.l1_size > 0 and not self.closed:
            with self._lock:
                if self._listener is None:
                    self._listener = Listener(self.url, self.keys.channel, self.origin, self._on_remote, self.l1.clear)
                    self._listener.start()
        return self._listener

    def l1_writable(self) -> bool:
        """May values be stored in L1 now? Only while invalidations can reach us."""
        if self.url is None:
            return True
        listener = self._listener
        if listener is None:
            listener = self.start_listener()
        return listener is not None and listener.ready

    def _on_remote(self, keys: list[str], pattern: str | None) -> None:
        if keys:
            self.l1.invalidate(keys)
        if pattern is not None:
            self.l1.invalidate_matching(glob_to_regex(pattern))

    # -- entries (the codec's; kept as attributes so call sites pay no extra call) ----------------
    make_entry: Callable[[Any, float, float], tuple[bytes, int, int]]
    decode: Callable[[bytes], tuple[Any, int, int]]

    def wants_early(self, now: float, expires_ms: int, delta_ms: int, beta: float) -> bool:
        """XFetch: should this hit trigger an early recomputation?"""
        if beta <= 0:
            return False
        return xfetch_should_recompute(now, expires_ms / 1000, delta_ms / 1000, beta, 1.0 - self.rand())

    def store_l1(self, key: str, value: Any, expires_ms: int, size: int, token: int, now: float) -> None:
        """Put a value fetched from L2 into L1, unless invalidated meanwhile or L1 is not safe."""
        if not self.l1_writable():
            return
        ttl = min(self.config.l1_ttl, expires_ms / 1000 - now)
        self.l1.put(key, value, ttl, now, size=size, token=token)

    def store_local(self, key: str, value: Any, opts: Options, token: int) -> None:
        """L1-only mode (no Redis configured): L1 holds the value for the full TTL."""
        if opts.l1:
            ttl = self.config.negative_ttl if value is None else opts.ttl
            self.l1.put(key, value, jittered_ttl(ttl, self.config.jitter, self.rand()), self.clock(), token=token)

    def sample_latency(self) -> bool:
        """True for one L2 read in 16: the hot path does not pay for a histogram on every hit."""
        return not self._tick() & 15

    def tag_ttl(self, ttl: float) -> int:
        """Seconds a tag set must outlive its newest member."""
        return math.ceil(ttl * (1 + self.config.jitter) + self.config.stale_ttl + self.config.lease_ttl) + 1

    def lease_token(self) -> str:
        """A fresh, unique lease token."""
        return uuid.uuid4().hex

    # -- Redis health -----------------------------------------------------------------------------
    def redis_allowed(self, now: float) -> bool:
        """Should this call use Redis? Not without a URL; else as the gate says (:meth:`RedisGate.allowed`)."""
        return self.url is not None and self.gate.allowed(now)

    #: Count a Redis failure and feed the breaker (:meth:`RedisGate.failed`).
    redis_failed: Callable[[str, CacheUnavailable], None]

    def decode_failed(self, key: str, exc: SerializationError) -> None:
        """Count an entry that could not be decoded (treated as a miss, overwritten by the next fill)."""
        self.stats.error("decode")
        self.stats.corrupt.inc()
        log.warning("cache: entry %r could not be decoded, treating as a miss: %s", key, exc)

    def entry_failed(self, key: str, exc: CacheEntryError) -> None:
        """Count a per-key Redis error (a key of the wrong type): a miss for that key, never the breaker's business."""
        self.stats.corrupt.inc()
        log.warning("cache: key %r holds data dbscale did not write, treating as a miss: %s", key, exc)

    def foreign_cleared(self, key: str, count: int) -> None:
        """Count keys the lease script cleared because this cache did not write them (wrong type, foreign lease)."""
        self.stats.corrupt.inc(count)
        log.warning("cache: cleared %d Redis key(s) of %r that dbscale did not write", count, key)

    # -- lag-aware fills (markers) ----------------------------------------------------------------
    def with_marker(self, inv: Invalidation, token: str) -> Invalidation:
        """``inv`` carrying the write position ``token`` (from the causality provider) for its markers."""
        if not token:
            return inv  # read-your-writes is off in every group: nothing to wait for
        self.stats.markers.inc()
        return replace(inv, marker=token)

    def marker_failed(self, inv: Invalidation, exc: MarkerUnavailable) -> Invalidation:
        """``inv`` unmarked, the failure to read the write position counted and logged (fail open)."""
        self.stats.marker_failures.inc()
        log.warning("cache: invalidation %s %s without a lag-aware marker: %s", inv.kind, list(inv.items)[:5], exc)
        return inv

    def load_scope(self, marker: str | None) -> AbstractContextManager[object]:
        """The causal scope a loader runs in: the markers found for its key, if any."""
        if marker is None or self.causality is None:
            return nullcontext()
        self.stats.marker_loads.inc()
        return self.causality.scope(marker)

    # -- invalidation bookkeeping -----------------------------------------------------------------
    def fence_l1(self, inv: Invalidation, keys: Iterable[str] | None = None) -> None:
        """Drop ``inv`` from this process's L1 and refuse every insert whose L2 read came before now.

        The one ordering rule of invalidation, for both shells and the retry queue: call this
        *after* Redis took ``inv``. A reader takes its L1 token before its Redis read; a read that
        saw the old value came before the Redis update, hence before this fence, so its insert is
        refused, and a read after the update sees the new state. (A drop *before* the update leaves
        a window in which a reader stores the old value for ``l1_ttl``, and this process ignores
        its own broadcast.) ``keys`` are the keys Redis reported for a tag; None (no Redis, or
        Redis unreachable) clears the whole L1 for a tag, since then nobody knows its members.
        """
        if inv.kind == "pattern":
            for pattern in inv.items:
                self.l1.invalidate_matching(glob_to_regex(pattern))
            if keys:
                self.l1.invalidate(keys)  # named too (not only fenced): single-flight reads names
        elif inv.kind == "key":
            self.l1.invalidate(inv.items)
        elif keys is None:
            self.l1.clear()
        else:
            self.l1.invalidate(keys)

    def queue(self, inv: Invalidation, exc: CacheUnavailable | None) -> None:
        """Redis did not take ``inv``: drop it from L1 at once and queue it; retried until it succeeds.

        While anything is queued no call uses Redis, so nothing old is read back into L1: queued
        first, fenced second, a reader either took its token before the fence (its insert is
        refused) or sees the queue. The replay fences L1 again after Redis took it (:meth:`fence_l1`).
        """
        self.retry.add(inv)
        self.fence_l1(inv)
        self.stats.inval_retries.inc()
        if exc is not None:
            self.redis_failed("invalidate", exc)
        log.warning("cache: invalidation %s %s queued for retry (Redis unavailable)", inv.kind, list(inv.items)[:5])

    def _apply_queued(self, inv: Invalidation) -> None:
        l2 = self.sync_l2()
        if l2 is None:
            return
        keys = l2.apply(inv, self.stale_px, self.origin, self.marker_px)
        self.breaker.success()
        self.fence_l1(inv, keys)

    def apply_lease_hit(self, key: str, reply: LeaseReply) -> tuple[bool, Any, int]:
        """Decode a HIT lease reply: ``(ok, value, expires_ms)``."""
        assert reply.entry is not None
        try:
            value, expires_ms, _ = self.decode(reply.entry)
        except SerializationError as exc:
            self.decode_failed(key, exc)
            return False, None, 0
        return True, value, expires_ms

    def close(self) -> None:
        """Stop the threads and close the blocking client (each asyncio front closes its loop's)."""
        self.closed = True
        if self._listener is not None:
            self._listener.close()
        self.retry.close()
        holder = self._clients.get(RedisL2)
        l2 = holder.pop() if holder is not None else None
        if l2 is not None:
            l2.close()


class CacheFront:
    """What the sync and async front ends share: their :class:`CacheCore` and per-call options.

    Each front end registers its flavour (``class Cache(CacheFront, flavour="sync")``), so a front
    builds its twin over the same core by flavour, without importing the other's module: the tiers
    do not import each other. ``cache.aio`` is the asyncio front of a cache, ``cache.sync`` its
    blocking front (the cache itself when it is of that flavour, else its twin).
    """

    _flavours: ClassVar[dict[str, Callable[..., CacheFront]]] = {}
    flavour: ClassVar[str]
    _twin: CacheFront | None = None

    def __init_subclass__(cls, flavour: str | None = None, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if flavour is not None:
            cls.flavour = flavour
            CacheFront._flavours[flavour] = cls

    @overload
    def front(self, flavour: Literal["sync"]) -> Cache: ...

    @overload
    def front(self, flavour: Literal["async"]) -> AsyncCache: ...

    def front(self, flavour: str) -> CacheFront:
        """The front of ``flavour`` over this core: this one, or its twin (made on first use, then kept)."""
        if flavour == self.flavour:
            return self
        twin = self._twin
        if twin is None:
            twin = self._flavours[flavour](core=self.core)
            twin._twin = self
            self._twin = twin
        return twin

    @property
    def aio(self) -> AsyncCache:
        """The asyncio front sharing this cache's L1, metrics and listener (``cached`` on ``async def``)."""
        return self.front("async")

    @property
    def sync(self) -> Cache:
        """The blocking front sharing this cache's L1, metrics and listener (``cached`` on ``def``)."""
        return self.front("sync")

    def __init__(
        self,
        config: CacheConfig | None,
        metrics: Metrics | None,
        clock: Callable[[], float],
        rand: Callable[[], float],
        core: CacheCore | None,
    ) -> None:
        self.core = (
            core
            if core is not None
            else CacheCore(config or CacheConfig.model_validate({}), metrics, clock=clock, rand=rand)
        )

    def invalidate_on_commit(self, *keys: str, tags: Sequence[str] = ()) -> None:
        """Inside ``with cluster.write()``: invalidate ``keys`` and ``tags`` right after its COMMIT.

        Dropped if the block rolls back; raises :class:`~dbscale.errors.NotInTransaction` outside one.
        """
        from dbscale.cache.writes.commit import queue_invalidation

        queue_invalidation(self, keys, tags)

    @property
    def config(self) -> CacheConfig:
        """The cache settings."""
        return self.core.config

    @property
    def metrics(self) -> Metrics:
        """The metrics registry the cache counts into."""
        return self.core.metrics

    def options(
        self,
        ttl: float | None = None,
        *,
        l1: bool = True,
        serve_stale: bool | None = None,
        xfetch_beta: float | None = None,
        tags: Sequence[str] = (),
    ) -> Options:
        """Resolve per-call settings against the config (a ``ttl`` that is not a positive number of seconds is refused)."""
        cfg = self.core.config
        ttl = check_ttl(ttl)
        return Options(
            cfg.default_ttl if ttl is None else ttl,
            l1=l1 and cfg.l1_size > 0,
            serve_stale=cfg.serve_stale if serve_stale is None else serve_stale,
            xfetch_beta=cfg.xfetch_beta if xfetch_beta is None else xfetch_beta,
            tags=tuple(tags),
        )


def _reset_after_fork(core: CacheCore) -> None:
    """In a forked child (:mod:`dbscale.forks`): its own origin (the parent must not take the child's
    invalidations for its own, nor the child the parent's), new locks, an empty L1 and retry queue,
    and no listener: the parent's thread is not in the child, so the next use subscribes anew (until
    then L1 takes nothing). The Redis clients keep working (:mod:`dbscale.cache.l2_base` drops their
    inherited connections)."""
    inherit(core._listener)  # its Redis connection is the parent's: referenced, never closed here
    core.origin = uuid.uuid4().hex
    core._lock = threading.Lock()
    core._listener = None
    core.l1.after_fork()
    core.retry.after_fork()
    core.breaker.after_fork()


_cores: AtFork[CacheCore] = AtFork(_reset_after_fork)
