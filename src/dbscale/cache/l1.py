"""L1: a bounded in-process LRU with per-entry TTL, safe for threads and asyncio.

Pure data structure: the clock is passed in (``now``), nothing here sleeps or does I/O.

Reads take no lock: a hit is one dict lookup, one comparison and an LRU touch (each a single
GIL-atomic operation on an ``OrderedDict``). Writes and invalidations take a lock.

Invalidation races: a reader that fetched a value from L2 *before* an invalidation could insert it
*after* the invalidation reached this L1, leaving an old value behind. Readers therefore take a
:meth:`L1.token` before reading L2 and pass it to :meth:`L1.put`, which refuses the insert when the
key (or everything, after :meth:`L1.clear`) was invalidated since that token was taken.
"""

from __future__ import annotations

import re
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterable
from typing import Any

__all__ = ["L1"]


class L1:
    """Bounded LRU + TTL map from cache keys to deserialized values.

    ``max_entries`` bounds the number of entries (0 disables the cache); ``max_bytes`` optionally
    bounds the sum of the sizes given to :meth:`put` (the serialized size of each value).
    """

    __slots__ = ("_bytes", "_data", "_floor", "_gen", "_lock", "_recent", "_recent_max", "max_bytes", "max_entries")

    def __init__(self, max_entries: int, max_bytes: int | None = None, *, recent_invalidations: int = 4096) -> None:
        self.max_entries = max_entries
        self.max_bytes = max_bytes
        # key -> (value, expires_at, size)
        self._data: OrderedDict[str, tuple[Any, float, int]] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()
        self._gen = 0
        self._floor = 0
        self._recent: OrderedDict[str, int] = OrderedDict()
        self._recent_max = recent_invalidations

    def __len__(self) -> int:
        return len(self._data)

    def get(self, key: str, now: float, default: Any = None) -> Any:
        """The live value of ``key``, or ``default``; expired entries count as missing."""
        entry = self._data.get(key)
        if entry is None or entry[1] <= now:
            return default
        try:  # noqa: SIM105 - hot path
            self._data.move_to_end(key)
        except KeyError:  # evicted by another thread between the two calls
            pass
        return entry[0]

    def lookup(self, key: str, now: float) -> tuple[bool, Any]:
        """``(found, value)``: distinguishes a cached ``None`` from a miss."""
        entry = self._data.get(key)
        if entry is None or entry[1] <= now:
            return False, None
        try:  # noqa: SIM105 - hot path
            self._data.move_to_end(key)
        except KeyError:
            pass
        return True, entry[0]

    def hot_accessors(self) -> tuple[Callable[[str], tuple[Any, float, int] | None], Callable[[str], None]]:
        """``(get, touch)`` for a hit path that inlines :meth:`lookup` (the decorator's wrapper).

        ``get(key)`` is the entry ``(value, expires_at, size)`` or None, read without the lock (a dict
        read is atomic); ``touch(key)`` marks it recently used and raises ``KeyError`` if it is gone.
        """
        return self._data.get, self._data.move_to_end

    def token(self) -> int:
        """A token to take before reading L2, for :meth:`put`."""
        return self._gen

    def invalidated_since(self, key: str, token: int) -> bool:
        """Was ``key`` (or everything) invalidated after ``token`` was taken? (True if no longer known.)"""
        return token < self._floor or self._recent.get(key, -1) > token

    def key_invalidated_since(self, key: str, token: int) -> bool:
        """Was ``key`` itself named by an invalidation after ``token`` was taken? (No clears, no floor.)"""
        return self._recent.get(key, -1) > token

    def put(self, key: str, value: Any, ttl: float, now: float, *, size: int = 0, token: int | None = None) -> bool:
        """Store ``value`` for ``ttl`` seconds; False if refused (disabled, too big, or invalidated since ``token``)."""
        if self.max_entries <= 0 or ttl <= 0:
            return False
        if self.max_bytes is not None and size > self.max_bytes:
            return False
        with self._lock:
            if token is not None and self.invalidated_since(key, token):
                return False
            old = self._data.pop(key, None)
            if old is not None:
                self._bytes -= old[2]
            self._data[key] = (value, now + ttl, size)
            self._bytes += size
            self._evict()
        return True

    def _evict(self) -> None:
        data = self._data
        while len(data) > self.max_entries or (self.max_bytes is not None and self._bytes > self.max_bytes):
            _, (_, _, size) = data.popitem(last=False)
            self._bytes -= size

    def invalidate(self, keys: Iterable[str]) -> int:
        """Drop ``keys`` and refuse in-flight inserts of them; returns how many entries were dropped."""
        dropped = 0
        with self._lock:
            self._gen += 1
            gen = self._gen
            recent = self._recent
            for key in keys:
                old = self._data.pop(key, None)
                if old is not None:
                    self._bytes -= old[2]
                    dropped += 1
                recent[key] = gen
                recent.move_to_end(key)
            while len(recent) > self._recent_max:
                _, oldest = recent.popitem(last=False)
                # forgetting a key's invalidation: refuse every insert whose token predates it
                self._floor = max(self._floor, oldest)
        return dropped

    def invalidate_matching(self, regex: re.Pattern[str]) -> int:
        """Drop every key the regex matches, and refuse all in-flight inserts."""
        with self._lock:
            victims = [k for k in self._data if regex.match(k)]
        dropped = self.invalidate(victims)
        self.clear_inflight()
        return dropped

    def clear_inflight(self) -> None:
        """Refuse every insert whose token was taken before now."""
        with self._lock:
            self._gen += 1
            self._floor = self._gen

    def after_fork(self) -> None:
        """In a forked child: a new lock (a parent's thread may have held this one) and nothing cached
        (invalidations sent before the child subscribes never reach it)."""
        self._lock = threading.Lock()
        self.clear()

    def clear(self) -> None:
        """Drop everything and refuse in-flight inserts."""
        with self._lock:
            self._data.clear()
            self._bytes = 0
            self._recent.clear()
            self._gen += 1
            self._floor = self._gen

    def stats(self) -> dict[str, int]:
        """Entry count and byte total."""
        return {"entries": len(self._data), "bytes": self._bytes}
