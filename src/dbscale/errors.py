"""One exception hierarchy for dbscale.

Every error says what was wrong and what to do about it. Driver errors (psycopg, redis-py) are
translated at the boundary with ``raise ... from`` so callers only ever catch ``DbscaleError``
subclasses.
"""

from __future__ import annotations


class DbscaleError(Exception):
    """Root of every error dbscale raises."""


class ConfigError(DbscaleError, ValueError):
    """The topology configuration is invalid.

    The message names the field path and the fix, e.g.
    ``groups.main.replicas[1]: 'mysql://x' is not a PostgreSQL URL``.
    """


class LocalTopologyError(DbscaleError):
    """The local topology (``dbscale up``) could not be started, stopped or changed; the message says why."""


class MissingBinaryError(LocalTopologyError):
    """A server binary needed by the local topology is not installed; install it (``scripts/bootstrap.sh``)."""


class ClusterClosed(DbscaleError, RuntimeError):
    """The cluster was closed (``close()`` / ``aclose()``); create a new ``Cluster`` to keep working.

    Also a ``RuntimeError``, which is what a closed cluster raised before this class existed.
    """


class NodeUnavailable(DbscaleError):
    """A database node could not be reached; check the node (``dbscale status``) and retry."""


class PrimaryUnavailable(NodeUnavailable):
    """No writable primary is known for a group; writes cannot proceed until one is back (or promoted)."""


class NoReplicaAvailable(NodeUnavailable):
    """No node can serve a read: no replica is eligible and the fallback is ``error`` or the primary is down.

    Wait for a replica to catch up, raise ``max_lag``, or set ``fallback = "primary"``.
    """


class ReplicationTimeout(DbscaleError, TimeoutError):
    """``wait_replicated()`` ran out of time: a replica had not replayed the writer's position yet.

    The message names each replica behind and by how many bytes; check whether its replay is paused
    (``pg_is_wal_replay_paused()``) or slow (``dbscale status``), or wait longer.
    """


class PoolTimeout(NodeUnavailable):
    """No pooled connection to a node became free within ``pool_timeout``; raise the pool size or find the leak."""


class InvalidCausalToken(DbscaleError, ValueError):
    """A causal token (or LSN) could not be read; carry the exact string ``causal_token()`` returned."""


class AuthenticationFailed(DbscaleError):
    """A node refused the configured user, password or database: permanent until the URL is fixed.

    Raised at once (no waiting for ``write_timeout``, no retries, no bans); the message names the
    node and PostgreSQL's (or PgBouncer's) reason, never the password.
    """


class CacheError(DbscaleError):
    """A cache operation failed in a way the caller must know about."""


class CacheUnavailable(CacheError):
    """Redis could not be reached in time (or answered with an error).

    The cache fails open on it (the value comes from the database); seen by a caller only from
    explicit Redis operations. Check Redis (``dbscale status``) and the cache ``timeout``.
    """


class CacheKeyError(CacheError, TypeError):
    """A cache key could not be built from a call's arguments (unknown field or unencodable value).

    Fix the ``key=`` template, or pass arguments of a type a key can hold (str, int, UUID, dates, enums …).
    """


class SerializationError(CacheError, TypeError):
    """A value could not be serialized or deserialized for the cache.

    Return JSON/msgpack-compatible values from cached functions (or pick another ``serializer``).
    """


class CacheEntryError(CacheError):
    """One cache key's Redis data is not what dbscale writes there (e.g. a key of the wrong Redis type).

    The cache treats it as a miss for that key only and overwrites it on the next fill; it is
    counted (``cache_corrupt_entries``) and never reaches a caller nor trips the circuit breaker.
    Find who else writes into the cache's namespace.
    """


class MarkerUnavailable(CacheError):
    """An invalidation's write position (for its lag-aware fill marker) could not be read.

    The invalidation still runs, without a marker (fail open, counted as ``cache_marker_failures``):
    the next fill of its keys may read a lagging replica. Check the primary (``dbscale status``).
    """


class NotInTransaction(DbscaleError, RuntimeError):
    """Work meant to run after a COMMIT (``invalidate_on_commit``) was queued outside ``cluster.write()``.

    Call it inside the ``with cluster.write() as conn:`` block whose commit it depends on, with the
    cache of the same flavour as the cluster (``AsyncCluster.cache`` inside ``AsyncCluster.write()``).
    """


class WriteBehindError(CacheError):
    """A write-behind (or write-through) operation failed; the message says which and what to do."""


class FlushTimeout(WriteBehindError, TimeoutError):
    """``flush(timeout=)`` ran out before every change acknowledged before the call reached the database.

    Start a flusher (``start_flusher()`` or ``dbscale write-behind run``), check the database
    (``dbscale status``), or pass a longer timeout.
    """


class NotReplicated(WriteBehindError):
    """A write-behind save reached the Redis primary, but fewer Redis replicas than ``wait_replicas``
    confirmed it within ``wait_timeout``: it may be lost if the Redis primary dies now.

    Check the Redis replicas (``INFO replication``), lower ``wait_replicas`` or raise ``wait_timeout``.
    """


class FlusherFenced(WriteBehindError):
    """Another write-behind flusher took over this stream; this one stopped without applying its batch.

    Nothing is lost: the new flusher re-reads the batch. Run one flusher per stream.
    """


class ShardingError(DbscaleError):
    """Root of the sharding errors: placement, global IDs and fan-out plans; the subclass says what to fix."""


class PlacementError(ShardingError, ValueError):
    """A shard map is misconfigured, or a key has no place in it (e.g. outside every range).

    The message names the offending value and the fix, e.g. ``duplicate node 'shard1': node names
    must be unique``.
    """


class UnsupportedKeyError(PlacementError, TypeError):
    """A shard key is not an ``int``, ``str``, ``bytes`` or ``uuid.UUID`` (or not the type a ``Range`` uses)."""


class GlobalIdError(ShardingError, ValueError):
    """A global ID cannot be made or read: shard number out of range, clock outside the epoch's span."""


class FanoutPlanError(ShardingError, ValueError):
    """A scatter-gather plan is invalid (bad ORDER BY spec, LIMIT, aggregate), or rows lack a column it needs."""


class FanoutError(ShardingError):
    """One or more shard groups failed or timed out during ``cluster.fanout(...)``.

    ``missing`` maps each failed group to what went wrong; the message names them. Start or fix
    the group, raise ``timeout=``, or pass ``allow_partial=True`` to get the other groups' rows
    (the result's ``missing`` then names the groups left out).
    """

    def __init__(self, message: str, *, missing: dict[str, str]) -> None:
        super().__init__(message)
        self.missing = missing


class CqrsError(DbscaleError):
    """Root of the CQRS errors: the event log and projectors (:mod:`dbscale.cqrs`)."""


class ConcurrencyError(CqrsError):
    """``append(..., expected_version=N)`` found the aggregate at another version.

    Another command changed the aggregate since it was loaded: reload it, re-run the command and
    append again (the caller's transaction is still usable; roll it back or retry it).
    """

    def __init__(self, message: str, *, aggregate_id: str, expected: int, actual: int) -> None:
        super().__init__(message)
        self.aggregate_id = aggregate_id
        self.expected = expected
        self.actual = actual


class ProjectionError(CqrsError):
    """A projector's handler failed on an event; the projector stopped before it (nothing after it was applied).

    Fix the handler (or the data) and run the projector again, or construct it with
    ``on_error="dead_letter"`` to record such events in ``dbscale_dead_letters`` and go on.
    """

    def __init__(self, message: str, *, projector: str, event_id: int, error: BaseException | None = None) -> None:
        super().__init__(message)
        self.projector = projector
        self.event_id = event_id
        self.error = error


__all__ = [
    "AdvisorError",
    "AdvisorQueryError",
    "AuthenticationFailed",
    "BadRowError",
    "BulkLoadError",
    "CacheEntryError",
    "CacheError",
    "CacheKeyError",
    "CacheUnavailable",
    "ClusterClosed",
    "ConcurrencyError",
    "ConfigError",
    "CqrsError",
    "DbscaleError",
    "FanoutError",
    "FanoutPlanError",
    "FlushTimeout",
    "FlusherFenced",
    "GlobalIdError",
    "InvalidCausalToken",
    "LocalTopologyError",
    "MarkerUnavailable",
    "MissingBinaryError",
    "MissingExtensionError",
    "NoReplicaAvailable",
    "NodeUnavailable",
    "NotInTransaction",
    "NotReplicated",
    "PlacementError",
    "PoolTimeout",
    "PrimaryUnavailable",
    "ProjectionError",
    "ReplicationTimeout",
    "SerializationError",
    "ShardingError",
    "UnsupportedKeyError",
    "WriteBehindError",
]


class AdvisorError(DbscaleError):
    """Root of the index advisor's errors (``dbscale advise``, :func:`dbscale.advise`)."""


class AdvisorQueryError(AdvisorError, ValueError):
    """One workload query cannot be advised (does not parse, names a missing table, fails to plan).

    The advisor reports it for that query and advises the rest; fix the SQL or drop it from the workload.
    """


class MissingExtensionError(AdvisorError):
    """HypoPG or pg_stat_statements is not available on the database; the message says how to enable it."""


class BulkLoadError(DbscaleError):
    """A bulk load (:func:`dbscale.bulk_load`, ``dbscale load``) cannot run as asked; the message says what to change."""


class BadRowError(BulkLoadError, ValueError):
    """An input row cannot be loaded (wrong type, constraint violation, wrong number of values).

    The message names the input row number (1-based, header excluded), the column and the value
    when known. Every row before it is committed; fix the row and run again with ``resume=`` (CLI:
    ``--resume``) to continue after what is committed, or load with ``on_error="skip"`` to send bad
    rows to a reject file and go on.
    """

    def __init__(self, message: str, *, row: int, column: str | None = None, value: object = None) -> None:
        super().__init__(message)
        self.row = row
        self.column = column
        self.value = value
