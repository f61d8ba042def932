"""CacheCore and its fronts start nothing in their constructors (no thread, no Redis client)."""

from __future__ import annotations

import threading

from dbscale.cache import Cache
from dbscale.cache.core import CacheCore
from dbscale.config import CacheConfig

UNUSED = "redis://127.0.0.1:9/0"  # nothing listens there: a client made by mistake would fail at use only


def test_constructors_start_no_thread() -> None:
    before = set(threading.enumerate())
    core = CacheCore(CacheConfig(redis_url=UNUSED, namespace="t"))
    cache = Cache(core=core)
    assert cache.aio.core is core and cache.aio.sync is cache and cache.sync is cache
    assert set(threading.enumerate()) == before
    assert core.listener is None
    core.close()
    assert set(threading.enumerate()) == before


def test_front_of_a_flavour_is_itself_or_its_twin() -> None:
    cache = Cache(CacheConfig(redis_url=None, namespace="t"))
    acache = cache.front("async")
    assert cache.front("sync") is cache and acache.front("async") is acache and acache.front("sync") is cache
    cache.close()
