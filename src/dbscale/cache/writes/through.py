# auto-generated from through_aio.py by scripts/unasync.py — do not edit
"""The synchronous write-through cache: commit on the primary, then set the entry if its version is newer.

See :mod:`dbscale.cache.writes.policy` for why the versions order commits. ``through_aio.py`` is the
source; ``through.py`` is generated from it by ``scripts/unasync.py``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from contextlib import suppress
from typing import Any

from redis import Redis
from redis.exceptions import OutOfMemoryError, RedisError
from sqlalchemy import text

from dbscale.cache.core import CacheFront
from dbscale.cache.l2_base import client_options
from dbscale.cache.writes.base import Strategy
from dbscale.cache.writes.policy import INSTALL_LOCK_SQL, INSTALL_SQL, SET_IF_NEWER, VERSION_SQL, upsert_params
from dbscale.errors import CacheUnavailable


def install_schema(cluster: Any) -> None:
    """Create the version sequence and the write-behind checkpoint table (idempotent)."""
    with cluster.write() as conn:
        conn.execute(text(INSTALL_LOCK_SQL))
        for sql in INSTALL_SQL:
            conn.execute(text(sql))


def read_row(strategy: Strategy, key_value: Any) -> dict[str, Any] | None:
    """The row whose key column is ``key_value``, read through ``cluster.read()`` (None if there is none)."""
    with strategy.cluster.read() as conn:
        got = (conn.execute(text(strategy.table.select_sql()), {"key": key_value})).mappings().first()
    return None if got is None else dict(got)


class RedisEntries:
    """The Redis side of a strategy: one client (made on first use) and the set-if-newer script."""

    def __init__(self, strategy: Strategy, timeout: float) -> None:
        self.strategy = strategy
        self.timeout = timeout
        self._client: Any = None  # redis-py's types are T | T unions; used as its flavour
        self._script: Any = None
        self.installed = False

    @property
    def client(self) -> Any:
        """The Redis client (created on first use)."""
        if self._client is None:
            # no hidden retries: a re-sent save script that had already run would append its change twice
            self._client = Redis.from_url(self.strategy.url, **client_options(self.timeout))
        return self._client

    def fetch(self, key: str) -> tuple[bool, dict[str, Any] | None]:
        """``(found, row)`` of ``key``'s entry (a tombstone is found with row None)."""
        try:
            fields = self.client.hgetall(self.strategy.entry_key(key))
        except RedisError as exc:
            raise CacheUnavailable(f"Redis did not answer reading {key!r}: {exc}; check Redis") from exc
        return self.strategy.decode(fields)

    def set_if_newer(self, key: str, version: int, data: bytes, tombstone: bool, ttl_ms: int) -> bool:
        """Store the entry unless a version at least as new is cached; True if it was stored."""
        s = self.strategy
        channel, message = s.announce(key)
        args = [version, data, "1" if tombstone else "0", ttl_ms, channel, message]
        try:
            if self._script is None:
                self._script = self.client.register_script(SET_IF_NEWER)
            stored = bool(self._script(keys=[s.entry_key(key)], args=args))
        except RedisError as exc:
            why = (
                "Redis is out of memory (used memory above its maxmemory)" if isinstance(exc, OutOfMemoryError) else exc
            )
            raise CacheUnavailable(
                f"the row of {key!r} is committed, but Redis did not take its cache entry ({why}): the entry"
                " may keep the previous value until its TTL; check Redis"
            ) from exc
        s.fence(key)
        if not stored:
            s.m_stale.inc()
        return stored

    def close(self) -> None:
        """Close the client."""
        if self._client is not None:
            self._client.close()
            self._client = None


class WriteThrough:
    """``users = cluster.cache.write_through("users", key_column="id", key="user:{id}")``.

    :meth:`save` and :meth:`delete` commit on the primary first and update the cache only after the
    COMMIT, with a version that orders the commits of one key (so concurrent writers cannot leave
    an older row cached, and a delete's tombstone keeps a late set from resurrecting the row).
    :meth:`get` reads the cache, then the database (filling an absent entry only).
    """

    def __init__(
        self,
        front: CacheFront,
        table: Any,
        *,
        key_column: str,
        key: str,
        ttl: float | None = None,
        tombstone_ttl: float = 60.0,
    ) -> None:
        self.strategy = Strategy(front, table, key_column=key_column, key=key, ttl=ttl, tombstone_ttl=tombstone_ttl)
        self.redis = RedisEntries(self.strategy, max(self.strategy.core.admin_timeout, 1.0))

    def _installed(self) -> None:
        if not self.redis.installed:
            install_schema(self.strategy.cluster)
            self.redis.installed = True

    def _version(self, conn: Any, key: str) -> int:
        lock = f"{self.strategy.table.label}:{key}"
        return int((conn.execute(text(VERSION_SQL), {"lock": lock})).scalar_one())

    def save(self, row: Mapping[str, Any]) -> int:
        """Upsert ``row`` on the primary, then cache it; returns its version."""
        s = self.strategy
        row = dict(row)
        key = s.key_of(row)
        self._installed()
        columns = list(row)
        with s.cluster.write() as conn:
            version = self._version(conn, key)
            conn.execute(text(s.table.upsert_sql(columns, 1)), upsert_params(columns, [row]))
        self.redis.set_if_newer(key, version, s.dumps(row), False, s.ttl_ms)
        return version

    def delete(self, key_value: Any) -> int:
        """Delete the row on the primary, then leave a tombstone in the cache; returns the delete's version."""
        s = self.strategy
        key = s.key_for(key_value)
        self._installed()
        with s.cluster.write() as conn:
            version = self._version(conn, key)
            conn.execute(text(s.table.delete_sql()), {"keys": [key_value]})
        self.redis.set_if_newer(key, version, b"", True, s.tombstone_ms)
        return version

    def get(self, key_value: Any) -> dict[str, Any] | None:
        """The row (a dict) or None; from the cache, else the database (then cached if still absent)."""
        s = self.strategy
        key = s.key_for(key_value)
        try:
            found, row = self.redis.fetch(key)
        except CacheUnavailable:
            found, row = False, None
        if found:
            return row
        row = read_row(s, key_value)
        if row is not None:
            with suppress(CacheUnavailable):  # a fill is optional: the caller has the row
                self.redis.set_if_newer(key, 0, s.dumps(row), False, s.ttl_ms)
        return row

    def get_many(self, key_values: Sequence[Any]) -> list[dict[str, Any] | None]:
        """:meth:`get` of each key, in order."""
        return [self.get(k) for k in key_values]

    def close(self) -> None:
        """Close this strategy's Redis client."""
        self.redis.close()


__all__ = ["RedisEntries", "WriteThrough", "install_schema", "read_row"]
