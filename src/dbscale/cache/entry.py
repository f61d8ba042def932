"""The entry codec: the bytes of one Redis cache entry, both ways.

An entry is a fixed header (:func:`~dbscale.cache.serde.encode_header`: logical expiry in Unix ms
and the loader's recompute time in ms, for XFetch) followed by the serialized value. The Redis key
lives longer than the logical expiry by ``stale_ttl`` so a stale copy can be served while one caller
recomputes. Decoding has a fast path for the default (unsigned orjson) payload; anything else goes
through the serializer, which names what is wrong.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import orjson

from dbscale.cache.policy import jittered_ttl
from dbscale.cache.serde import HEADER_LEN, Serializer, decode_header, encode_header

__all__ = ["EntryCodec"]


class EntryCodec:
    """Make and read cache entries. ``clock`` returns Unix seconds; ``rand`` uniform [0, 1) (TTL jitter)."""

    __slots__ = ("_plain_json", "clock", "jitter", "negative_ttl", "rand", "serde", "stale_px")

    def __init__(
        self,
        serde: Serializer,
        *,
        plain_json: bool,
        jitter: float,
        negative_ttl: float,
        stale_px: int,
        clock: Callable[[], float],
        rand: Callable[[], float],
    ) -> None:
        self.serde = serde
        self._plain_json = plain_json
        self.jitter, self.negative_ttl, self.stale_px = jitter, negative_ttl, stale_px
        self.clock, self.rand = clock, rand

    def make(self, value: Any, ttl: float, delta: float) -> tuple[bytes, int, int]:
        """``(entry, physical_px, expires_ms)`` for a value; None values use ``negative_ttl``."""
        if value is None:
            ttl = self.negative_ttl
        ttl = jittered_ttl(ttl, self.jitter, self.rand())
        ttl_ms = max(1, int(ttl * 1000))
        expires_ms = int(self.clock() * 1000) + ttl_ms
        payload = self.serde.dumps(value)
        entry = encode_header(expires_ms, int(delta * 1000)) + payload
        return entry, ttl_ms + self.stale_px, expires_ms

    def decode(self, entry: bytes) -> tuple[Any, int, int]:
        """``(value, expires_ms, delta_ms)`` of an entry; SerializationError if corrupt."""
        if self._plain_json:
            try:  # hot path: header version "1" (0x31), orjson payload "j" (0x6A); indexing allocates nothing
                if entry[0] == 0x31 and entry[HEADER_LEN] == 0x6A:
                    return orjson.loads(entry[HEADER_LEN + 1 :]), int(entry[1:14]), int(entry[14:22])
            except (IndexError, ValueError):
                pass  # fall through to the careful path, which names the problem
        expires_ms, delta_ms = decode_header(entry)
        return self.serde.loads(entry[HEADER_LEN:]), expires_ms, delta_ms
