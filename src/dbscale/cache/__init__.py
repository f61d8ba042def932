"""Multi-level cache: in-process L1 over Redis L2, with leases, invalidation and fail-open.

>>> from dbscale.cache import Cache
>>> from dbscale.config import CacheConfig
>>> cache = Cache(CacheConfig(redis_url="redis://127.0.0.1:6380/0", namespace="app"))  # doctest: +SKIP
>>> @cache.cached(ttl=60, key="user:{user_id}", tags=["user:{user_id}"])  # doctest: +SKIP
... def get_user(user_id: int) -> dict | None: ...

Read path: L1 → Redis → loader, with a lease per miss (:mod:`dbscale.cache.leases`) so only one
caller in all processes loads a key and a fill that raced an invalidation is dropped. Redis down or
slow ⇒ the loader is called and its result returned; a circuit breaker skips Redis for a cooldown.
:class:`Cache` is for threads, :class:`AsyncCache` for asyncio; both decorate sync and async functions.
"""

from dbscale.cache.keys import CacheKeyError, KeyBuilder, RedisKeys
from dbscale.cache.l1 import L1
from dbscale.cache.l2 import CacheUnavailable
from dbscale.cache.serde import Serializer
from dbscale.cache.tier import Cache
from dbscale.cache.tier_async import AsyncCache

for _cls in (AsyncCache, Cache, CacheKeyError, CacheUnavailable, KeyBuilder, L1, RedisKeys, Serializer):
    _cls.__module__ = "dbscale.cache"

__all__ = ["L1", "AsyncCache", "Cache", "CacheKeyError", "CacheUnavailable", "KeyBuilder", "RedisKeys", "Serializer"]
