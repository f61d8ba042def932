"""Cluster: the object an application holds. It owns the topology config, the engines and the metrics.

One SQLAlchemy engine per node, created lazily on first use with the group's pool settings. Engines
that reach a node through PgBouncer (transaction pooling) disable psycopg's prepared statements
(``prepare_threshold=None``), which PgBouncer 1.18 cannot carry across transactions.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Mapping
from types import TracebackType
from typing import Any, Self

from sqlalchemy import Engine, create_engine
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from dbscale.config import PoolConfig, TopologyConfig, load_config, sqlalchemy_url
from dbscale.errors import ConfigError
from dbscale.metrics import Metrics
from dbscale.topology import NodeRef, configured_nodes


def engine_options(pool: PoolConfig, *, via_pgbouncer: bool) -> dict[str, Any]:
    """Keyword arguments for ``create_engine`` from a group's pool settings."""
    connect_args: dict[str, Any] = {"connect_timeout": max(1, round(pool.connect_timeout))}
    if via_pgbouncer:
        connect_args["prepare_threshold"] = None
    return {
        "pool_size": pool.pool_size,
        "max_overflow": pool.max_overflow,
        "pool_timeout": pool.pool_timeout,
        "pool_recycle": int(pool.pool_recycle),
        "pool_pre_ping": pool.pre_ping,
        "connect_args": connect_args,
    }


class _ClusterBase:
    """What the sync and async clusters share: config, node table, metrics."""

    def __init__(self, config: TopologyConfig | None = None, /, **settings: Any) -> None:
        if config is None:
            config = load_config(environ={}, **settings)
        elif settings:
            raise TypeError("pass either a TopologyConfig or keyword settings, not both")
        self.config: TopologyConfig = config
        self.metrics = Metrics()
        self._nodes = {node.name: node for node in configured_nodes(config)}
        self._lock = threading.Lock()
        self._closed = False

    @classmethod
    def from_config(cls, path: str | os.PathLike[str], **overrides: Any) -> Self:
        """Build from a TOML file (e.g. the ``dbscale.toml`` written by ``dbscale up``).

        ``DBSCALE_*`` environment variables and ``overrides`` take precedence over the file.
        """
        return cls(load_config(path, **overrides))

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Self:
        """Build from ``DBSCALE_*`` environment variables (and the file named by ``DBSCALE_CONFIG``)."""
        return cls(load_config(environ=os.environ if environ is None else environ))

    @property
    def nodes(self) -> list[NodeRef]:
        """Every configured PostgreSQL endpoint."""
        return list(self._nodes.values())

    def node(self, name: str) -> NodeRef:
        """The node called ``name``; the error lists the known names."""
        try:
            return self._nodes[name]
        except KeyError:
            raise ConfigError(f"no node named {name!r} (known: {', '.join(self._nodes)})") from None

    def metrics_snapshot(self) -> dict[str, list[dict[str, Any]]]:
        """Plain-data view of every metric this cluster recorded (see :meth:`Metrics.snapshot`)."""
        return self.metrics.snapshot()

    def _engine_options(self, node: NodeRef) -> dict[str, Any]:
        pool = self.config.group(node.group).pool
        return engine_options(pool, via_pgbouncer=node.role == "pgbouncer")

    def _check_open(self) -> None:
        if self._closed:
            raise RuntimeError("this cluster is closed; create a new one")

    def __repr__(self) -> str:
        return f"{type(self).__name__}(groups={list(self.config.groups)}, nodes={list(self._nodes)})"


class Cluster(_ClusterBase):
    """A synchronous cluster. Use as a context manager, or call :meth:`close`.

    >>> cluster = Cluster.from_config(".dbscale/dbscale.toml")  # doctest: +SKIP
    """

    def __init__(self, config: TopologyConfig | None = None, /, **settings: Any) -> None:
        super().__init__(config, **settings)
        self._engines: dict[str, Engine] = {}

    def engine(self, name: str) -> Engine:
        """The SQLAlchemy engine of node ``name``, created on first use."""
        self._check_open()
        engine = self._engines.get(name)
        if engine is not None:
            return engine
        node = self.node(name)
        with self._lock:
            engine = self._engines.get(name)
            if engine is None:
                engine = create_engine(sqlalchemy_url(node.url), **self._engine_options(node))
                self._engines[name] = engine
        return engine

    def close(self) -> None:
        """Dispose every engine (closing pooled connections). Idempotent."""
        with self._lock:
            engines, self._engines = list(self._engines.values()), {}
            self._closed = True
        for engine in engines:
            engine.dispose()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


class AsyncCluster(_ClusterBase):
    """An asyncio cluster (psycopg's async driver). Use ``async with``, or ``await close()``."""

    def __init__(self, config: TopologyConfig | None = None, /, **settings: Any) -> None:
        super().__init__(config, **settings)
        self._engines: dict[str, AsyncEngine] = {}

    def engine(self, name: str) -> AsyncEngine:
        """The async SQLAlchemy engine of node ``name``, created on first use."""
        self._check_open()
        engine = self._engines.get(name)
        if engine is not None:
            return engine
        node = self.node(name)
        with self._lock:
            engine = self._engines.get(name)
            if engine is None:
                url = sqlalchemy_url(node.url, async_=True)
                engine = create_async_engine(url, **self._engine_options(node))
                self._engines[name] = engine
        return engine

    async def close(self) -> None:
        """Dispose every engine. Idempotent."""
        with self._lock:
            engines, self._engines = list(self._engines.values()), {}
            self._closed = True
        for engine in engines:
            await engine.dispose()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()
