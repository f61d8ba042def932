"""The asyncio event log: install, ``append`` inside the caller's transaction, fetch in reading order, status.

Written by hand; the synchronous twin :mod:`dbscale.cqrs.log` is generated from it by
``scripts/unasync.py``. The ordering argument is in :mod:`dbscale.cqrs`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, NamedTuple

import orjson
import psycopg
from sqlalchemy import text

from dbscale.config import libpq_conninfo
from dbscale.cqrs.core import (
    CHECKPOINT_DDL,
    CHECKPOINTS_SQL,
    COUNT_AFTER_SQL,
    FETCH_SQL,
    INSTALL_LOCK_SQL,
    LOG_DDL,
    STREAM_VERSION_SQL,
    Batch,
    Position,
    ProjectionStatus,
    append_sql,
    event_from_row,
    plan_batch,
)
from dbscale.errors import ConcurrencyError, CqrsError

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

    from dbscale.cluster import AsyncCluster


_APPEND_NEW = text(append_sql(None))
_APPEND_AT_ZERO = text(append_sql(0))
_APPEND_AT = text(append_sql(1))


class Appended(NamedTuple):
    """What :meth:`AsyncEventLog.append` wrote: the event's id and its aggregate's new version."""

    id: int
    version: int


async def install_schema(conn: AsyncConnection, *, log: bool = True) -> None:
    """Create the event log (``log``) and the checkpoint and dead-letter tables on ``conn``; idempotent."""
    await conn.exec_driver_sql(INSTALL_LOCK_SQL)
    for statement in (*(LOG_DDL if log else ()), *CHECKPOINT_DDL):
        await conn.exec_driver_sql(statement)


async def primary_engine(cluster: AsyncCluster, group: str | None) -> AsyncEngine:
    """The engine of ``group``'s current writer, connected directly (never through PgBouncer)."""
    router = cluster.router(group)
    await router.ensure_started()
    writer = await router.await_writer(router.clock() + router.write_timeout)
    return cluster.engine(writer)


async def connect_primary(cluster: AsyncCluster, group: str | None) -> psycopg.AsyncConnection[Any]:
    """A dedicated autocommit psycopg connection to ``group``'s writer (for LISTEN and session locks)."""
    router = cluster.router(group)
    await router.ensure_started()
    writer = await router.await_writer(router.clock() + router.write_timeout)
    url = libpq_conninfo(cluster.node(writer).url)
    return await psycopg.AsyncConnection.connect(url, autocommit=True, connect_timeout=5)


async def fetch_after(cluster: AsyncCluster, group: str | None, after: Position, limit: int) -> Batch:
    """The next safe events after ``after`` (at most ``limit`` rows fetched), read on the writer."""
    engine = await primary_engine(cluster, group)
    async with engine.connect() as conn:
        result = await conn.execute(text(FETCH_SQL), {"tx": str(after.tx), "id": after.id, "limit": limit})
        rows = result.mappings().all()
        await conn.rollback()
    horizon = int(rows[0]["horizon"]) if rows else None
    return plan_batch(after, [event_from_row(row) for row in rows], horizon)


async def lag_after(conn: AsyncConnection, position: Position) -> tuple[int, float]:
    """Events in the log after ``position``, and the age in seconds of the oldest of them (0 if none)."""
    result = await conn.execute(text(COUNT_AFTER_SQL), {"tx": str(position.tx), "id": position.id})
    row = result.mappings().one()
    return int(row["events"]), float(row["seconds"] or 0.0)


class AsyncEventLog:
    """A cluster's event log (its ``events`` attribute), on the primary of its default group or of ``group``."""

    def __init__(self, cluster: AsyncCluster, group: str | None = None) -> None:
        self.cluster = cluster
        self.group = group
        self._appended = cluster.metrics.counter("cqrs_appends", "Events appended to the log (counted at append).")

    async def install(self) -> None:
        """Create the log, checkpoint and dead-letter tables and the NOTIFY trigger (idempotent)."""
        async with self.cluster.write(self.group) as conn:
            await install_schema(conn, log=True)

    async def append(
        self,
        conn: AsyncConnection,
        type: str,
        payload: dict[str, Any],
        *,
        aggregate_id: str,
        expected_version: int | None = None,
    ) -> Appended:
        """Append one event inside the caller's ``write()`` transaction ``conn``.

        The event exists if and only if that transaction commits. ``expected_version`` (the version
        the command loaded; 0 for a new aggregate) raises :class:`~dbscale.ConcurrencyError` when
        another command appended to the aggregate first; without it the next version is taken.
        """
        if not type or not isinstance(type, str):
            raise CqrsError("an event type must be a non-empty string")
        params = {
            "aggregate_id": str(aggregate_id),
            "type": type,
            "payload": orjson.dumps(payload).decode(),
            "expected": expected_version,
        }
        if expected_version is None:
            statement = _APPEND_NEW
        elif expected_version > 0:
            statement = _APPEND_AT
        else:
            statement = _APPEND_AT_ZERO if expected_version == 0 else text(append_sql(expected_version))
        result = await conn.execute(statement, params)
        row = result.first()
        if row is None:
            assert expected_version is not None
            result = await conn.execute(text(STREAM_VERSION_SQL), params)
            actual = result.scalar() or 0
            raise ConcurrencyError(
                f"aggregate {aggregate_id!r} is at version {actual}, not the expected {expected_version}: "
                "another command changed it; reload it and retry the command",
                aggregate_id=str(aggregate_id),
                expected=expected_version,
                actual=int(actual),
            )
        self._appended.inc()
        return Appended(int(row[0]), int(row[1]))

    async def projections(self) -> list[ProjectionStatus]:
        """Every projector checkpoint stored on this log's database, with its lag (events, seconds)."""
        engine = await primary_engine(self.cluster, self.group)
        async with engine.connect() as conn:
            result = await conn.execute(text(CHECKPOINTS_SQL))
            rows = result.mappings().all()
            statuses = []
            for row in rows:
                position = Position(int(row["tx"]), int(row["id"]))
                events, seconds = await lag_after(conn, position)
                statuses.append(status_from_row(row, position, events, seconds))
            await conn.rollback()
        return statuses


def status_from_row(row: Any, position: Position, events: int, seconds: float) -> ProjectionStatus:
    """A :class:`ProjectionStatus` from a checkpoint row and its lag."""
    return ProjectionStatus(
        name=row["name"],
        position=position,
        applied=int(row["applied"]),
        lag_events=events,
        lag_seconds=seconds,
        updated_at=row["updated_at"],
        failed_event=row["failed_event"],
        error=row["error"],
    )


__all__ = [
    "Appended",
    "AsyncEventLog",
    "connect_primary",
    "fetch_after",
    "install_schema",
    "lag_after",
    "primary_engine",
    "status_from_row",
]
