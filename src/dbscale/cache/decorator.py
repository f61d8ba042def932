"""The cache-aside decorator: ``@cache.cached(ttl=..., key=..., tags=[...], l1=True, serve_stale=False)``.

Works on ``def`` and ``async def`` functions alike. The key builder is compiled when the function is
decorated, and an L1 hit is a key build, one dict lookup, a clock read and a counter increment.

The decorated function gains:

* ``invalidate(*args, **kwargs)`` — invalidate the entry of those arguments everywhere;
* ``refresh(*args, **kwargs)`` — invalidate it and load it again (returns the new value);
* ``cache_key(*args, **kwargs)`` — the key those arguments map to.

For an ``async def`` function ``invalidate`` and ``refresh`` are coroutines.

On a method (first parameter ``self`` or ``cls``) the instance is bound like a method's:
``repo.get_user(42)``, ``repo.get_user.invalidate(42)``; and it stays out of the default key (as in
dogpile.cache), so every instance shares the entries — a method whose result depends on its
instance needs ``key=`` naming what it depends on.

The decorated function keeps its signature for type checkers (``ParamSpec``): ``get_user("x")``
is a mypy error when ``user_id: int``, ``get_user(42)`` has the loader's return type, and
``invalidate``/``refresh``/``cache_key`` take the same parameters (:class:`CachedFunction`,
:class:`AsyncCachedFunction`).

Example::

    @cluster.cache.cached(ttl=300, key="user:{user_id}", tags=["user:{user_id}", "users"])
    def get_user(user_id: int) -> dict[str, Any] | None:
        ...

    get_user(42); get_user(user_id=42)       # same key "user:42"
    get_user.invalidate(42)                  # after the UPDATE commits
    cluster.cache.invalidate_tags("users")   # every user
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Coroutine, Sequence
from typing import TYPE_CHECKING, Any, Literal, ParamSpec, Protocol, Self, TypeVar, overload

from dbscale.cache import wrap, wrap_aio
from dbscale.cache.keys import KeyBuilder, TagBuilder
from dbscale.cache.method import CachedMethod

if TYPE_CHECKING:
    from dbscale.cache.core import CacheCore, Options

__all__ = ["AsyncCachedFunction", "AsyncFront", "CachedFunction", "Decorator", "Fronts", "SyncFront", "make_cached"]


Args = tuple[Any, ...]
Kwargs = dict[str, Any]
P = ParamSpec("P")
R = TypeVar("R")
R_co = TypeVar("R_co", covariant=True)


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


class Fronts(Protocol):
    """A cache front that can hand over the front of either flavour sharing its core."""

    @overload
    def front(self, flavour: Literal["sync"]) -> SyncFront: ...

    @overload
    def front(self, flavour: Literal["async"]) -> AsyncFront: ...


class CachedFunction(Protocol[P, R_co]):
    """A ``def`` function decorated by ``cached``: its own signature, plus the cache's helpers."""

    def __call__(self, *args: P.args, **kwargs: P.kwargs) -> R_co: ...

    @overload
    def __get__(self, instance: None, owner: type[Any], /) -> Self: ...

    @overload
    def __get__(self, instance: object, owner: type[Any] | None = None, /) -> CachedFunction[..., R_co]: ...

    def __get__(self, instance: object, owner: type[Any] | None = None, /) -> Any:
        """A method through its instance: the instance is bound (its other parameters are not checked)."""
        ...

    def invalidate(self, *args: P.args, **kwargs: P.kwargs) -> bool:
        """Invalidate the entry of these arguments everywhere; False if Redis was unreachable (queued)."""
        ...

    def refresh(self, *args: P.args, **kwargs: P.kwargs) -> R_co:
        """Invalidate the entry of these arguments and load it again."""
        ...

    def invalidate_on_commit(self, *args: P.args, **kwargs: P.kwargs) -> None:
        """Invalidate the entry of these arguments right after the enclosing ``cluster.write()`` commits."""
        ...

    def cache_key(self, *args: P.args, **kwargs: P.kwargs) -> str:
        """The cache key these arguments map to."""
        ...


class AsyncCachedFunction(Protocol[P, R_co]):
    """An ``async def`` function decorated by ``cached``: its own signature, plus the cache's helpers."""

    def __call__(self, *args: P.args, **kwargs: P.kwargs) -> Coroutine[Any, Any, R_co]: ...

    @overload
    def __get__(self, instance: None, owner: type[Any], /) -> Self: ...

    @overload
    def __get__(self, instance: object, owner: type[Any] | None = None, /) -> AsyncCachedFunction[..., R_co]: ...

    def __get__(self, instance: object, owner: type[Any] | None = None, /) -> Any:
        """A method through its instance: the instance is bound (its other parameters are not checked)."""
        ...

    async def invalidate(self, *args: P.args, **kwargs: P.kwargs) -> bool:
        """Invalidate the entry of these arguments everywhere; False if Redis was unreachable (queued)."""
        ...

    async def refresh(self, *args: P.args, **kwargs: P.kwargs) -> R_co:
        """Invalidate the entry of these arguments and load it again."""
        ...

    def invalidate_on_commit(self, *args: P.args, **kwargs: P.kwargs) -> None:
        """Invalidate the entry of these arguments right after the enclosing ``cluster.write()`` commits."""
        ...

    def cache_key(self, *args: P.args, **kwargs: P.kwargs) -> str:
        """The cache key these arguments map to."""
        ...


class Decorator:
    """What ``cache.cached(...)`` returns: apply it to a ``def`` or an ``async def`` function."""

    __slots__ = ("_fronts", "_key", "_opts", "_tags")

    def __init__(self, fronts: Fronts, opts: Options, key: str | Callable[..., str] | None, tags: Sequence[str]):
        if isinstance(tags, str):
            raise TypeError("tags must be a list of templates, e.g. tags=['user:{user_id}']")
        self._fronts, self._opts, self._key, self._tags = fronts, opts, key, tags

    @overload
    def __call__(self, func: Callable[P, Coroutine[Any, Any, R]]) -> AsyncCachedFunction[P, R]: ...  # type: ignore[overload-overlap]

    @overload
    def __call__(self, func: Callable[P, R]) -> CachedFunction[P, R]: ...

    def __call__(self, func: Callable[P, Any]) -> CachedFunction[P, Any] | AsyncCachedFunction[P, Any]:
        builder = KeyBuilder(func, self._key)
        tag_builder = TagBuilder(func, self._tags) if self._tags else None
        wrapped: Any
        if inspect.iscoroutinefunction(func):
            wrapped = wrap_aio.wrap(func, self._fronts.front("async"), builder, tag_builder, self._opts)
        else:
            wrapped = wrap.wrap(func, self._fronts.front("sync"), builder, tag_builder, self._opts)
        if builder.is_method:
            return CachedMethod(wrapped)
        return wrapped  # type: ignore[no-any-return]


def make_cached(
    fronts: Fronts,
    *,
    opts: Options,
    key: str | Callable[..., str] | None,
    tags: Sequence[str],
) -> Decorator:
    """Build the decorator; ``fronts`` hands over the front serving ``def`` or ``async def`` functions."""
    return Decorator(fronts, opts, key, tags)
