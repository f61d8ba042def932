"""dbscale: scale a PostgreSQL-backed application without rewriting its data layer.

The public names (but the errors, which import nothing) are imported on first use (PEP 562
``__getattr__``), not when ``dbscale`` is imported: ``import dbscale`` (and so the ``dbscale`` CLI)
does not pay for SQLAlchemy's ORM, the cache, CQRS or the advisor until a name that needs them is
touched. ``from dbscale import Cluster`` works as before; type checkers read the imports under
``TYPE_CHECKING``.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from dbscale.errors import (  # no I/O imports: cheap, and needed to catch errors
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
    ReplicationTimeout,
    SerializationError,
)

if TYPE_CHECKING:
    from dbscale import cqrs, sharding
    from dbscale.advisor import Advice, advise, advise_async
    from dbscale.bulk import bulk_load, bulk_load_async
    from dbscale.cluster import AsyncCluster, Cluster
    from dbscale.config import CacheConfig, GroupConfig, PoolConfig, TopologyConfig, load_config
    from dbscale.metrics import Metrics
    from dbscale.routing import AsyncReadConnection, InvalidCausalToken, PoolTimeout, ReadConnection

    __version__: str

#: public name -> the module it lives in (a module itself when the name is the module's).
_LAZY: dict[str, str] = {
    "cqrs": "dbscale.cqrs",
    "sharding": "dbscale.sharding",
    **dict.fromkeys(("Advice", "advise", "advise_async"), "dbscale.advisor"),
    **dict.fromkeys(("bulk_load", "bulk_load_async"), "dbscale.bulk"),
    **dict.fromkeys(("AsyncCluster", "Cluster"), "dbscale.cluster"),
    **dict.fromkeys(("CacheConfig", "GroupConfig", "PoolConfig", "TopologyConfig", "load_config"), "dbscale.config"),
    "Metrics": "dbscale.metrics",
    **dict.fromkeys(("AsyncReadConnection", "InvalidCausalToken", "PoolTimeout", "ReadConnection"), "dbscale.routing"),
}


def __getattr__(name: str) -> Any:
    """Import a public name's module on first use and keep the name here (later lookups are plain)."""
    if name == "__version__":  # importlib.metadata alone costs tens of milliseconds
        from importlib import metadata

        try:
            version = metadata.version("dbscale")
        except metadata.PackageNotFoundError:  # running from a source tree that was never installed
            version = "0+unknown"
        globals()[name] = version
        return version
    module_name = _LAZY.get(name)
    if module_name is None:
        raise AttributeError(f"module 'dbscale' has no attribute {name!r}")
    module = importlib.import_module(module_name)
    value = module if module_name == f"{__name__}.{name}" else getattr(module, name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_LAZY, "__version__"})


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
    "ReplicationTimeout",
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
