# auto-generated from aio.py by scripts/unasync.py — do not edit
"""The synchronous projector: catch up (``run_once``), follow the log (``run``, one lease holder), ``rebuild``.

The decisions (which fetched events are safe, in what order) are in :mod:`dbscale.cqrs.core`; the
theory of operation is in :mod:`dbscale.cqrs`. This file is written by hand; the synchronous twin
:mod:`dbscale.cqrs.sync` is generated from it by ``scripts/unasync.py`` (CI checks it is current).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import orjson
import psycopg
from sqlalchemy import exc as sa_exc
from sqlalchemy import text

from dbscale.cqrs.core import (
    CHANNEL,
    CHECKPOINT_ENSURE_SQL,
    CHECKPOINT_LOCK_SQL,
    CHECKPOINT_RESET_SQL,
    CHECKPOINT_SAVE_SQL,
    CHECKPOINT_SQL,
    COUNT_EVENTS_SQL,
    DEAD_LETTER_SQL,
    Batch,
    Event,
    OnError,
    Position,
    ProjectionStatus,
    check_name,
    lease_key,
    quote_ident,
    rebuild_schema,
    search_path_sql,
)
from dbscale.cqrs.log import (
    connect_primary,
    fetch_after,
    install_schema,
    lag_after,
    primary_engine,
    status_from_row,
)
from dbscale.errors import CqrsError, NodeUnavailable, ProjectionError
from dbscale.routing.errors import describe, is_connection_error

if TYPE_CHECKING:
    from sqlalchemy import Connection

    from dbscale.cluster import Cluster

log = logging.getLogger("dbscale.cqrs")

#: ``handler(conn, event)``: apply one event to the read model on ``conn`` (the target transaction).
Handler = Callable[["Connection", Event], None]
#: ``setup(conn)``: create the read model's tables with unqualified names, idempotently.
Setup = Callable[["Connection"], None]


@dataclass
class _Failure:
    event: Event
    error: BaseException


class _HandlerFailed(Exception):
    def __init__(self, failure: _Failure) -> None:
        super().__init__(failure.event.id)
        self.failure = failure


class Projector:
    """Folds the event log into a read model, exactly once, never skipping an event (see :mod:`dbscale.cqrs`).

    ``target`` is where the read model and the checkpoint live: None (the same cluster and group as
    the log), a group name of the same cluster, or another cluster. ``tables`` names the read
    model's tables (unqualified) and ``setup(conn)`` creates them with unqualified names and
    ``IF NOT EXISTS``; :meth:`rebuild` needs ``tables`` and builds fresh ones with ``setup`` (or
    ``CREATE TABLE ... (LIKE live INCLUDING ALL)`` without it). Handlers must use unqualified names.
    A failing handler stops the projector (``on_error="stop"``, :class:`~dbscale.ProjectionError`)
    or sends the event to ``dbscale_dead_letters`` (``on_error="dead_letter"``).
    """

    def __init__(
        self,
        name: str,
        cluster: Cluster | None = None,
        target: Cluster | str | None = None,
        *,
        tables: Sequence[str] = (),
        setup: Setup | None = None,
        on_error: OnError = "stop",
        batch_size: int = 500,
        poll_interval: float = 1.0,
        lease_retry: float = 0.5,
        group: str | None = None,
    ) -> None:
        if on_error not in ("stop", "dead_letter"):
            raise CqrsError(f"on_error must be 'stop' or 'dead_letter', not {on_error!r}")
        if batch_size < 1:
            raise CqrsError("batch_size must be at least 1")
        self.name = check_name(name)
        self.cluster = cluster
        self.target = target
        self.tables = tuple(check_name(t, "table name") for t in tables)
        self.setup = setup
        self.on_error: OnError = on_error
        self.batch_size = batch_size
        self.poll_interval = poll_interval
        self.lease_retry = lease_retry
        self.group = group
        self._handlers: dict[str, Handler] = {}
        self._after_commit: list[Callable[[Sequence[Event]], None]] = []
        self._stopping = False
        self._installed = False
        self._lease: psycopg.Connection[Any] | None = None
        self._listen: psycopg.Connection[Any] | None = None

    # -- declaration ------------------------------------------------------------------------------
    def on(self, event_type: str) -> Callable[[Handler], Handler]:
        """Decorator: ``@projector.on("user_created")`` registers ``handler(conn, event)`` for a type."""

        def register(handler: Handler) -> Handler:
            if event_type in self._handlers:
                raise CqrsError(f"projector {self.name!r} already has a handler for {event_type!r}")
            self._handlers[event_type] = handler
            return handler

        return register

    def after_commit(self, callback: Callable[[Sequence[Event]], None]) -> Callable[[Sequence[Event]], None]:
        """Decorator: call ``callback(events)`` after each batch's transaction committed (e.g. to invalidate caches)."""
        self._after_commit.append(callback)
        return callback

    def bind(self, cluster: Cluster) -> Projector:
        """Set the cluster of a projector declared without one (``dbscale project run`` does this)."""
        self.cluster = cluster
        return self

    def stop(self) -> None:
        """Ask :meth:`run` to return (within about a quarter of a second)."""
        self._stopping = True

    # -- wiring -----------------------------------------------------------------------------------
    def _source(self) -> Cluster:
        if self.cluster is None:
            raise CqrsError(f"projector {self.name!r} has no cluster: pass one or call bind(cluster)")
        return self.cluster

    def _target(self) -> tuple[Cluster, str | None]:
        if self.target is None:
            return self._source(), self.group
        if isinstance(self.target, str):
            return self._source(), self.target
        return self.target, None

    def install(self) -> None:
        """Create the checkpoint tables and the read model (``setup``) on the target, once per process."""
        if self._installed:
            return
        cluster, group = self._target()
        with cluster.write(group) as conn:
            install_schema(conn, log=False)
            if self.setup is not None:
                self.setup(conn)
            conn.execute(text(CHECKPOINT_ENSURE_SQL), {"name": self.name})
        self._installed = True

    # -- one batch ----------------------------------------------------------------------------------
    def _lock_checkpoint(self, conn: Connection) -> Position:
        params = {"name": self.name}
        result = conn.execute(text(CHECKPOINT_LOCK_SQL), params)
        row = result.mappings().first()
        if row is None:
            conn.execute(text(CHECKPOINT_ENSURE_SQL), params)
            result = conn.execute(text(CHECKPOINT_LOCK_SQL), params)
            row = result.mappings().one()
        return Position(int(row["tx"]), int(row["id"]))

    def _apply(self, conn: Connection, events: Sequence[Event], failed: _Failure | None) -> list[Event]:
        """Run the handlers; stop before (or dead-letter) the event that failed in an earlier attempt."""
        done: list[Event] = []
        for event in events:
            if failed is not None and event.id == failed.event.id:
                if self.on_error == "dead_letter":
                    conn.execute(text(DEAD_LETTER_SQL), _dead_letter_params(self.name, failed))
                    done.append(event)
                break
            handler = self._handlers.get(event.type)
            if handler is not None:
                try:
                    handler(conn, event)
                except Exception as exc:
                    if is_connection_error(exc):
                        raise
                    raise _HandlerFailed(_Failure(event, exc)) from exc
            done.append(event)
        return done

    def _step(self, limit: int, *, schema: str | None = None, start: Position | None = None) -> Batch:
        """Apply the next batch and its checkpoint in one target transaction (``start``: a rebuild's own position)."""
        cluster, group = self._target()
        failed: _Failure | None = None
        while True:
            try:
                with cluster.write(group) as conn:
                    if schema is not None:
                        _enter_schema(conn, schema)
                    checkpoint = start if start is not None else self._lock_checkpoint(conn)
                    batch = fetch_after(self._source(), self.group, checkpoint, limit)
                    if failed is not None and all(e.id != failed.event.id for e in batch.events):
                        failed = None  # another instance got past it meanwhile: nothing to stop at
                    done = self._apply(conn, batch.events, failed)
                    position = done[-1].position if done else checkpoint
                    stopped = failed is not None and self.on_error == "stop"
                    if start is None and (done or stopped):  # an empty round writes nothing
                        conn.execute(
                            text(CHECKPOINT_SAVE_SQL),
                            {
                                "name": self.name,
                                "tx": str(position.tx),
                                "id": position.id,
                                "applied": len(done),
                                "failed_event": failed.event.id if stopped and failed else None,
                                "error": describe(failed.error) if stopped and failed else None,
                            },
                        )
            except _HandlerFailed as exc:
                if failed is not None:  # the event before the one that failed cannot fail now: a flaky handler
                    raise ProjectionError(
                        f"projector {self.name!r}: handler failed on event {exc.failure.event.id} while "
                        f"retrying around event {failed.event.id}; not applied",
                        projector=self.name,
                        event_id=exc.failure.event.id,
                        error=exc.failure.error,
                    ) from exc.failure.error
                failed = exc.failure
                self._count("errors")
                continue
            self._committed(done)
            if failed is not None and self.on_error == "stop":
                event = failed.event
                raise ProjectionError(
                    f"projector {self.name!r} stopped at event {event.id} ({event.type} of {event.aggregate_id!r} "
                    f"v{event.version}): {describe(failed.error)}; events before it are applied, none after. "
                    "Fix the handler and run again, or use on_error='dead_letter'",
                    projector=self.name,
                    event_id=event.id,
                    error=failed.error,
                ) from failed.error
            if failed is not None:
                self._count("dead_letters")
            rest = len(done) < len(batch.events)  # stopped early at a dead letter: the rest is due at once
            return Batch(tuple(done), position, batch.held_back or rest, batch.fetched)

    def _count(self, what: str, n: int = 1) -> None:
        metrics = self._source().metrics
        docs = {
            "errors": "Handler failures of a projector.",
            "dead_letters": "Events a projector sent to dbscale_dead_letters.",
            "events": "Events a projector applied (committed with its checkpoint).",
        }
        metrics.counter(f"projection_{what}", docs[what], ["projector"]).labels(self.name).inc(n)

    def _committed(self, events: Sequence[Event]) -> None:
        if not events:
            return
        metrics = self._source().metrics
        self._count("events", len(events))
        metrics.gauge("projection_position", "Id of the last event a projector applied.", ["projector"]).labels(
            self.name
        ).set(events[-1].id)
        lag = metrics.histogram(
            "projection_lag_seconds", "From an event's insert to its projection's commit.", ["projector"]
        ).labels(self.name)
        now = time.time()
        for event in events:
            if event.created_at is not None:
                lag.observe(max(0.0, now - event.created_at.timestamp()))
        for callback in self._after_commit:
            callback(events)

    # -- running ------------------------------------------------------------------------------------
    def run_once(self) -> int:
        """Catch up with the log in batches; returns how many events it passed (those without a handler too).

        Events behind a still-open older transaction are left for the next call.
        """
        self.install()
        total = 0
        while True:
            batch = self._step(self.batch_size)
            total += len(batch.events)
            if not batch.events or (batch.fetched < self.batch_size and not batch.held_back):
                return total

    def run(self) -> None:
        """Project until :meth:`stop`: win the lease, then catch up on every NOTIFY (polling as a fallback).

        Several workers may run one projector; one holds the lease (a session advisory lock on the
        target's primary) and the others retry every ``lease_retry`` seconds, taking over when the
        holder's connection ends (a crash included). While the database is unreachable it logs,
        waits ``poll_interval`` and tries again; a failing handler ends it (:class:`~dbscale.ProjectionError`).
        """
        self._stopping = False
        self.install()
        try:
            while not self._stopping:
                if not self._acquire_lease():
                    self._sleep(self.lease_retry)
                    continue
                try:
                    self._serve()
                except (NodeUnavailable, sa_exc.DBAPIError) as exc:
                    if isinstance(exc, sa_exc.DBAPIError) and not is_connection_error(exc):
                        raise
                    # the database is unreachable: keep the worker, let go of the lease, try again
                    log.warning("projector %s: %s; retrying in %.1f s", self.name, describe(exc), self.poll_interval)
                    self._close_connections()
                    self._sleep(self.poll_interval)
        finally:
            self._close_connections()

    def _acquire_lease(self) -> bool:
        try:
            if self._lease is None:
                self._lease = connect_primary(*self._target())
            cursor = self._lease.execute("SELECT pg_try_advisory_lock(%s)", (lease_key(self.name),))
            row = cursor.fetchone()
        except psycopg.Error as exc:
            log.warning("projector %s: lease connection failed (%s)", self.name, describe(exc))
            self._close_connections()
            return False
        held = bool(row and row[0])
        if held:
            log.info("projector %s: lease acquired", self.name)
        return held

    def _lease_alive(self) -> bool:
        try:
            assert self._lease is not None
            self._lease.execute("SELECT 1")
        except psycopg.Error as exc:
            log.warning("projector %s: lease lost (%s)", self.name, describe(exc))
            self._close_connections()
            return False
        return True

    def _serve(self) -> None:
        """Hold the lease: catch up, wait for a notification, repeat; return when stopping or the lease is lost."""
        checked = time.monotonic()
        delay = 0.0
        while not self._stopping:
            applied = 0
            batch = self._step(self.batch_size)
            applied += len(batch.events)
            while batch.events and (batch.fetched >= self.batch_size or batch.held_back):
                batch = self._step(self.batch_size)
                applied += len(batch.events)
            # Held back behind an open transaction: its commit may send no notification, so look again soon.
            delay = min(max(delay * 2, 0.002), self.poll_interval) if batch.held_back else self.poll_interval
            self._wait(delay)
            if time.monotonic() - checked >= 1.0:
                if not self._lease_alive():
                    return
                checked = time.monotonic()

    def _wait(self, timeout: float) -> None:
        """Until a notification arrives, ``timeout`` passes or :meth:`stop` is called."""
        deadline = time.monotonic() + timeout
        while not self._stopping:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return
            try:
                if self._listen is None:
                    self._listen = connect_primary(self._source(), self.group)
                    self._listen.execute(f"LISTEN {CHANNEL}")
                    return  # anything may have happened while not listening
                woke = False
                for _ in self._listen.notifies(timeout=min(remaining, 0.25), stop_after=1):
                    woke = True
                if woke:
                    for _ in self._listen.notifies(timeout=0.0):
                        pass  # drain what queued up: one catch-up covers them all
                    return
            except psycopg.Error:
                listen, self._listen = self._listen, None
                if listen is not None:
                    listen.close()
                self._sleep(min(remaining, self.poll_interval))
                return

    def _sleep(self, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while not self._stopping and time.monotonic() < deadline:
            time.sleep(min(0.05, max(0.0, deadline - time.monotonic())))

    def _close_connections(self) -> None:
        for conn in (self._lease, self._listen):
            if conn is not None and not conn.closed:
                conn.close()
        self._lease = self._listen = None

    # -- rebuild and status ---------------------------------------------------------------------------
    def rebuild(self, progress: Callable[[int, int], None] | None = None) -> int:
        """Replay the whole log into fresh tables, then swap them in atomically; returns the events replayed.

        The fresh tables are built in schema ``dbscale_rebuild_<name>`` (handlers see them through
        ``search_path``) while the live projector keeps running; the swap transaction locks the
        live checkpoint, applies what arrived meanwhile, replaces each table of ``tables`` and sets
        the checkpoint. ``progress(done, total)`` is called after every batch.
        """
        if not self.tables:
            raise CqrsError(f"projector {self.name!r}: rebuild needs the read model's tables=[...]")
        self.install()
        cluster, group = self._target()
        schema = rebuild_schema(self.name)
        with cluster.write(group) as conn:
            self._create_fresh(conn, schema)
        engine = primary_engine(self._source(), self.group)
        with engine.connect() as conn:
            result = conn.execute(text(COUNT_EVENTS_SQL))
            total = int(result.scalar_one())
            conn.rollback()
        position, done = Position(), 0
        while True:
            batch = self._step(self.batch_size, schema=schema, start=position)
            position, done = batch.position, done + len(batch.events)
            if progress is not None:
                progress(done, max(total, done))
            if not batch.events:
                if not batch.held_back:
                    break
                time.sleep(0.01)
        with cluster.write(group) as conn:
            self._lock_checkpoint(conn)
            live = _current_schema(conn)
            _enter_schema(conn, schema)
            while True:  # what arrived since the last batch, under the checkpoint's lock
                batch = fetch_after(self._source(), self.group, position, self.batch_size)
                if not batch.events:
                    break
                try:
                    applied = self._apply(conn, batch.events, None)
                except _HandlerFailed as exc:
                    raise ProjectionError(
                        f"projector {self.name!r}: rebuild failed on event {exc.failure.event.id} "
                        f"({describe(exc.failure.error)}); the live read model is unchanged",
                        projector=self.name,
                        event_id=exc.failure.event.id,
                        error=exc.failure.error,
                    ) from exc.failure.error
                position, done = batch.position, done + len(applied)
            for table in self.tables:
                conn.exec_driver_sql(f"DROP TABLE IF EXISTS {quote_ident(live)}.{quote_ident(table)}")
                conn.exec_driver_sql(
                    f"ALTER TABLE {quote_ident(schema)}.{quote_ident(table)} SET SCHEMA {quote_ident(live)}"
                )
            conn.exec_driver_sql(f"DROP SCHEMA {quote_ident(schema)} CASCADE")
            params = {"name": self.name, "tx": str(position.tx), "id": position.id, "applied": done}
            conn.execute(text(CHECKPOINT_RESET_SQL), params)
        if progress is not None:
            progress(done, max(total, done))
        return done

    def _create_fresh(self, conn: Connection, schema: str) -> None:
        live = _current_schema(conn)
        conn.exec_driver_sql(f"DROP SCHEMA IF EXISTS {quote_ident(schema)} CASCADE")
        conn.exec_driver_sql(f"CREATE SCHEMA {quote_ident(schema)}")
        if self.setup is None:
            for table in self.tables:
                conn.exec_driver_sql(
                    f"CREATE TABLE {quote_ident(schema)}.{quote_ident(table)} "
                    f"(LIKE {quote_ident(live)}.{quote_ident(table)} INCLUDING ALL)"
                )
            return
        conn.exec_driver_sql(search_path_sql(schema))  # only the fresh schema: "does it exist?" checks look there
        self.setup(conn)
        for table in self.tables:
            result = conn.execute(text("SELECT to_regclass(:name)"), {"name": f"{schema}.{table}"})
            if result.scalar() is None:
                raise CqrsError(f"projector {self.name!r}: setup() did not create table {table!r} (unqualified name)")

    def status(self) -> ProjectionStatus:
        """This projector's checkpoint and lag (events and seconds behind the log); also sets the lag gauges."""
        self.install()
        cluster, group = self._target()
        engine = primary_engine(cluster, group)
        with engine.connect() as conn:
            result = conn.execute(text(CHECKPOINT_SQL), {"name": self.name})
            row = result.mappings().one()
            conn.rollback()
        position = Position(int(row["tx"]), int(row["id"]))
        source = primary_engine(self._source(), self.group)
        with source.connect() as conn:
            events, seconds = lag_after(conn, position)
            conn.rollback()
        metrics = self._source().metrics
        metrics.gauge(
            "projection_lag_events", "Events in the log after a projector's checkpoint.", ["projector"]
        ).labels(self.name).set(events)
        metrics.gauge(
            "projection_lag_age_seconds", "Age of the oldest event a projector has not applied.", ["projector"]
        ).labels(self.name).set(seconds)
        return status_from_row(row, position, events, seconds)


def _dead_letter_params(projector: str, failure: _Failure) -> dict[str, Any]:
    event = failure.event
    return {
        "projector": projector,
        "event_id": event.id,
        "type": event.type,
        "aggregate_id": event.aggregate_id,
        "version": event.version,
        "payload": orjson.dumps(event.payload).decode(),
        "error": describe(failure.error),
    }


def _current_schema(conn: Connection) -> str:
    result = conn.execute(text("SELECT current_schema()"))
    return str(result.scalar_one())


def _enter_schema(conn: Connection, schema: str) -> None:
    """Put ``schema`` first on this transaction's search_path: unqualified names reach the fresh tables."""
    result = conn.execute(text("SELECT current_setting('search_path')"))
    conn.exec_driver_sql(search_path_sql(schema, str(result.scalar_one())))


__all__ = ["Handler", "Projector", "Setup"]
