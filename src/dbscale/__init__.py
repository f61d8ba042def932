"""dbscale: scale a PostgreSQL-backed application without rewriting its data layer."""

from dbscale.cluster import AsyncCluster, Cluster
from dbscale.config import CacheConfig, GroupConfig, PoolConfig, TopologyConfig, load_config
from dbscale.errors import (
    CacheError,
    ConfigError,
    DbscaleError,
    LocalTopologyError,
    MissingBinaryError,
    NodeUnavailable,
    NoReplicaAvailable,
    PrimaryUnavailable,
    SerializationError,
)
from dbscale.metrics import Metrics

__version__ = "0.1.0"

__all__ = [
    "AsyncCluster",
    "CacheConfig",
    "CacheError",
    "Cluster",
    "ConfigError",
    "DbscaleError",
    "GroupConfig",
    "LocalTopologyError",
    "Metrics",
    "MissingBinaryError",
    "NoReplicaAvailable",
    "NodeUnavailable",
    "PoolConfig",
    "PrimaryUnavailable",
    "SerializationError",
    "TopologyConfig",
    "__version__",
    "load_config",
]
