# auto-generated from wrap_aio.py by scripts/unasync.py — do not edit
"""The function ``cached`` returns: an L1 hit inline (a key build, one dict lookup, a clock read, a counter).

``wrap_aio.py`` (for coroutine functions) is the source; ``wrap.py`` (for plain functions) is
generated from it by ``scripts/unasync.py``. The decorator (:mod:`dbscale.cache.decorator`) picks one.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, cast

from dbscale.cache.keys import KeyBuilder, TagBuilder

if TYPE_CHECKING:
    from dbscale.cache.core import Options
    from dbscale.cache.decorator import CachedFunction, SyncFront

__all__ = ["wrap"]


def wrap(
    func: Callable[..., Any], cache: SyncFront, builder: KeyBuilder, tag_builder: TagBuilder | None, opts: Options
) -> CachedFunction[Any, Any]:
    """``func`` read through ``cache``, with ``invalidate``, ``refresh``, ``invalidate_on_commit``, ``cache_key`` and ``cache`` attached."""
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
    return cast("CachedFunction[Any, Any]", wrapper)
