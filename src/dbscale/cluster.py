"""Cluster: the object an application holds. It owns the topology config, the engines and the metrics.

One SQLAlchemy engine per node, created lazily on first use with the group's pool settings. Engines
that reach a node through PgBouncer (transaction pooling) disable psycopg's prepared statements
(``prepare_threshold=None``), which PgBouncer 1.18 cannot carry across transactions.
"""

from __future__ import annotations

import math
import os
import threading
from collections.abc import Callable, Mapping
from contextlib import AbstractAsyncContextManager, AbstractContextManager
from types import TracebackType
from typing import Any, Self, TypeVar

from sqlalchemy import Connection, Engine, create_engine
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, AsyncSession, create_async_engine
from sqlalchemy.orm import Session

from dbscale.cache import AsyncCache, Cache
from dbscale.cache.core import CacheCore
from dbscale.causality import AsyncClusterCausality, ClusterCausality
from dbscale.config import PoolConfig, TopologyConfig, load_config, sqlalchemy_url
from dbscale.cqrs.log import EventLog
from dbscale.cqrs.log_aio import AsyncEventLog
from dbscale.errors import ConfigError
from dbscale.metrics import Metrics
from dbscale.routing.aio import AsyncGroupRouter, AsyncReadConnection
from dbscale.routing.context import CausalContext
from dbscale.routing.pool import install_idle_ping
from dbscale.routing.router import GroupRouter, ReadConnection
from dbscale.routing.settings import instrument_engine, router_arguments
from dbscale.topology import NodeRef, configured_nodes

_K = TypeVar("_K")
_V = TypeVar("_V")


def engine_options(pool: PoolConfig, *, via_pgbouncer: bool, read_only: bool = False) -> dict[str, Any]:
    """Keyword arguments for ``create_engine`` from a group's pool settings.

    A ``read_only`` engine's sessions start with ``default_transaction_read_only = on``, so every
    transaction on it is read-only at no per-transaction cost (reads use these engines), and run in
    autocommit: a one-statement read is one round trip, no ``BEGIN``/``ROLLBACK`` around it (a read
    that needs one snapshot asks for a transaction, see ``read(snapshot=True)``). SQLAlchemy's
    ``pool_pre_ping`` (a round trip per checkout) stays off: ``pre_ping`` installs the idle-window
    ping of :func:`dbscale.routing.pool.install_idle_ping` instead.
    """
    connect_args: dict[str, Any] = {"connect_timeout": max(1, round(pool.connect_timeout))}
    if via_pgbouncer:
        connect_args["prepare_threshold"] = None
    if read_only:
        connect_args["options"] = "-c default_transaction_read_only=on"
    options: dict[str, Any] = {
        "pool_size": pool.pool_size,
        "max_overflow": pool.max_overflow,
        "pool_timeout": pool.pool_timeout,
        "pool_recycle": int(pool.pool_recycle),
        "pool_pre_ping": False,
        "connect_args": connect_args,
    }
    if read_only:
        options["isolation_level"] = "AUTOCOMMIT"
    return options


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
        self._causal = CausalContext()

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

    def default_group(self) -> str:
        """The group used when none is named: ``main`` if configured, else the only group."""
        if "main" in self.config.groups or len(self.config.groups) != 1:
            return "main"
        return next(iter(self.config.groups))

    def causal_token(self, group: str | None = None) -> str | None:
        """This context's read-your-writes token (e.g. ``"main/0/3000060"``), or None before any write.

        Carry it to a later request (cookie or header) and pass it to ``read(after=token)``; it names
        the group, so a token from another group or topology is ignored rather than misapplied.
        """
        return self._causal.token(group)

    def causal_scope(self, token: str | None = None) -> AbstractContextManager[str | None]:
        """``with cluster.causal_scope(token):`` — every read in the block honours ``token``.

        For a web request that arrives with a token (cookie or header): a plain :meth:`read` (or
        read :meth:`session`, or a cache fill) anywhere in the request sees the writes the token
        names, without passing ``after=`` around. Inside the block :meth:`causal_token` returns
        the token, moved forward by the block's own writes (send that one back with the response);
        when the block ends, the context's previous marks are restored. A plain ``with`` for both
        :class:`Cluster` and :class:`AsyncCluster` (it only sets a context variable, so it follows
        the thread or asyncio task). ``None`` runs the block with no marks; a malformed token
        raises :class:`~dbscale.InvalidCausalToken`.
        """
        return self._causal.scope(token)

    def reset_causal(self) -> None:
        """Forget this context's causal marks (e.g. at the start of each web request)."""
        self._causal.clear()

    def _router_args(self, group: str) -> dict[str, Any]:
        self._check_open()
        return router_arguments(group, self.config.group(group), self.metrics, self._causal)

    def _engine_options(self, node: NodeRef, read_only: bool) -> dict[str, Any]:
        group = self.config.group(node.group)
        options = engine_options(group.pool, via_pgbouncer=node.role == "pgbouncer", read_only=read_only)
        if not read_only:  # the write engine: a write gives up within write_timeout, connecting included
            args = options["connect_args"]
            args["connect_timeout"] = max(1, min(args["connect_timeout"], math.ceil(group.write_timeout)))
        return options

    def _install_ping(self, engine: Engine, node: NodeRef) -> None:
        pool = self.config.group(node.group).pool
        if pool.pre_ping:
            install_idle_ping(engine, pool.ping_idle)

    def _check_open(self) -> None:
        if self._closed:
            raise RuntimeError("this cluster is closed; create a new one")

    def _memo(self, table: dict[_K, _V], key: _K, make: Callable[[], _V]) -> _V:
        """``table[key]``, made once under the cluster's lock on first use."""
        value = table.get(key)
        if value is None:
            with self._lock:
                value = table.get(key)
                if value is None:
                    value = table[key] = make()
        return value

    def __repr__(self) -> str:
        return f"{type(self).__name__}(groups={list(self.config.groups)}, nodes={list(self._nodes)})"


class Cluster(_ClusterBase):
    """A synchronous cluster. Use as a context manager, or call :meth:`close`.

    >>> cluster = Cluster.from_config(".dbscale/dbscale.toml")  # doctest: +SKIP
    """

    def __init__(self, config: TopologyConfig | None = None, /, **settings: Any) -> None:
        super().__init__(config, **settings)
        self._engines: dict[tuple[str, bool], Engine] = {}
        self._routers: dict[str, GroupRouter] = {}
        self._cache: dict[None, Cache] = {}  # at most one, made on first use (a dict for _memo)
        self._events: dict[None, EventLog] = {}

    def engine(self, name: str, *, read_only: bool = False) -> Engine:
        """The SQLAlchemy engine of node ``name``, created on first use (``read_only``: a separate pool
        whose transactions are all read-only)."""
        self._check_open()

        def make() -> Engine:
            node = self.node(name)
            engine = create_engine(sqlalchemy_url(node.url), **self._engine_options(node, read_only))
            instrument_engine(engine, self.metrics, node.group, name)
            self._install_ping(engine, node)
            return engine

        return self._memo(self._engines, (name, read_only), make)

    # -- read/write routing (dbscale.routing) ------------------------------------------------------
    def router(self, group: str | None = None) -> GroupRouter:
        """The router of ``group`` (default :meth:`default_group`), created on first use."""
        name = group or self.default_group()
        return self._memo(self._routers, name, lambda: GroupRouter(**self._router_args(name), engine_for=self.engine))

    def write(self, group: str | None = None) -> AbstractContextManager[Connection]:
        """``with cluster.write() as conn``: one transaction on the group's primary.

        Commits on success and records the causal token; rolls back on error. Never retried.
        Raises :class:`~dbscale.PrimaryUnavailable` when no writer is known within ``write_timeout``.
        """
        return self.router(group).write()

    def read(
        self, after: str | None = None, *, group: str | None = None, snapshot: bool = False
    ) -> AbstractContextManager[ReadConnection]:
        """``with cluster.read() as conn``: a read-only connection on a replica chosen by policy.

        The replica is healthy, within ``max_lag`` and, after a write in this context (or with a
        carried ``after`` token), has replayed that write; otherwise the read goes to the primary.
        Each statement runs on its own (autocommit, one round trip for a one-statement read);
        ``snapshot=True`` runs them all in one ``REPEATABLE READ`` read-only transaction instead.
        """
        router = self.router(group)
        return router.read(self._causal.mark_for(router.name, after), snapshot=snapshot)

    def session(
        self, write: bool = False, *, after: str | None = None, group: str | None = None
    ) -> AbstractContextManager[Session]:
        """An ORM ``Session`` on the write transaction (``write=True``) or on a routed read.

        A read session goes where :meth:`read` would (``after`` as there) and runs in one read-only
        ``REPEATABLE READ`` transaction (one snapshot, like ``read(snapshot=True)``). A connection
        error before its first statement returned bans the node, rolls the session back and runs the
        statement again on another node, once; after that the session stays on its node and errors
        propagate, as they do for statements run on ``session.connection()``. ``session.info["dbscale_node"]`` names the node.
        """
        router = self.router(group)
        return router.session(write, self._causal.mark_for(router.name, after))

    def start(self) -> None:
        """Start the health monitor of every group now (otherwise it starts on first use)."""
        for group in self.config.groups:
            self.router(group).ensure_started()

    def refresh(self, group: str | None = None) -> None:
        """Run one health-check round now (every group, or ``group``), in the calling thread."""
        for name in [group] if group else list(self.config.groups):
            self.router(name).monitor.run_round()

    def routing_status(self) -> list[dict[str, Any]]:
        """Per node: group, role, health, lag, reads, writes, bans (runs a check round if none ran)."""
        rows: list[dict[str, Any]] = []
        for group in self.config.groups:
            router = self.router(group)
            if router.state.rounds == 0:
                router.monitor.run_round()
            rows.extend(router.status())
        return rows

    @property
    def cache(self) -> Cache:
        """The tiered cache (L1 + Redis) from ``config.cache``, counting into :attr:`metrics`."""
        self._check_open()
        return self._memo(
            self._cache,
            None,
            lambda: Cache(core=CacheCore(self.config.cache, self.metrics, causality=ClusterCausality(self))),
        )

    @property
    def events(self) -> EventLog:
        """The CQRS event log on the default group's primary (:mod:`dbscale.cqrs`)."""
        self._check_open()
        return self._memo(self._events, None, lambda: EventLog(self))

    def install(self) -> None:
        """Create dbscale's tables (the event log, projector checkpoints, dead letters). Idempotent."""
        self.events.install()

    def close(self) -> None:
        """Stop the health monitors and dispose every engine (closing pooled connections). Idempotent."""
        with self._lock:
            engines, self._engines = list(self._engines.values()), {}
            routers, self._routers = list(self._routers.values()), {}
            self._closed = True
            cache = self._cache.pop(None, None)
        if cache is not None:
            cache.close()
        for router in routers:
            router.close()
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
        self._engines: dict[tuple[str, bool], AsyncEngine] = {}
        self._routers: dict[str, AsyncGroupRouter] = {}
        self._cache: dict[None, AsyncCache] = {}  # at most one, made on first use (a dict for _memo)
        self._events: dict[None, AsyncEventLog] = {}

    def engine(self, name: str, *, read_only: bool = False) -> AsyncEngine:
        """The async SQLAlchemy engine of node ``name``, created on first use (see :meth:`Cluster.engine`)."""
        self._check_open()

        def make() -> AsyncEngine:
            node = self.node(name)
            url = sqlalchemy_url(node.url, async_=True)
            engine = create_async_engine(url, **self._engine_options(node, read_only))
            instrument_engine(engine.sync_engine, self.metrics, node.group, name)
            self._install_ping(engine.sync_engine, node)
            return engine

        return self._memo(self._engines, (name, read_only), make)

    # -- read/write routing (dbscale.routing) ------------------------------------------------------
    def router(self, group: str | None = None) -> AsyncGroupRouter:
        """The router of ``group`` (default :meth:`default_group`), created on first use."""
        name = group or self.default_group()
        return self._memo(
            self._routers, name, lambda: AsyncGroupRouter(**self._router_args(name), engine_for=self.engine)
        )

    def write(self, group: str | None = None) -> AbstractAsyncContextManager[AsyncConnection]:
        """``async with acl.write() as conn``: one transaction on the primary (see :meth:`Cluster.write`)."""
        return self.router(group).write()

    def read(
        self, after: str | None = None, *, group: str | None = None, snapshot: bool = False
    ) -> AbstractAsyncContextManager[AsyncReadConnection]:
        """``async with acl.read() as conn``: a routed read-only connection (see :meth:`Cluster.read`)."""
        router = self.router(group)
        return router.read(self._causal.mark_for(router.name, after), snapshot=snapshot)

    def session(
        self, write: bool = False, *, after: str | None = None, group: str | None = None
    ) -> AbstractAsyncContextManager[AsyncSession]:
        """An ``AsyncSession`` on the write transaction or a routed read (see :meth:`Cluster.session`)."""
        router = self.router(group)
        return router.session(write, self._causal.mark_for(router.name, after))

    async def start(self) -> None:
        """Start the health monitor task of every group on the running loop."""
        for group in self.config.groups:
            await self.router(group).ensure_started()

    async def refresh(self, group: str | None = None) -> None:
        """Run one health-check round now (every group, or ``group``)."""
        for name in [group] if group else list(self.config.groups):
            await self.router(name).monitor.run_round()

    async def routing_status(self) -> list[dict[str, Any]]:
        """Per node: group, role, health, lag, reads, writes, bans (see :meth:`Cluster.routing_status`)."""
        rows: list[dict[str, Any]] = []
        for group in self.config.groups:
            router = self.router(group)
            if router.state.rounds == 0:
                await router.monitor.run_round()
            rows.extend(router.status())
        return rows

    @property
    def cache(self) -> AsyncCache:
        """The tiered asyncio cache (L1 + Redis) from ``config.cache``, counting into :attr:`metrics`."""
        self._check_open()
        return self._memo(
            self._cache,
            None,
            lambda: AsyncCache(core=CacheCore(self.config.cache, self.metrics, causality=AsyncClusterCausality(self))),
        )

    @property
    def events(self) -> AsyncEventLog:
        """The CQRS event log on the default group's primary (see :attr:`Cluster.events`)."""
        self._check_open()
        return self._memo(self._events, None, lambda: AsyncEventLog(self))

    async def install(self) -> None:
        """Create dbscale's tables (see :meth:`Cluster.install`). Idempotent."""
        await self.events.install()

    async def close(self) -> None:
        """Stop the health monitors and dispose every engine. Idempotent."""
        with self._lock:
            engines, self._engines = list(self._engines.values()), {}
            routers, self._routers = list(self._routers.values()), {}
            self._closed = True
            cache = self._cache.pop(None, None)
        if cache is not None:
            await cache.close()
        for router in routers:
            await router.close()
        for engine in engines:
            await engine.dispose()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()
