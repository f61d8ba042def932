"""The asyncio group router: ``read()``, ``write()`` and ``session()`` over the pure core.

Theory of operation: every call asks the core (:mod:`dbscale.routing.core`) for a decision from the
current snapshot, then acts: check out a pooled connection, verify a causal LSN inline when the
snapshot cannot vouch for the replica, retry a read once on another node after a connection error,
and fold what it learned (bans, replay positions) back into the snapshot.

One source, two flavours: the asyncio router (:mod:`dbscale.routing.aio`) is written by hand, and
the synchronous one (:mod:`dbscale.routing.router`) is generated from it by ``scripts/unasync.py``,
which renames the asyncio constructs and APIs to their blocking twins; CI fails if the generated
file is stale. Edit ``aio.py``, then run ``python scripts/unasync.py``.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager, suppress
from typing import TYPE_CHECKING, Any

import psycopg
from psycopg.pq import TransactionStatus
from sqlalchemy import Connection, Executable, event
from sqlalchemy import exc as sa_exc
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, AsyncSession
from sqlalchemy.orm import ORMExecuteState, Session
from sqlalchemy.pool import PoolProxiedConnection
from sqlalchemy.util import await_only, greenlet_spawn

from dbscale.errors import NodeUnavailable, NoReplicaAvailable, PrimaryUnavailable, ReplicationTimeout
from dbscale.forks import inherit
from dbscale.routing.context import CommitHooks, arun_hooks
from dbscale.routing.core import ReadPlan, primary_down, replicas_serving, replication_behind
from dbscale.routing.errors import (
    PoolTimeout,
    describe,
    failure_kind,
    is_connection_error,
    is_read_only_error,
    refusal_reason,
)
from dbscale.routing.fast import columns_of, prepare, result, translate
from dbscale.routing.group import GroupRouterBase
from dbscale.routing.lsn import Mark, parse_lsn, record_boundary
from dbscale.routing.monitor_aio import AsyncMonitor
from dbscale.routing.orm import NODE_KEY, ReadSession
from dbscale.routing.park import drop_parked
from dbscale.routing.quick import checkin_idle, checkout_without_io

REPLAY_LSN_SQL = "SELECT pg_last_wal_replay_lsn()::text"
INSERT_LSN_SQL = "SELECT pg_current_wal_insert_lsn()::text"
#: What a replica can be waited for: WAL reaches it only once flushed, and an inserted record that no
#: commit flushes (a checkpointer's or bgwriter's) may sit unflushed, and unsent, for a long time.
FLUSH_LSN_SQL = "SELECT pg_current_wal_flush_lsn()::text"
#: Sent as one message at the end of a write (see ``AsyncGroupRouter._commit``).
COMMIT_SQL = f"SELECT pg_current_xact_id_if_assigned() IS NOT NULL; COMMIT; {INSERT_LSN_SQL}"
READY_SQL = "SELECT 1"
INTRANS = TransactionStatus.INTRANS.value
#: The attribute of a psycopg connection holding the cursor the fast path reuses on it (see :func:`run_fast`):
#: a cursor is made per connection, not per statement, which saves its setup (adapters map, transformer)
#: and the loaders it looks up. As psycopg documents for any cursor, adapters registered on the
#: connection after the cursor was made do not reach it: register them in a ``connect`` event.
CURSOR_ATTR = "_dbscale_cursor"
#: A result of more rows than this is not kept referenced by the reused cursor between statements.
KEEP_ROWS = 100

if TYPE_CHECKING:
    from dbscale.routing.settings import RouterWiring


class AsyncGroupRouter(GroupRouterBase):
    """Routes one group's reads and writes. Built by :class:`dbscale.AsyncCluster`; use its methods."""

    def __init__(self, wiring: RouterWiring, *, engine_for: Callable[..., AsyncEngine]) -> None:
        super().__init__(wiring.name, wiring.settings, wiring.metrics, write_timeout=wiring.write_timeout)
        self.engine_for = engine_for
        self._engines: dict[tuple[str, bool], AsyncEngine] = {}
        self._record = wiring.record
        self.monitor = AsyncMonitor(self, wiring.monitor_urls, wiring.check_timeout)
        self._started = False

    async def ensure_started(self) -> None:
        """Start the health monitor on first use and wait briefly for its first round."""
        if not self._started:
            self._started = True
            await self.monitor.start(wait=self.monitor.timeout + 1.0)

    async def close(self) -> None:
        """Stop the health monitor."""
        await self.monitor.stop()

    def after_fork(self) -> None:
        """In a forked child (:mod:`dbscale.forks`): a new monitor, started on first use, and a new lock.

        The parent's monitor (its runner is gone, its connections are the parent's) is kept, untouched;
        reads the parent had in flight are not counted here. Assignments only (no I/O, no lock taken).
        """
        inherit(self.monitor)
        self.monitor = self.monitor.renewed()
        self._lock = threading.Lock()  # GroupRouterBase's, maybe held by a parent's thread at the fork
        self._outstanding = dict.fromkeys(self._outstanding, 0)
        self._started = False

    # -- connections ------------------------------------------------------------------------------
    def engine(self, node: str, read_only: bool) -> AsyncEngine:
        """The engine of ``node`` (its read-only twin for reads), made on first use."""
        engine = self._engines.get((node, read_only))
        if engine is None:
            engine = self._engines[node, read_only] = self.engine_for(node, read_only=read_only)
        return engine

    async def connect(self, node: str, *, read_only: bool = False, begin: bool = False) -> AsyncConnection:
        """Check out a pooled connection to ``node``; count waits, translate pool errors; ``begin`` a transaction."""
        engine, fairy = self.engine(node, read_only), await self.checkout(node, read_only)
        conn = AsyncWriteConnection(engine, Connection(engine.sync_engine, connection=fairy))
        if begin:
            sync = conn.sync_connection
            assert sync is not None
            if sync._has_events:  # a ``begin`` listener may do I/O
                await conn.begin()
            else:
                sync.begin()  # no I/O: psycopg sends BEGIN with the first statement
        return conn

    async def checkout(self, node: str, read_only: bool) -> PoolProxiedConnection:
        """A pooled DBAPI connection to ``node`` (no SQLAlchemy ``Connection`` around it); count waits, translate pool errors.

        Under asyncio, without SQLAlchemy's greenlet when the checkout needs no I/O (:mod:`dbscale.routing.quick`).
        """
        started = time.perf_counter()
        engine = self.engine(node, read_only)
        try:
            pool = engine.sync_engine.pool
            fairy = checkout_without_io(pool)
            if fairy is None:
                fairy = await greenlet_spawn(pool.connect)
        except sa_exc.TimeoutError as exc:
            self.metrics.pool_timeout(node)
            raise PoolTimeout(f"{node}: no pooled connection free within pool_timeout; raise pool_size") from exc
        except psycopg.Error as exc:  # connecting failed: raised as SQLAlchemy's engine.connect() raises it
            raise translate(exc, None, None, is_connection_error(exc)) from exc
        waited = time.perf_counter() - started
        if waited > 0.001:
            self.metrics.pool_wait(node, waited)
        return fairy

    async def replay_lsn(self, conn: AsyncConnection) -> int:
        """The replay position of the replica behind ``conn``."""
        value = (await conn.exec_driver_sql(REPLAY_LSN_SQL)).scalar()
        return parse_lsn(str(value)) if value is not None else 0

    async def verify(self, conn: AsyncConnection, node: str, plan: ReadPlan) -> bool:
        """Whether ``node`` has replayed ``plan.verify_lsn``, waiting up to ``plan.wait`` seconds."""
        assert plan.verify_lsn is not None
        wanted = plan.verify_lsn
        first = seen = await self.replay_lsn(conn)
        if seen >= wanted:
            self.note_replay(node, seen)
            self.metrics.causal["inline"].inc()
            return True
        started = time.perf_counter()
        deadline = started + plan.wait
        step = 0.0005
        while time.perf_counter() < deadline:
            await asyncio.sleep(min(step, max(0.0, deadline - time.perf_counter())))
            step = min(step * 2, 0.005)
            seen = await self.replay_lsn(conn)
            if seen >= wanted:
                self.metrics.causal_wait.observe(time.perf_counter() - started)
                self.note_replay(node, seen)
                self.metrics.causal["waited"].inc()
                await conn.rollback()  # the next statement takes a fresh snapshot
                return True
        if plan.wait:
            self.metrics.causal_wait.observe(time.perf_counter() - started)
        self.note_replay(node, seen)
        if seen == first:
            self.note_stalled(node, seen)
        return False

    async def wait_replicated(self, timeout: float) -> list[str]:
        """Wait until every replica serving reads has replayed what the writer had flushed when called; those replicas.

        See :meth:`dbscale.AsyncCluster.wait_replicated`.
        """
        await self.ensure_started()
        deadline = self.clock() + timeout
        writer = await self.await_writer(deadline)
        conn = await self.connect(writer)
        try:
            wanted = parse_lsn(str((await conn.exec_driver_sql(FLUSH_LSN_SQL)).scalar()))
        finally:
            await asyncio.shield(conn.close())
        replayed: dict[str, int] = {}
        for node in replicas_serving(self.state, self.clock()):
            try:
                conn = await self.connect(node, read_only=True)
                try:
                    step = 0.001
                    while (seen := await self.replay_lsn(conn)) < wanted and self.clock() < deadline:
                        await conn.rollback()
                        await asyncio.sleep(min(step, max(0.0, deadline - self.clock())))
                        step = min(step * 2, 0.05)
                finally:
                    with suppress(sa_exc.SQLAlchemyError):
                        await asyncio.shield(conn.close())
            except (sa_exc.DBAPIError, NodeUnavailable) as exc:  # gone since its last check: banned, serves nothing
                self.note_failure(node, describe(exc))
                continue
            self.note_replay(node, seen)
            replayed[node] = seen
        if any(lsn < wanted for lsn in replayed.values()):
            raise ReplicationTimeout(replication_behind(self.name, wanted, replayed, timeout))
        return list(replayed)

    # -- reads ------------------------------------------------------------------------------------
    def read(self, mark: Mark | None, *, snapshot: bool = False) -> AsyncReadConnection:
        """A connection chosen by policy, for use in ``async with`` (see :meth:`dbscale.AsyncCluster.read`)."""
        return AsyncReadConnection(self, mark, snapshot)

    # -- writes -----------------------------------------------------------------------------------
    async def await_writer(self, deadline: float, last: str | None = None) -> str:
        """The current writer, waiting until ``deadline`` (on :attr:`clock`) for the monitor to find one.

        A primary that refused the configured credentials fails at once (waiting cannot help).
        """
        while True:
            writer = self.writer()
            if writer is not None:
                return writer
            self.check_refused(self.settings.primary)
            remaining = deadline - self.clock()
            if remaining <= 0:
                raise self.no_writer(self.write_timeout, last)
            self.monitor.kick()
            await asyncio.sleep(min(0.05, remaining))

    def _write_failed(
        self, writer: str, target: str, exc: BaseException, what: str, final: bool = True
    ) -> BaseException:
        """Fold a failed write into the state; the exception to raise (``exc`` itself if it is the statement's).

        ``final``: the write ends here (counted in ``write_errors``); not for an attempt that is retried.
        """
        kind = failure_kind(exc)
        if kind == "refused":
            self.metrics.write_errors.inc()
            return self.refused(f"{target}: {refusal_reason(exc)}")
        if is_read_only_error(exc):
            self.note_not_writer(writer)
        elif kind == "connection":
            self.note_failure(target, describe(exc))  # the endpoint alone when the write went through PgBouncer
        elif kind != "not_ready":
            return exc
        self.write_suspect = True
        self.monitor.kick()
        if final:
            self.metrics.write_errors.inc()
        return PrimaryUnavailable(f"group {self.name!r}: {what} on {target} failed ({describe(exc)}); not retried")

    async def _open_write(self) -> tuple[AsyncConnection, str, str]:
        """A connection in a transaction on the writer, as ``(conn, writer, endpoint)``, within write_timeout.

        Until the caller's code runs, failures are waited out: no writer known, a connection error
        (the failed endpoint or node is banned, so the next attempt goes elsewhere or waits for the
        monitor), a writer that is not ready (PgBouncer's ``server_login_retry``, a starting
        server). While :attr:`write_suspect` is set, one round trip proves the session usable first.
        """
        deadline = self.clock() + self.write_timeout
        last: str | None = None
        while True:
            writer = await self.await_writer(deadline, last)
            target = self.write_target(writer)
            conn: AsyncConnection | None = None
            try:
                conn = await self.connect(target, begin=True)
                if self.write_suspect:
                    await conn.exec_driver_sql(READY_SQL)
                return conn, writer, target
            except (sa_exc.DBAPIError, sa_exc.DisconnectionError) as exc:
                if conn is not None:
                    with suppress(sa_exc.SQLAlchemyError):
                        await conn.close()
                mapped = self._write_failed(writer, target, exc, "connecting", final=False)
                if mapped is exc:
                    raise
                if not isinstance(mapped, PrimaryUnavailable):
                    raise mapped from None  # refused: one line, nothing to wait for
                last = f"{target}: {describe(exc)}"
                remaining = deadline - self.clock()
                if remaining <= 0:
                    raise self.no_writer(self.write_timeout, last) from None
                await asyncio.sleep(min(0.05, remaining))
            except BaseException:
                if conn is not None:
                    with suppress(sa_exc.SQLAlchemyError):
                        await asyncio.shield(conn.close())
                raise

    @asynccontextmanager
    async def write(self) -> AsyncIterator[AsyncConnection]:
        """One transaction on the writer (see :meth:`dbscale.AsyncCluster.write`)."""
        await self.ensure_started()
        conn, writer, target = await self._open_write()
        hooks = CommitHooks()  # cache.invalidate_on_commit(...) in the block queues here
        try:
            try:
                yield conn
            except BaseException as exc:
                if conn.in_transaction():
                    try:
                        await conn.rollback()
                    except sa_exc.SQLAlchemyError:  # busy (cancelled mid-COPY) or broken: not pooled again
                        with suppress(sa_exc.SQLAlchemyError):
                            await conn.invalidate()
                mapped = self._write_failed(writer, target, exc, "the transaction")
                if mapped is exc:
                    raise
                raise mapped from exc
            try:
                lsn = await self._commit(conn)
            except sa_exc.DBAPIError as exc:
                raise self._write_failed(writer, target, exc, "COMMIT (outcome unknown)") from exc
            self.write_suspect = False
            self.metrics.writes[writer].inc()
            self._after_commit(lsn)
        finally:
            hooks.close()
            if not conn.closed:
                await asyncio.shield(conn.close())
        await arun_hooks(hooks.queued)  # committed: before write() returns, with the connection back in the pool

    async def _commit(self, conn: AsyncConnection) -> int | None:
        """Commit and close ``conn``; with ``read_your_writes = "lsn"`` also read the causal LSN, in the same round trip.

        One simple-protocol message (:data:`COMMIT_SQL`), which the server runs in order: whether the
        transaction has an xid (wrote anything), ``COMMIT``, then ``pg_current_wal_insert_lsn()`` in
        an implicit transaction of its own, after the commit record was inserted, so at or past its
        end. Returns that LSN, or None when the transaction wrote nothing (no token) or the mode
        needs none. A failed transaction, or one that never reached the server, commits as usual.
        """
        sync = conn.sync_connection
        assert sync is not None
        driver: Any = sync.connection.driver_connection  # no I/O: the transaction holds a valid connection
        if self.settings.read_your_writes != "lsn" or driver.pgconn.transaction_status != INTRANS:
            await greenlet_spawn(settle, sync)
            return None
        try:
            cur = cursor_of(driver)
            await cur.execute(COMMIT_SQL, prepare=False)
            wrote = (await cur.fetchone())[0]
            cur.nextset()  # COMMIT
            cur.nextset()
            lsn = (await cur.fetchone())[0]
        except psycopg.Error as exc:
            lost = is_connection_error(exc)
            if lost:
                await conn.invalidate()
            raise translate(exc, COMMIT_SQL, None, lost) from exc
        await greenlet_spawn(settle, sync)  # SQLAlchemy's bookkeeping: the session is idle, psycopg sends nothing
        return record_boundary(parse_lsn(lsn)) if wrote else None

    def _after_commit(self, lsn: int | None) -> None:
        mode = self.settings.read_your_writes
        if mode == "delay":
            self._record(self.name, Mark(at=self.wall_clock()))
        elif mode == "lsn" and lsn is not None:
            self._record(self.name, Mark(lsn=lsn))

    # -- ORM ------------------------------------------------------------------------------------
    @asynccontextmanager
    async def session(self, write: bool, mark: Mark | None) -> AsyncIterator[AsyncSession]:
        """A session (``AsyncSession``) bound to a write transaction or a routed read (see :mod:`dbscale.routing.orm`)."""
        if write:
            async with self.write() as conn:
                session = AsyncSession(bind=conn, join_transaction_mode="rollback_only")
                try:
                    yield session
                    await session.flush()
                finally:
                    await session.close()
        else:
            async with self.read(mark, snapshot=True) as rc:  # one snapshot for everything it loads
                session = rc.orm_session()
                try:
                    yield session
                finally:
                    await session.close()


class AsyncReadConnection:
    """A routed read connection. Statements run on :attr:`connection` (a SQLAlchemy ``AsyncConnection``).

    Statements are read-only on every node: on the primary fallback, and on a replica too, which
    may have been promoted since the monitor last looked at it. Each runs on its own (autocommit),
    or, with ``snapshot``, all in one ``REPEATABLE READ`` transaction. Until a statement has returned, a
    connection error moves the read to another eligible node once (the failed node is banned);
    after that, errors propagate. ``node`` says where it ran.

    Outside ``snapshot``, :meth:`execute` and :meth:`exec_driver_sql` send ``text()`` and plain Core
    ``select()`` statements on the pooled psycopg connection itself (:mod:`dbscale.routing.fast`);
    the SQLAlchemy ``AsyncConnection`` is made only when something needs it (the ORM, other
    statements, :attr:`connection`).
    """

    def __init__(self, router: AsyncGroupRouter, mark: Mark | None, snapshot: bool = False) -> None:
        self._router = router
        self._mark = mark
        self._snapshot = snapshot
        self._conn: AsyncConnection | None = None
        self._fairy: PoolProxiedConnection | None = None
        self._engine: AsyncEngine | None = None
        self._node: str | None = None
        self._held: str | None = None
        self._delivered = False
        self._retried = False
        self._excluded: frozenset[str] = frozenset()

    async def __aenter__(self) -> AsyncReadConnection:
        r = self._router
        if not r._started:
            await r.ensure_started()
        await self.open(frozenset())
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.finish()

    @property
    def node(self) -> str:
        """The node this read runs on."""
        assert self._node is not None
        return self._node

    @property
    def connection(self) -> AsyncConnection:
        """The underlying ``AsyncConnection`` (statements run on it directly are not retried)."""
        self._delivered = True
        return self._sa()

    def _sa(self) -> AsyncConnection:
        """The SQLAlchemy connection over the checked-out DBAPI connection, made on first use (no I/O)."""
        conn = self._conn
        if conn is None:
            assert self._engine is not None and self._fairy is not None
            engine = self._engine
            conn = self._conn = AsyncConnection(engine, Connection(engine.sync_engine, connection=self._fairy))
        return conn

    async def open(self, exclude: frozenset[str]) -> None:
        """Plan, check out and (under a causal mark) verify; retry once on a connection error."""
        r = self._router
        self._excluded = exclude
        plan = r.plan_read(self._mark, exclude)
        node = plan.node
        assert node is not None
        r.acquire(node)
        self._node = self._held = node
        try:
            await self._connect(node)
            if plan.verify_lsn is not None:
                conn = self._sa()
                if not await r.verify(conn, node, plan):
                    await self._swap_to_writer()
                elif self._snapshot:
                    # The check's statement began the transaction, and its snapshot may predate the
                    # replay position it read: end it, so the caller's snapshot follows the check.
                    await conn.rollback()
        except (sa_exc.DBAPIError, sa_exc.DisconnectionError) as exc:
            kind = failure_kind(exc)
            if kind == "refused":
                await self.finish()
                r.metrics.read_errors.inc()
                raise r.refused(f"{node}: {refusal_reason(exc)}") from None
            if kind == "other":
                await self.finish()
                raise
            await self._failed(exc)
            await self.open(self._excluded | {node})
            return
        except BaseException:
            await self.finish()  # e.g. a pool timeout, a cancellation or an interrupt: give back the in-flight count
            raise
        if plan.fallback:
            r.metrics.fallbacks.inc()
            if self._mark is not None and (self._mark.lsn is not None or self._mark.at is not None):
                r.metrics.causal["primary"].inc()
        elif plan.verify_lsn is None and self._mark is not None and self._mark.lsn is not None:
            r.metrics.causal["replica"].inc()
        r.metrics.reads[node].inc()

    async def _swap_to_writer(self) -> None:
        r = self._router
        await self.finish()
        writer = r.writer()
        if writer is None or r.settings.fallback == "error":
            r.metrics.read_errors.inc()
            raise NoReplicaAvailable(
                f"group {r.name!r}: no replica has replayed the causal token yet and "
                + (
                    "fallback = 'error'; set fallback = 'primary' to read such reads from the primary"
                    if writer is not None
                    else primary_down(r.state, r.settings) + ", so this read cannot see the write yet; "
                    "retry later, or read without the token"
                )
            )
        r.acquire(writer)
        self._node = self._held = writer
        await self._connect(writer)
        r.metrics.fallbacks.inc()
        r.metrics.causal["primary"].inc()
        r.metrics.reads[writer].inc()
        self._mark = None

    async def _connect(self, node: str) -> None:
        """Check out a connection from ``node``'s read pool: read-only sessions in autocommit, so a statement
        is one round trip; under ``snapshot`` a ``REPEATABLE READ`` transaction (psycopg sends its ``BEGIN``
        with the first statement; the pool sets autocommit back on checkin, client-side only)."""
        self._engine = self._router.engine(node, True)
        self._fairy = await self._router.checkout(node, True)
        if self._snapshot:
            await self._sa().execution_options(isolation_level="REPEATABLE READ")

    async def _failed(self, exc: BaseException) -> None:
        r = self._router
        node = self.node
        r.note_failure(node, describe(exc))
        r.monitor.kick()
        engine = self._engine
        await self.finish()
        if engine is not None:  # the node's other idle connections are suspect too: none stays parked
            await greenlet_spawn(drop_parked, engine.sync_engine.pool)
        if self._retried:
            r.metrics.read_errors.inc()
            raise NodeUnavailable(f"group {r.name!r}: read failed on {node} after a retry ({describe(exc)})") from exc
        self._retried = True
        r.metrics.retries.inc()

    async def finish(self) -> None:
        """Return the connection to its pool (ending the read-only transaction) and the in-flight count.

        Both happen on every exit path: the count first (it needs no I/O), and the close is
        shielded, so a cancellation landing here leaks neither.
        """
        conn, self._conn = self._conn, None
        fairy, self._fairy = self._fairy, None
        held, self._held = self._held, None
        if held is not None:
            self._router.release(held)
        if conn is not None:
            with suppress(sa_exc.SQLAlchemyError):
                await asyncio.shield(conn.close())
        elif fairy is not None and not checkin_idle(fairy):
            with suppress(sa_exc.SQLAlchemyError, psycopg.Error):
                await asyncio.shield(greenlet_spawn(fairy.close))

    async def _run(self, call: Callable[[], Awaitable[Any]]) -> Any:
        if self._delivered:
            return await call()
        while True:
            try:
                result = await call()
            except (sa_exc.DBAPIError, sa_exc.DisconnectionError) as exc:
                if not is_connection_error(exc):
                    raise
                failed = self.node
                await self._failed(exc)
                await self.open(self._excluded | {failed})
                continue
            self._delivered = True
            return result

    def orm_session(self) -> AsyncSession:
        """A session (``AsyncSession``) on this read, its statements under the one-retry rule (:mod:`dbscale.routing.orm`)."""
        session = AsyncSession(bind=self._sa(), join_transaction_mode="rollback_only", sync_session_class=ReadSession)
        self._attach(session.sync_session)
        return session

    def _attach(self, session: Session) -> None:
        assert isinstance(session, ReadSession)
        session.info[NODE_KEY] = self.node
        session.dbscale_pin = self._pin
        event.listen(session, "do_orm_execute", self._session_execute)

    def _pin(self) -> None:
        self._delivered = True

    def _session_execute(self, state: ORMExecuteState) -> Any:
        """``do_orm_execute`` hook: run the statement, moving the session once on a connection error.

        Under asyncio the hook runs inside SQLAlchemy's greenlet, which lets it drive the async methods.
        """
        if self._delivered:
            return None
        session = state.session
        while True:
            session.bind = self._sa().sync_connection
            try:
                result = state.invoke_statement()
            except (sa_exc.DBAPIError, sa_exc.DisconnectionError) as exc:
                if not is_connection_error(exc):
                    raise
                with suppress(sa_exc.SQLAlchemyError):
                    session.rollback()  # nothing was loaded; detach from the dead connection
                failed = self.node
                await_only(self._failed(exc))
                await_only(self.open(self._excluded | {failed}))
                session.info[NODE_KEY] = self.node
                continue
            self._delivered = True
            return result

    async def execute(self, statement: Executable, parameters: Any = None, **kw: Any) -> Any:
        """``AsyncConnection.execute`` with the one-retry rule."""
        engine = self._engine
        assert engine is not None
        if not kw and not self._snapshot and not engine.sync_engine._has_events:
            prepared = prepare(statement, parameters, engine.dialect)
            if prepared is not None:
                sql, params, keys = prepared
                return await self._run(lambda: self._fast(sql, params, keys))
        return await self._run(lambda: self._sa().execute(statement, parameters, **kw))

    async def exec_driver_sql(self, statement: str, parameters: Any = None, **kw: Any) -> Any:
        """``AsyncConnection.exec_driver_sql`` with the one-retry rule."""
        engine = self._engine
        assert engine is not None
        if not kw and not self._snapshot and not engine.sync_engine._has_events and not isinstance(parameters, list):
            return await self._run(lambda: self._fast(statement, parameters, None))
        return await self._run(lambda: self._sa().exec_driver_sql(statement, parameters, **kw))

    async def scalar(self, statement: Executable, parameters: Any = None, **kw: Any) -> Any:
        """``AsyncConnection.scalar`` with the one-retry rule."""
        return (await self.execute(statement, parameters, **kw)).scalar()

    async def scalars(self, statement: Executable, parameters: Any = None, **kw: Any) -> Any:
        """``AsyncConnection.scalars`` with the one-retry rule."""
        return (await self.execute(statement, parameters, **kw)).scalars()

    async def _fast(self, sql: str, params: Any, keys: tuple[str, ...] | None) -> Any:
        """Run one statement on the psycopg connection (:mod:`dbscale.routing.fast`); errors as SQLAlchemy raises them."""
        assert self._fairy is not None
        try:
            return await run_fast(self._fairy.driver_connection, sql, params, keys)
        except psycopg.Error as exc:
            sync = self._sa().sync_connection
            assert sync is not None
            await greenlet_spawn(sync._handle_dbapi_exception, exc, sql, params, None, None)
            raise  # not reached: SQLAlchemy raised its own exception (invalidating the connection if it is lost)


class AsyncWriteConnection(AsyncConnection):
    """The ``AsyncConnection`` a write runs on: ``execute()`` of ``text()`` and plain Core ``select()``
    statements inside the write's transaction goes to the psycopg connection directly
    (:mod:`dbscale.routing.fast`); everything else is SQLAlchemy's own."""

    async def execute(self, statement: Any, parameters: Any = None, *, execution_options: Any = None) -> Any:
        sync = self.sync_connection
        if execution_options is None and sync is not None and sync.in_transaction() and not sync._has_events:
            prepared = prepare(statement, parameters, sync.dialect)
            if prepared is not None:
                sql, params, keys = prepared
                try:
                    return await run_fast(sync.connection.driver_connection, sql, params, keys)
                except psycopg.Error as exc:
                    await greenlet_spawn(sync._handle_dbapi_exception, exc, sql, params, None, None)
                    raise  # not reached
        return await super().execute(statement, parameters, execution_options=execution_options)


def settle(conn: Connection) -> None:
    """End SQLAlchemy's transaction on ``conn`` (psycopg sends ``COMMIT`` only if one is open) and close it.

    One call for both, so asyncio code crosses into SQLAlchemy's greenlet once.
    """
    conn.commit()
    conn.close()


def cursor_of(driver: Any) -> Any:
    """The cursor of psycopg connection ``driver`` that the fast path and the commit reuse (:data:`CURSOR_ATTR`)."""
    cur = driver.__dict__.get(CURSOR_ATTR)
    if cur is None:
        cur = driver.cursor()
        setattr(driver, CURSOR_ATTR, cur)
    return cur


async def run_fast(driver: Any, sql: str, params: Any, keys: tuple[str, ...] | None) -> Any:
    """Send one prepared statement on a psycopg connection; its rows as a :class:`~dbscale.routing.fast.FastResult`.

    On the connection's own cursor, made on its first statement and reused (:data:`CURSOR_ATTR`).
    """
    cur = cursor_of(driver)
    await cur.execute(sql, params)
    names = columns_of(cur, keys)
    rows = await cur.fetchall() if names is not None else ()
    if len(rows) > KEEP_ROWS:
        delattr(driver, CURSOR_ATTR)  # the cursor holds its last result: let a large one go with it
    return result(names, rows, cur.rowcount)


__all__ = ["AsyncGroupRouter", "AsyncReadConnection", "AsyncWriteConnection"]
