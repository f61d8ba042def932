"""The miss path (lease, load, fill, wait), written once for the sync and the asyncio cache.

Theory of operation
-------------------
:func:`miss_flow` is a generator that runs the caller's side of the lease protocol
(:mod:`dbscale.cache.leases`) without doing any I/O: it *yields* requests — take a lease, call the
loader, fill, release, set, sleep — and is *sent* their results; a request that failed is *thrown*
back into it as the exception (a :class:`~dbscale.cache.l2.CacheUnavailable`, or whatever the
loader raised). :class:`~dbscale.cache.Cache` answers the requests with redis-py and
``time.sleep``, :class:`~dbscale.cache.AsyncCache` with redis.asyncio and ``asyncio.sleep``
(psycopg 3 splits its protocol from its blocking and asyncio waits the same way), so both caches
take the same decisions in the same order by construction. Misses are the slow path; the
generator's cost is noise next to the Redis round trips it drives. The hit path stays hand-written
in each shell.

A request is a tuple ``(op, *args)``:

=========== ============================================================= =======================
op          args                                                          result sent back
=========== ============================================================= =======================
``LEASE``   key, tags, now_ms, token, lease_ms, tag_ttl, force, markers   :class:`LeaseReply`
``FILL``    key, token, entry, px                                         bool: stored
``RELEASE`` key, token                                                    None
``SET``     key, entry, px, tags, tag_ttl                                 None
``LOAD``    (none), or the markers found for the key                      ``(value, seconds)``
``SLEEP``   seconds                                                       None
=========== ============================================================= =======================

A ``LOAD`` that carries markers (lag-aware fills: the lease script found an invalidation's causal
token for the key) runs the loader inside :meth:`CacheCore.load_scope`, so its reads honour the
write that invalidated the key.
"""

from __future__ import annotations

from collections.abc import Callable, Generator, Sequence
from enum import Enum
from typing import TYPE_CHECKING, Any

from dbscale.cache.leases import LeaseReply, LeaseStatus, WaitAction, wait_decision
from dbscale.errors import CacheEntryError, CacheUnavailable, SerializationError

if TYPE_CHECKING:
    from dbscale.cache.core import CacheCore, Options
    from dbscale.cache.keys import TagBuilder

__all__ = ["MISS", "Flow", "Op", "miss_flow", "tag_thunk"]

#: "No value": distinct from every cached value, None included.
MISS: Any = object()


class Op(Enum):
    """The I/O a flow asks its driver for."""

    LEASE = "lease"
    FILL = "fill"
    RELEASE = "release"
    SET = "set"
    LOAD = "load"
    SLEEP = "sleep"


Flow = Generator[tuple[Any, ...], Any, Any]


def tag_thunk(
    tags: TagBuilder | None, args: tuple[Any, ...], kwargs: dict[str, Any]
) -> Callable[[], Sequence[str]] | None:
    """The tags of a decorated call, built only if the flow asks for them (a hit never does)."""
    return None if tags is None else (lambda: tags.build(args, kwargs))


def miss_flow(
    core: CacheCore,
    key: str,
    opts: Options,
    tags: Callable[[], Sequence[str]] | None,
    token: int,
    *,
    redis: bool,
    current: Any = MISS,
    force: bool = False,
) -> Flow:
    """The value of ``key`` after an L1/L2 miss, or after an XFetch early hit when ``current`` is given.

    ``redis`` False means Redis is skipped (breaker open, nothing configured, or the read failed):
    the loader is called and its result returned (fail-open). ``token`` is the L1 token taken
    before the L2 read; ``force`` asks the lease script to ignore the entry (it failed to decode).
    A lease this flow may hold is released whenever it ends early: the load failed, or the caller
    was interrupted (cancelled) during the load or during a lease or fill round trip.
    """
    if not redis:
        value = (yield (Op.LOAD,))[0]
        if core.url is None:
            core.store_local(key, value, opts, token)
        return value
    tag_list = list(opts.tags) if tags is None else list(tags())
    if not core.config.leases:
        return (yield from _load_and_set(core, key, opts, tag_list, token))
    lease_token = core.lease_token()
    started = core.monotonic()
    attempt = 0
    waited = False
    while True:
        try:
            reply: LeaseReply = yield (
                Op.LEASE,
                key,
                tag_list,
                int(core.clock() * 1000),
                lease_token,
                core.lease_ms,
                core.tag_ttl(opts.ttl),
                force or current is not MISS,
                core.markers,
            )
        except CacheUnavailable as exc:
            core.redis_failed("lease", exc)
            return current if current is not MISS else (yield (Op.LOAD,))[0]
        except CacheEntryError as exc:  # a key the script does not clear holds garbage: load, do not fill
            core.entry_failed(key, exc)
            yield from _release(core, key, lease_token)
            return current if current is not MISS else (yield (Op.LOAD,))[0]
        except GeneratorExit:
            raise  # the driver abandoned us: no more requests can be answered
        except BaseException:
            yield from _release(core, key, lease_token)  # interrupted mid round trip: the lease may be ours
            raise
        if reply.foreign:
            core.foreign_cleared(key, reply.foreign)
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
            return (yield from _load_and_fill(core, key, opts, lease_token, token, reply.marker))
        # HELD by someone else
        if current is not MISS:
            return current  # XFetch: another caller is already recomputing; ours is still fresh
        if not waited:
            waited = True
            core.stats.lease_waits.inc()
        decision = wait_decision(
            elapsed=core.monotonic() - started,
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
                elapsed=core.monotonic() - started,
                attempt=attempt,
                lease_wait=core.config.lease_wait,
                serve_stale=False,
                has_stale=False,
                holder_ttl=reply.holder_ttl_ms / 1000,
            )
        if decision.action is WaitAction.LOAD_WITHOUT_FILL:
            core.stats.lease_timeouts.inc()
            return (yield _load_op(reply.marker))[0]
        yield (Op.SLEEP, decision.sleep)
        attempt += 1


def _load_op(marker: str | None) -> tuple[Any, ...]:
    """The LOAD request, carrying the key's markers if the lease script found any."""
    return (Op.LOAD,) if marker is None else (Op.LOAD, marker)


def _load_and_fill(
    core: CacheCore, key: str, opts: Options, lease_token: str, token: int, marker: str | None = None
) -> Flow:
    """We hold the lease: load (under the key's markers), then fill if the lease is still ours (else dropped)."""
    try:
        value, delta = yield _load_op(marker)
        entry, px, expires_ms = core.make_entry(value, opts.ttl, delta)
    except GeneratorExit:
        raise  # the driver abandoned us: no more requests can be answered
    except BaseException:
        yield from _release(core, key, lease_token)  # the load failed or was interrupted
        raise
    try:
        stored = yield (Op.FILL, key, lease_token, entry, px)
    except CacheUnavailable as exc:
        core.redis_failed("fill", exc)
        return value
    except CacheEntryError as exc:
        core.entry_failed(key, exc)
        yield from _release(core, key, lease_token)
        return value
    except GeneratorExit:
        raise
    except BaseException:
        yield from _release(core, key, lease_token)  # interrupted mid round trip: the fill may not have run
        raise
    if stored:
        core.stats.fills.inc()
        if opts.l1:
            core.store_l1(key, value, expires_ms, len(entry), token, core.clock())
    else:
        core.stats.dropped_fills.inc()
    return value


def _release(core: CacheCore, key: str, lease_token: str) -> Flow:
    """Give our lease back (a no-op if it is not ours), so the next caller takes it at once."""
    try:
        yield (Op.RELEASE, key, lease_token)
    except CacheUnavailable as exc:
        core.redis_failed("release", exc)
    except CacheEntryError as exc:
        core.entry_failed(key, exc)


def _load_and_set(core: CacheCore, key: str, opts: Options, tags: list[str], token: int) -> Flow:
    """Leases off (comparison only): the textbook unconditional SET after loading."""
    value, delta = yield (Op.LOAD,)
    entry, px, expires_ms = core.make_entry(value, opts.ttl, delta)
    try:
        yield (Op.SET, key, entry, px, tags, core.tag_ttl(opts.ttl))
    except CacheUnavailable as exc:
        core.redis_failed("fill", exc)
        return value
    except CacheEntryError as exc:
        core.entry_failed(key, exc)
        return value
    core.stats.fills.inc()
    if opts.l1:
        core.store_l1(key, value, expires_ms, len(entry), token, core.clock())
    return value
