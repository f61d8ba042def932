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
    """The local topology (``dbscale up``) could not be started, stopped or changed."""


class MissingBinaryError(LocalTopologyError):
    """A server binary needed by the local topology is not installed."""


class NodeUnavailable(DbscaleError):
    """A database node could not be reached."""


class PrimaryUnavailable(NodeUnavailable):
    """No writable primary is known for a group; writes cannot proceed."""


class NoReplicaAvailable(NodeUnavailable):
    """No replica is eligible for a read and the fallback policy is ``error``."""


class CacheError(DbscaleError):
    """A cache operation failed in a way the caller must know about."""


class SerializationError(CacheError, TypeError):
    """A value could not be serialized or deserialized for the cache."""


class CacheEntryError(CacheError):
    """One cache key's Redis data is not what dbscale writes there (e.g. a key of the wrong Redis type).

    The cache treats it as a miss for that key only and overwrites it on the next fill; it is
    counted (``cache_corrupt_entries``) and never reaches a caller nor trips the circuit breaker.
    Find who else writes into the cache's namespace.
    """


__all__ = [
    "CacheEntryError",
    "CacheError",
    "ConfigError",
    "DbscaleError",
    "LocalTopologyError",
    "MissingBinaryError",
    "NoReplicaAvailable",
    "NodeUnavailable",
    "PrimaryUnavailable",
    "SerializationError",
]
