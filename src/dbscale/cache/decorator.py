"""The cache-aside decorator: ``@cache.cached(ttl=..., key=..., tags=[...], l1=True, serve_stale=False)``.

Works on ``def`` and ``async def`` functions alike. The key builder is compiled when the function is
decorated, and an L1 hit is a key build, one dict lookup, a clock read and a counter increment.

The decorated function gains:

* ``invalidate(*args, **kwargs)`` — invalidate the entry of those arguments everywhere;
* ``refresh(*args, **kwargs)`` — invalidate it and load it again (returns the new value);
* ``cache_key(*args, **kwargs)`` — the key those arguments map to.

For an ``async def`` function ``invalidate`` and ``refresh`` are coroutines.

Example::

    @cluster.cache.cached(ttl=300, key="user:{user_id}", tags=["user:{user_id}", "users"])
    def get_user(user_id: int) -> dict[str, Any] | None:
        ...

    get_user(42); get_user(user_id=42)       # same key "user:42"
    get_user.invalidate(42)                  # after the UPDATE commits
    cluster.cache.invalidate_tags("users")   # every user
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, Protocol

from dbscale.cache.keys import KeyBuilder, TagBuilder

if TYPE_CHECKING:
    from dbscale.cache.core import CacheCore, Options

__all__ = ["AsyncFront", "SyncFront", "make_cached"]


Args = tuple[Any, ...]
Kwargs = dict[str, Any]


class SyncFront(Protocol):
    """What the decorator needs of the synchronous cache (:class:`dbscale.cache.Cache`)."""

    core: CacheCore

    def fetch(self, k: str, f: Callable[..., Any], a: Args, kw: Kwargs, o: Options, t: TagBuilder | None, /) -> Any: ...

    def invalidate(self, *keys: str) -> bool: ...

    def invalidate_on_commit(self, *keys: str, tags: Sequence[str] = ()) -> None: ...


class AsyncFront(Protocol):
    """What the decorator needs of the asyncio cache (:class:`dbscale.cache.AsyncCache`)."""

    core: CacheCore

    async def fetch(
        self, k: str, f: Callable[..., Any], a: Args, kw: Kwargs, o: Options, t: TagBuilder | None, /
    ) -> Any: ...

    async def invalidate(self, *keys: str) -> bool: ...

    def invalidate_on_commit(self, *keys: str, tags: Sequence[str] = ()) -> None: ...


def make_cached(
    cache: SyncFront,
    acache: AsyncFront,
    *,
    opts: Options,
    key: str | Callable[..., str] | None,
    tags: Sequence[str],
) -> Callable[[Callable[..., Any]], Any]:
    """Build the decorator; ``cache`` serves ``def`` functions and ``acache`` ``async def`` ones."""
    if isinstance(tags, str):
        raise TypeError("tags must be a list of templates, e.g. tags=['user:{user_id}']")

    def decorate(func: Callable[..., Any]) -> Any:
        builder = KeyBuilder(func, key)
        tag_builder = TagBuilder(func, tags) if tags else None
        if inspect.iscoroutinefunction(func):
            return _async_wrapper(func, acache, builder, tag_builder, opts)
        return _sync_wrapper(func, cache, builder, tag_builder, opts)

    return decorate


def _sync_wrapper(
    func: Callable[..., Any], cache: SyncFront, builder: KeyBuilder, tag_builder: TagBuilder | None, opts: Options
) -> Any:
    build = builder.build
    fetch = cache.fetch
    use_l1 = opts.l1
    data_get, touch = cache.core.l1.hot_accessors()
    clock = cache.core.clock
    hit = cache.core.stats.l1_hit.inc

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        k = build(args, kwargs)
        if use_l1:
            entry = data_get(k)
            if entry is not None and entry[1] > clock():
                try:  # noqa: SIM105 - cheaper than contextlib.suppress on the hot path
                    touch(k)
                except KeyError:
                    pass
                hit()
                return entry[0]
        return fetch(k, func, args, kwargs, opts, tag_builder)

    def invalidate(*args: Any, **kwargs: Any) -> bool:
        return cache.invalidate(build(args, kwargs))

    def refresh(*args: Any, **kwargs: Any) -> Any:
        k = build(args, kwargs)
        cache.invalidate(k)
        return fetch(k, func, args, kwargs, opts, tag_builder)

    wrapper.invalidate = invalidate  # type: ignore[attr-defined]
    wrapper.refresh = refresh  # type: ignore[attr-defined]
    wrapper.cache_key = lambda *a, **kw: build(a, kw)  # type: ignore[attr-defined]
    wrapper.cache = cache  # type: ignore[attr-defined]
    wrapper.invalidate_on_commit = lambda *a, **kw: cache.invalidate_on_commit(build(a, kw))  # type: ignore[attr-defined]
    return wrapper


def _async_wrapper(
    func: Callable[..., Any], acache: AsyncFront, builder: KeyBuilder, tag_builder: TagBuilder | None, opts: Options
) -> Any:
    build = builder.build
    fetch = acache.fetch
    use_l1 = opts.l1
    data_get, touch = acache.core.l1.hot_accessors()
    clock = acache.core.clock
    hit = acache.core.stats.l1_hit.inc

    @functools.wraps(func)
    async def wrapper(*args: Any, **kwargs: Any) -> Any:
        k = build(args, kwargs)
        if use_l1:
            entry = data_get(k)
            if entry is not None and entry[1] > clock():
                try:  # noqa: SIM105 - cheaper than contextlib.suppress on the hot path
                    touch(k)
                except KeyError:
                    pass
                hit()
                return entry[0]
        return await fetch(k, func, args, kwargs, opts, tag_builder)

    async def invalidate(*args: Any, **kwargs: Any) -> bool:
        return await acache.invalidate(build(args, kwargs))

    async def refresh(*args: Any, **kwargs: Any) -> Any:
        k = build(args, kwargs)
        await acache.invalidate(k)
        return await fetch(k, func, args, kwargs, opts, tag_builder)

    wrapper.invalidate = invalidate  # type: ignore[attr-defined]
    wrapper.refresh = refresh  # type: ignore[attr-defined]
    wrapper.cache_key = lambda *a, **kw: build(a, kw)  # type: ignore[attr-defined]
    wrapper.cache = acache  # type: ignore[attr-defined]
    wrapper.invalidate_on_commit = lambda *a, **kw: acache.invalidate_on_commit(build(a, kw))  # type: ignore[attr-defined]
    return wrapper
