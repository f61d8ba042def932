"""What the sync and async clusters share: the config, the node table, the metrics, engine options.

One SQLAlchemy engine per node, created lazily on first use with the group's pool settings. Engines
that reach a node through PgBouncer (transaction pooling) disable psycopg's prepared statements
(``prepare_threshold=None``), which PgBouncer 1.18 cannot carry across transactions.
"""

from __future__ import annotations

import math
import os
import threading
from collections.abc import Callable, Mapping
from contextlib import AbstractContextManager
from typing import Any, Self, TypeVar

from sqlalchemy import Engine

from dbscale.config import PoolConfig, ShardingConfig, TopologyConfig, load_config
from dbscale.errors import ClusterClosed, ConfigError
from dbscale.forks import AtFork, inherit
from dbscale.metrics import Metrics
from dbscale.routing.context import CausalContext
from dbscale.routing.pool import install_idle_ping
from dbscale.routing.settings import RouterWiring, router_wiring
from dbscale.sharding.placement import Key
from dbscale.sharding.shardmap import ShardMap, shard_map_of
from dbscale.topology import NodeRef, configured_nodes

_K = TypeVar("_K")
_V = TypeVar("_V")
#: ``shard(key)`` / ``shard_for(key)``: no entity named, the default scheme places the key.
_NO_KEY: Any = object()


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


class ClusterBase:
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
        self._shard_maps: dict[None, ShardMap] = {}
        _clusters.add(self)

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
        return self.config.default_group()

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

    # -- sharding (dbscale.sharding): the pure decisions; the I/O is in cluster_aio / sharding.router_aio --
    @property
    def shard_map(self) -> ShardMap:
        """The shard map built from ``[sharding]`` (raises :class:`~dbscale.ConfigError` without one)."""
        return self._memo(self._shard_maps, None, lambda: shard_map_of(self._sharding()))

    def shard_for(self, entity_or_key: Any, key: Any = _NO_KEY) -> str:
        """The shard group owning a key: ``shard_for("orders", user_id)``, or ``shard_for(key)`` (default scheme)."""
        entity, shard_key = _entity_and_key(entity_or_key, key)
        return self.shard_map.group_for(entity, shard_key)

    def shard_of(self, global_id: int) -> str:
        """The shard group whose ``dbscale_next_id()`` made ``global_id`` (see :func:`dbscale.sharding.shard_of_id`)."""
        return self.shard_map.group_of_id(global_id)

    def _sharding(self) -> ShardingConfig:
        return self.config.sharding_section()

    def _router_wiring(self, group: str) -> RouterWiring:
        self._check_open()
        return router_wiring(group, self.config.group(group), self.metrics, self._causal)

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

    def _after_fork(self) -> None:
        """In a forked child (:mod:`dbscale.forks`): new locks (a parent's thread may have held one)."""
        self._lock = threading.Lock()
        self.metrics.after_fork()

    def _check_open(self) -> None:
        if self._closed:
            raise ClusterClosed("this cluster is closed; create a new one")

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


def renew_pool(engine: Engine) -> None:
    """Give ``engine`` a new, empty pool in a forked child, leaving the parent's connections untouched.

    SQLAlchemy's ``dispose(close=False)`` for a child process; the old pool, with the connections
    parked in front of it, is kept referenced (:func:`dbscale.forks.inherit`), so none of them is
    checked in, reset or closed in the child. The new pool keeps the idle-ping window (its listeners).
    """
    inherit(engine.pool)
    engine.dispose(close=False)


def _reset_after_fork(cluster: ClusterBase) -> None:
    cluster._after_fork()


#: Every cluster not yet collected: reset in a forked child before the child can use it.
_clusters: AtFork[ClusterBase] = AtFork(_reset_after_fork)


def _entity_and_key(entity_or_key: Any, key: Any) -> tuple[str | None, Key]:
    if key is _NO_KEY:
        return None, entity_or_key
    if not isinstance(entity_or_key, str):
        raise ConfigError(f"shard({entity_or_key!r}, {key!r}): the first of two arguments names an entity (a str)")
    return entity_or_key, key


__all__ = ["ClusterBase", "engine_options", "renew_pool", "shard_map_of"]
