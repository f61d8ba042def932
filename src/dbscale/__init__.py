"""dbscale: scale a PostgreSQL-backed application without rewriting its data layer."""

from importlib import metadata

from dbscale import cqrs, sharding
from dbscale.advisor import Advice, advise, advise_async
from dbscale.bulk import bulk_load, bulk_load_async
from dbscale.cluster import AsyncCluster, Cluster
from dbscale.config import CacheConfig, GroupConfig, PoolConfig, TopologyConfig, load_config
from dbscale.errors import (
    AuthenticationFailed,
    BadRowError,
    BulkLoadError,
    CacheError,
    CacheUnavailable,
    ClusterClosed,
    ConcurrencyError,
    ConfigError,
    CqrsError,
    DbscaleError,
    FanoutError,
    LocalTopologyError,
    MissingBinaryError,
    NodeUnavailable,
    NoReplicaAvailable,
    PrimaryUnavailable,
    ProjectionError,
    SerializationError,
)
from dbscale.metrics import Metrics
from dbscale.routing import AsyncReadConnection, InvalidCausalToken, PoolTimeout, ReadConnection

try:
    __version__ = metadata.version("dbscale")
except metadata.PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0+unknown"

__all__ = [
    "Advice",
    "AsyncCluster",
    "AsyncReadConnection",
    "AuthenticationFailed",
    "BadRowError",
    "BulkLoadError",
    "CacheConfig",
    "CacheError",
    "CacheUnavailable",
    "Cluster",
    "ClusterClosed",
    "ConcurrencyError",
    "ConfigError",
    "CqrsError",
    "DbscaleError",
    "FanoutError",
    "GroupConfig",
    "InvalidCausalToken",
    "LocalTopologyError",
    "Metrics",
    "MissingBinaryError",
    "NoReplicaAvailable",
    "NodeUnavailable",
    "PoolConfig",
    "PoolTimeout",
    "PrimaryUnavailable",
    "ProjectionError",
    "ReadConnection",
    "SerializationError",
    "TopologyConfig",
    "__version__",
    "advise",
    "advise_async",
    "bulk_load",
    "bulk_load_async",
    "cqrs",
    "load_config",
    "sharding",
]
