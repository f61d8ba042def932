"""What write-through and write-behind share in both flavours: the table, the keys, the entry bytes, the metrics.

The flavour-specific shells (``through_aio.py`` / ``behind_aio.py`` and their generated blocking
twins) hold one of these and do the I/O; nothing here talks to Redis or PostgreSQL.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from dbscale.cache.core import CacheFront
from dbscale.cache.invalidation import Invalidation, encode_message
from dbscale.cache.policy import check_ttl
from dbscale.cache.writes.policy import TableSpec, as_str, cache_key
from dbscale.config import is_cluster_url
from dbscale.errors import SerializationError, WriteBehindError


class Strategy:
    """A table bound to a cache: its key template, its entries in Redis, its metrics."""

    def __init__(
        self,
        front: CacheFront,
        target: Any,
        *,
        key_column: str,
        key: str,
        ttl: float | None,
        tombstone_ttl: float,
        invalidates: Sequence[str] = (),
    ) -> None:
        core = front.core
        if core.owner is None:
            raise WriteBehindError(
                "this cache belongs to no cluster: write_through/write_behind write through the cluster,"
                " so call them on cluster.cache"
            )
        if core.url is None:
            raise WriteBehindError("write_through/write_behind need Redis: set cache.redis_url in the topology config")
        if is_cluster_url(core.url):
            raise WriteBehindError(
                "write_through/write_behind need a single Redis (their streams and scripts span slots), not the"
                " Redis Cluster in cache.redis_url; run them with a cache whose redis_url is one Redis server"
            )
        self.front = front
        self.core = core
        self.cluster: Any = core.owner
        self.url: str = core.url
        self.table = TableSpec.of(target, key_column)
        self.template = key
        self.invalidates = tuple(invalidates)
        ttl = check_ttl(ttl)
        if tombstone_ttl != 0:  # 0: no tombstone (write-behind)
            check_ttl(tombstone_ttl, "tombstone_ttl")
        self.ttl_ms = max(1, int((core.config.default_ttl if ttl is None else ttl) * 1000))
        self.tombstone_ms = max(1, int(tombstone_ttl * 1000))
        self.prefix = f"{core.config.namespace}:w:{self.table.label}:"
        labels = {"table": self.table.label}
        metrics = core.metrics
        self.m_depth = metrics.gauge(
            "write_behind_queue_depth", "Changes in the stream not yet flushed.", ["table"]
        ).labels(**labels)
        self.m_oldest = metrics.gauge(
            "write_behind_oldest_pending_seconds", "Age of the oldest unflushed change.", ["table"]
        ).labels(**labels)
        self.m_batch = metrics.histogram(
            "write_behind_flush_batch_size",
            "Stream entries per flush transaction.",
            ["table"],
            buckets=(1, 10, 100, 500, 1000, 5000, 10000),
        ).labels(**labels)
        self.m_flush = metrics.histogram(
            "write_behind_flush_seconds", "Duration of one flush transaction.", ["table"]
        ).labels(**labels)
        self.m_dead = metrics.counter(
            "write_behind_dead_letters", "Changes the database rejected (see the dead-letter stream).", ["table"]
        ).labels(**labels)
        self.m_flushed = metrics.counter(
            "write_behind_flushed", "Stream entries flushed (applied, coalesced away or redelivered).", ["table"]
        ).labels(**labels)
        self.m_stale = metrics.counter(
            "write_through_rejected", "Cache sets refused because a newer version was already cached.", ["table"]
        ).labels(**labels)

    # -- keys ---------------------------------------------------------------------------------------
    def key_of(self, row: Mapping[str, Any]) -> str:
        """The cache key of ``row``."""
        return cache_key(self.template, self.table.key_column, row)

    def key_for(self, key_value: Any) -> str:
        """The cache key of the row whose key column is ``key_value``."""
        return cache_key(self.template, self.table.key_column, {self.table.key_column: key_value})

    def entry_key(self, key: str) -> str:
        """The Redis hash holding ``key``'s entry (version, data, tombstone flag)."""
        return self.prefix + "{" + key + "}"

    @property
    def stream(self) -> str:
        """The write-behind stream of this table."""
        return f"{self.core.config.namespace}:wb:{{{self.table.label}}}"

    @property
    def dead_stream(self) -> str:
        """The dead-letter stream of this table (changes the database rejected, with the error)."""
        return self.stream + ":dead"

    def announce(self, key: str) -> tuple[str, bytes]:
        """The channel and message that make every process drop ``key`` from its L1 (see :mod:`..invalidation`)."""
        return self.core.keys.channel, encode_message(self.core.origin, keys=[key])

    def fence(self, key: str) -> None:
        """Drop ``key`` from this process's L1 (after Redis has the new entry)."""
        self.core.fence_l1(Invalidation("key", (key,), stale=False))

    # -- entry bytes --------------------------------------------------------------------------------
    def dumps(self, value: Any) -> bytes:
        """A row (or key value) as the cache's serializer writes it."""
        return self.core.serde.dumps(dict(value) if isinstance(value, Mapping) else value)

    def loads(self, data: bytes) -> Any:
        """The inverse of :meth:`dumps`."""
        return self.core.serde.loads(data)

    def decode(self, fields: Mapping[Any, Any]) -> tuple[bool, dict[str, Any] | None]:
        """``(found, row)`` from an entry hash: ``(True, None)`` for a tombstone, ``(False, None)`` if absent."""
        if not fields:
            return False, None
        entry = {as_str(k): v for k, v in fields.items()}
        if as_str(entry.get("t", b"0")) == "1":
            return True, None
        try:
            return True, dict(self.loads(entry["d"]))
        except (KeyError, SerializationError, TypeError, ValueError):
            self.core.stats.corrupt.inc()  # data dbscale did not write: a miss (the next set replaces it)
            return False, None


__all__ = ["Strategy"]
