"""A cached method: ``instance.method.invalidate(42)`` binds the instance, as ``instance.method(42)`` does.

A decorated plain function carries its helpers (``invalidate``, ``refresh``, ``invalidate_on_commit``,
``cache_key``) as attributes; reached through an instance, a Python function becomes a bound method
whose attributes are still the function's, so ``repo.get_user.invalidate(42)`` would pass ``42`` as
``self``. The decorator wraps a function whose first parameter is ``self`` or ``cls`` in
:class:`CachedMethod`, a descriptor whose instance access binds the call and every helper.
"""

from __future__ import annotations

import functools
from typing import Any

__all__ = ["BoundCachedMethod", "CachedMethod"]


class CachedMethod:
    """The decorated method on its class: called or helped with the instance first, like the function."""

    def __init__(self, wrapper: Any) -> None:
        self._wrapper = wrapper
        functools.update_wrapper(self, wrapper, updated=())
        self.cache = wrapper.cache

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self._wrapper(*args, **kwargs)

    def __get__(self, instance: object, owner: type[Any] | None = None) -> Any:
        if instance is None:
            return self
        return BoundCachedMethod(self._wrapper, instance)

    def invalidate(self, *args: Any, **kwargs: Any) -> Any:
        """Invalidate the entry of these arguments (the instance first)."""
        return self._wrapper.invalidate(*args, **kwargs)

    def refresh(self, *args: Any, **kwargs: Any) -> Any:
        """Invalidate the entry of these arguments (the instance first) and load it again."""
        return self._wrapper.refresh(*args, **kwargs)

    def invalidate_on_commit(self, *args: Any, **kwargs: Any) -> None:
        """Invalidate the entry of these arguments after the enclosing ``cluster.write()`` commits."""
        self._wrapper.invalidate_on_commit(*args, **kwargs)

    def cache_key(self, *args: Any, **kwargs: Any) -> str:
        """The cache key of these arguments (the instance first)."""
        return str(self._wrapper.cache_key(*args, **kwargs))


class BoundCachedMethod:
    """``instance.method``: the call and every helper with ``instance`` bound."""

    __slots__ = ("_self", "_wrapper")

    def __init__(self, wrapper: Any, instance: object) -> None:
        self._wrapper = wrapper
        self._self = instance

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self._wrapper(self._self, *args, **kwargs)

    @property
    def cache(self) -> Any:
        """The cache front serving the method."""
        return self._wrapper.cache

    @property
    def __wrapped__(self) -> Any:
        return self._wrapper.__wrapped__

    def invalidate(self, *args: Any, **kwargs: Any) -> Any:
        """Invalidate the entry of these arguments everywhere."""
        return self._wrapper.invalidate(self._self, *args, **kwargs)

    def refresh(self, *args: Any, **kwargs: Any) -> Any:
        """Invalidate the entry of these arguments and load it again."""
        return self._wrapper.refresh(self._self, *args, **kwargs)

    def invalidate_on_commit(self, *args: Any, **kwargs: Any) -> None:
        """Invalidate the entry of these arguments after the enclosing ``cluster.write()`` commits."""
        self._wrapper.invalidate_on_commit(self._self, *args, **kwargs)

    def cache_key(self, *args: Any, **kwargs: Any) -> str:
        """The cache key of these arguments."""
        return str(self._wrapper.cache_key(self._self, *args, **kwargs))

    def __repr__(self) -> str:
        return f"<bound cached method {self._wrapper.__qualname__} of {self._self!r}>"
