"""The cluster an application holds: the topology config, the engines, the routers, the cache, the metrics.

One engine per node and one router per group, created on first use; everything counts into one
metrics registry. ``cluster_aio.py`` (asyncio) is the source; ``cluster_sync.py`` is generated from
it by ``scripts/unasync.py``; what both share is in ``cluster_base.py``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from contextlib import AbstractAsyncContextManager
from types import TracebackType
from typing import TYPE_CHECKING, Any, Self

from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, AsyncSession, create_async_engine

from dbscale._compat import AWorkers
from dbscale.cluster_base import _NO_KEY, ClusterBase, renew_pool
from dbscale.config import TopologyConfig, sqlalchemy_url
from dbscale.errors import ConfigError
from dbscale.forks import inherit
from dbscale.routing.aio import AsyncGroupRouter, AsyncReadConnection
from dbscale.routing.park import AsyncParkingPool
from dbscale.routing.settings import instrument_engine
from dbscale.sharding.fanout import FanoutResult
from dbscale.sharding.ids import next_id_function_sql
from dbscale.sharding.router_aio import AsyncShard, fanout, row_estimate
from dbscale.sharding.scatter import Aggregate, FanoutPlan, OrderKey

if TYPE_CHECKING:  # the cache (Redis) and the event log are imported on first use: `dbscale load` needs neither
    from sqlalchemy import Executable

    from dbscale.cache import AsyncCache
    from dbscale.cqrs.log_aio import AsyncEventLog


class AsyncCluster(ClusterBase):
    """A cluster for asyncio code (psycopg's async driver). Use ``async with``, or ``await close()``.

    >>> cluster = AsyncCluster.from_config(".dbscale/dbscale.toml")  # doctest: +SKIP
    """

    def __init__(self, config: TopologyConfig | None = None, /, **settings: Any) -> None:
        super().__init__(config, **settings)
        self._engines: dict[tuple[str, bool], AsyncEngine] = {}
        self._routers: dict[str, AsyncGroupRouter] = {}
        self._cache: dict[None, AsyncCache] = {}  # at most one, made on first use (a dict for _memo)
        self._events: dict[None, AsyncEventLog] = {}
        self._fanout_workers: dict[None, AWorkers] = {}

    def engine(self, name: str, *, read_only: bool = False) -> AsyncEngine:
        """The SQLAlchemy engine of node ``name``, created on first use (``read_only``: a separate pool
        whose transactions are all read-only)."""
        self._check_open()

        def make() -> AsyncEngine:
            node = self.node(name)
            options = self._engine_options(node, read_only)
            if read_only:  # reads park their idle connections in front of the pool (dbscale.routing.park)
                options["poolclass"] = AsyncParkingPool
            engine = create_async_engine(sqlalchemy_url(node.url, async_=True), **options)
            instrument_engine(engine.sync_engine, self.metrics, node.group, name)
            self._install_ping(engine.sync_engine, node)
            return engine

        return self._memo(self._engines, (name, read_only), make)

    # -- read/write routing (dbscale.routing) ------------------------------------------------------
    def router(self, group: str | None = None) -> AsyncGroupRouter:
        """The router of ``group`` (default :meth:`default_group`), created on first use."""
        name = group or self.default_group()
        return self._memo(
            self._routers, name, lambda: AsyncGroupRouter(self._router_wiring(name), engine_for=self.engine)
        )

    def write(self, group: str | None = None) -> AbstractAsyncContextManager[AsyncConnection]:
        """``async with cluster.write() as conn``: one transaction on the group's primary.

        Commits on success and records the causal token; rolls back on error. Never retried.
        Raises :class:`~dbscale.PrimaryUnavailable` when no writer is known within ``write_timeout``.
        """
        return self.router(group).write()

    def read(
        self, after: str | None = None, *, group: str | None = None, snapshot: bool = False
    ) -> AbstractAsyncContextManager[AsyncReadConnection]:
        """``async with cluster.read() as conn``: a read-only connection on a replica chosen by policy.

        The replica is healthy, within ``max_lag`` and, after a write in this context (or with a
        carried ``after`` token), has replayed that write; otherwise the read goes to the primary.
        Each statement runs on its own (autocommit, one round trip for a one-statement read);
        ``snapshot=True`` runs them all in one ``REPEATABLE READ`` read-only transaction instead.
        """
        router = self.router(group)
        return router.read(self._causal.mark_for(router.name, after), snapshot=snapshot)

    def session(
        self, write: bool = False, *, after: str | None = None, group: str | None = None
    ) -> AbstractAsyncContextManager[AsyncSession]:
        """An ORM session on the write transaction (``write=True``) or on a routed read.

        A read session goes where :meth:`read` would (``after`` as there) and runs in one read-only
        ``REPEATABLE READ`` transaction (one snapshot, like ``read(snapshot=True)``). A connection
        error before its first statement returned bans the node, rolls the session back and runs the
        statement again on another node, once; after that the session stays on its node and errors
        propagate, as they do for statements run on ``session.connection()``.
        ``session.info["dbscale_node"]`` names the node.
        """
        router = self.router(group)
        return router.session(write, self._causal.mark_for(router.name, after))

    async def start(self) -> None:
        """Start the health monitor of every group now (otherwise it starts on first use)."""
        for group in self.config.groups:
            await self.router(group).ensure_started()

    async def refresh(self, group: str | None = None) -> None:
        """Run one health-check round now (every group, or ``group``), in the calling thread or task."""
        for name in [group] if group else list(self.config.groups):
            await self.router(name).monitor.run_round()

    async def wait_replicated(self, group: str | None = None, *, timeout: float = 30.0) -> list[str]:
        """Wait until every replica of ``group`` (default: the default group) that serves reads has replayed
        everything its writer had flushed when this was called (every commit made before the call, but an
        asynchronous one, ``synchronous_commit = off``, the WAL writer has not flushed yet); return those replicas' names.

        For after a bulk load or a migration, before traffic that reads from replicas: a causal token
        (``read(after=...)``) makes one reader see one write, this makes every replica see all of them.
        Replicas that are down or banned serve no reads and are not waited for. Raises
        :class:`~dbscale.ReplicationTimeout` naming each replica still behind after ``timeout`` seconds.
        """
        if not timeout > 0:
            raise ConfigError(f"timeout={timeout!r}: give the seconds to wait, above 0 (e.g. 30)")
        return await self.router(group).wait_replicated(timeout)

    async def routing_status(self) -> list[dict[str, Any]]:
        """Per node: group, role, health, lag, reads, writes, bans (runs a check round if none ran)."""
        rows: list[dict[str, Any]] = []
        for group in self.config.groups:
            router = self.router(group)
            if router.state.rounds == 0:
                await router.monitor.run_round()
            rows.extend(router.status())
        return rows

    @property
    def cache(self) -> AsyncCache:
        """The tiered cache (L1 + Redis) from ``config.cache``, counting into :attr:`metrics`."""
        self._check_open()

        def make() -> AsyncCache:
            from dbscale.cache import AsyncCache
            from dbscale.cache.core import CacheCore
            from dbscale.causality import AsyncClusterCausality

            core = CacheCore(self.config.cache, self.metrics, causality=AsyncClusterCausality(self))
            core.owner = self  # write-through/behind and invalidate_on_commit write through this cluster
            return AsyncCache(core=core)

        return self._memo(self._cache, None, make)

    @property
    def events(self) -> AsyncEventLog:
        """The CQRS event log on the default group's primary (:mod:`dbscale.cqrs`)."""
        self._check_open()
        from dbscale.cqrs.log_aio import AsyncEventLog

        return self._memo(self._events, None, lambda: AsyncEventLog(self))

    async def install(self) -> None:
        """Create dbscale's tables (the event log, projector checkpoints, dead letters) and, with
        ``[sharding]``, the global-ID function ``dbscale_next_id()`` on every shard group. Idempotent."""
        await self.events.install()
        if self.config.sharding is not None:
            await self.install_id_functions()

    # -- sharding (dbscale.sharding) ---------------------------------------------------------------
    def shard(self, entity_or_key: Any, key: Any = _NO_KEY) -> AsyncShard:
        """The shard group owning a key, as a handle: ``cluster.shard("orders", user_id).write()``.

        ``shard(key)`` uses the default ``[sharding]`` scheme. The handle's ``write()``, ``read(after=)``
        and ``session()`` go through that group's router (replicas, lag, causal tokens, bans).
        """
        return AsyncShard(self, self.shard_for(entity_or_key, key))

    async def fanout(
        self,
        stmt: str | Executable,
        params: Mapping[str, Any] | None = None,
        *,
        order_by: Sequence[OrderKey | str | Sequence[str]] | str | None = None,
        limit: int | None = None,
        offset: int = 0,
        aggregate: Sequence[Aggregate] | None = None,
        group_by: Sequence[str] | str | None = None,
        columns: Sequence[str] | None = None,
        allow_partial: bool = False,
        timeout: float | None = None,
        groups: Sequence[str] | None = None,
    ) -> FanoutResult:
        """Run ``stmt`` on every shard group at once and merge the rows as one table would return them.

        Write ``stmt`` without ORDER BY/LIMIT: each group runs it wrapped in ``ORDER BY order_by
        LIMIT offset + limit`` (k-way merge, then the global OFFSET/LIMIT); select every sort column
        and drop helpers with ``columns=``. With ``aggregate=`` (COUNT/SUM/MIN/MAX, AVG from a sum
        and a count) and ``group_by=``, ``stmt`` computes the per-group partials and runs as written.
        Reads are routed (a replica where eligible, causal tokens honoured). A group that fails or
        does not answer within ``timeout`` (default ``[sharding] fanout_timeout``) raises
        :class:`~dbscale.FanoutError` naming it; with ``allow_partial=True`` the result's
        ``missing`` names it instead. Text sort keys need ``COLLATE "C"`` (see :mod:`dbscale.sharding.fanout`).
        """
        sharding = self._sharding()
        plan = FanoutPlan(order_by=[] if order_by is None else order_by, limit=limit, offset=offset,
                          aggregates=aggregate or (), group_by=group_by or (), columns=columns)  # fmt: skip
        every = self.shard_map.groups  # before _memo: it holds the cluster's lock while making
        workers = self._memo(self._fanout_workers, None, lambda: AWorkers(4 * len(every), "dbscale-fanout"))
        return await fanout(
            self,
            workers,
            list(groups or every),
            stmt,
            params,
            plan,
            allow_partial=allow_partial,
            timeout=sharding.fanout_timeout if timeout is None else timeout,
        )

    async def install_id_functions(self) -> None:
        """Create ``dbscale_next_id()`` on every shard group's primary (logical shard = the group's position)."""
        sharding = self._sharding()
        for group in self.shard_map.groups:
            sql = next_id_function_sql(self.shard_map.id_shard(group), epoch=sharding.id_epoch_ms)
            async with self.write(group) as conn:
                # two statements (sequence, function); the driver takes one at a time and formats '%'
                for statement in sql.split(";\n\n", 1):
                    await conn.exec_driver_sql(statement.replace("%", "%%"))

    async def shard_status(self) -> list[dict[str, Any]]:
        """Per shard group: estimated live rows (``pg_stat_user_tables``) and skew (rows / mean rows)."""
        estimates = {group: await row_estimate(self, group) for group in self.shard_map.groups}
        known = [v for v in estimates.values() if v is not None]
        mean = sum(known) / len(known) if known else 0.0
        return [
            {"group": g, "rows": v, "skew": None if v is None or mean == 0 else round(v / mean, 3)}
            for g, v in estimates.items()
        ]

    def _after_fork(self) -> None:
        """In a forked child: new pools, routers' monitors and locks; nothing of the parent's is closed
        (:mod:`dbscale.forks`). No I/O, no lock of the parent's: what needs either is made on first use."""
        super()._after_fork()
        for engine in self._engines.values():
            renew_pool(engine.sync_engine)
        for router in self._routers.values():
            router.after_fork()
        inherit(self._fanout_workers.pop(None, None))  # its threads are the parent's

    async def close(self) -> None:
        """Stop the health monitors and dispose every engine (closing pooled connections). Idempotent."""
        with self._lock:
            engines, self._engines = list(self._engines.values()), {}
            routers, self._routers = list(self._routers.values()), {}
            self._closed = True
            cache = self._cache.pop(None, None)
            workers = self._fanout_workers.pop(None, None)
        if workers is not None:
            workers.close()
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


__all__ = ["AsyncCluster"]
