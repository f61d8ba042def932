"""The pure core of CQRS: positions, events, which fetched events are safe to apply, and the SQL text.

No I/O: the shells (:mod:`dbscale.cqrs.aio` and its generated twin :mod:`dbscale.cqrs.sync`) run the
SQL built here and hand the rows back to :func:`plan_batch`, which decides what may be applied. The
ordering argument is in the package docstring (:mod:`dbscale.cqrs`).
"""

from __future__ import annotations

import re
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal

from dbscale.errors import CqrsError

#: The NOTIFY channel a statement-level trigger signals after every insert into the log.
CHANNEL = "dbscale_events"
EVENTS = "dbscale_events"
STREAMS = "dbscale_event_streams"
CHECKPOINTS = "dbscale_projections"
DEAD_LETTERS = "dbscale_dead_letters"

OnError = Literal["stop", "dead_letter"]
_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,62}$")


@dataclass(frozen=True, order=True)
class Position:
    """A place in the log's reading order: (transaction key, event id). ``Position()`` is the start."""

    tx: int = 0
    id: int = 0


@dataclass(frozen=True)
class Event:
    """One event of the log, as a handler receives it."""

    id: int
    tx: int
    aggregate_id: str
    version: int
    type: str
    payload: dict[str, Any]
    created_at: datetime | None = None

    @property
    def position(self) -> Position:
        """Where this event sits in the reading order."""
        return Position(self.tx, self.id)


@dataclass(frozen=True)
class Batch:
    """What :func:`plan_batch` decided: the events to apply, in order, and the checkpoint after them.

    ``held_back`` says that rows were fetched but are not safe yet (a transaction older than them may
    still commit an event before them): try again shortly rather than waiting for a notification.
    """

    events: tuple[Event, ...]
    position: Position
    held_back: bool = False
    fetched: int = field(default=0, compare=False)


def event_from_row(row: Mapping[Any, Any]) -> Event:
    """An :class:`Event` from a fetched row (``tx`` as text or int, as the driver hands xid8 over)."""
    return Event(
        id=int(row["id"]),
        tx=int(row["tx"]),
        aggregate_id=str(row["aggregate_id"]),
        version=int(row["version"]),
        type=str(row["type"]),
        payload=dict(row["payload"]),
        created_at=row.get("created_at"),
    )


def plan_batch(checkpoint: Position, rows: Sequence[Event], horizon: int | None) -> Batch:
    """The events of ``rows`` safe to apply after ``checkpoint``, in reading order.

    ``horizon`` is ``pg_snapshot_xmin`` of the snapshot the rows were read in: every transaction
    below it has finished, so an event with ``tx < horizon`` can no longer be preceded by one that
    is still in flight. Rows at or after the checkpoint are dropped (a second projector instance
    already applied them); rows from the first ``tx >= horizon`` on are held back. Raises
    :class:`~dbscale.errors.CqrsError` if an aggregate's versions do not increase in reading order
    (the log was written around :meth:`EventLog.append`).
    """
    ordered = sorted(rows, key=lambda e: (e.tx, e.id))
    safe: list[Event] = []
    held_back = False
    last_version: dict[str, int] = {}
    for event in ordered:
        if event.position <= checkpoint:
            continue
        if horizon is None or event.tx >= horizon:
            held_back = True
            break
        previous = last_version.get(event.aggregate_id)
        if previous is not None and event.version <= previous:
            raise CqrsError(
                f"event {event.id}: aggregate {event.aggregate_id!r} version {event.version} follows version "
                f"{previous} in the log's order; events must be appended with EventLog.append()"
            )
        last_version[event.aggregate_id] = event.version
        safe.append(event)
    position = safe[-1].position if safe else checkpoint
    return Batch(tuple(safe), position, held_back, fetched=len(rows))


def check_name(name: str, what: str = "projector name") -> str:
    """``name`` if it is a plain SQL identifier (it becomes part of a lock key and a schema name)."""
    if not _NAME.match(name):
        raise CqrsError(
            f"{what} {name!r} must be letters, digits and underscores (at most 63), not starting with a digit"
        )
    return name


def lease_key(name: str) -> int:
    """The advisory-lock key of a projector's lease (a signed 64-bit int, the same in every process)."""
    value = zlib.crc32(f"dbscale.projector:{name}".encode()) | (0x5DB5 << 32)
    return value - (1 << 64) if value >= 1 << 63 else value


def rebuild_schema(name: str) -> str:
    """The schema a rebuild of projector ``name`` builds its fresh tables in."""
    return f"dbscale_rebuild_{check_name(name)}"[:63]


def search_path_sql(schema: str, current: str | None = None) -> str:
    """``SET LOCAL search_path`` putting ``schema`` first (before ``current``, if given): unqualified
    table names resolve to the fresh tables."""
    return f"SET LOCAL search_path = {quote_ident(schema)}" + (f", {current}" if current else "")


def quote_ident(name: str) -> str:
    """A SQL identifier, double-quoted."""
    return '"' + name.replace('"', '""') + '"'


# -- SQL text ----------------------------------------------------------------------------------------

#: Serializes concurrent installs (CREATE ... IF NOT EXISTS races on the catalog otherwise).
INSTALL_LOCK_SQL = "SELECT pg_advisory_xact_lock(6733160251300923)"

LOG_DDL = (
    f"""CREATE TABLE IF NOT EXISTS {STREAMS} (
    aggregate_id text PRIMARY KEY,
    version bigint NOT NULL,
    last_tx xid8 NOT NULL
)""",
    f"""CREATE TABLE IF NOT EXISTS {EVENTS} (
    id bigserial PRIMARY KEY,
    tx xid8 NOT NULL,
    aggregate_id text NOT NULL,
    version bigint NOT NULL,
    type text NOT NULL,
    payload jsonb NOT NULL,
    created_at timestamptz NOT NULL DEFAULT clock_timestamp(),
    UNIQUE (aggregate_id, version)
)""",
    f"CREATE INDEX IF NOT EXISTS {EVENTS}_tx_id ON {EVENTS} (tx, id)",
    f"""CREATE OR REPLACE FUNCTION {EVENTS}_notify() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('{CHANNEL}', '');
    RETURN NULL;
END $$""",
    f"""CREATE OR REPLACE TRIGGER {EVENTS}_notify AFTER INSERT ON {EVENTS}
    FOR EACH STATEMENT EXECUTE FUNCTION {EVENTS}_notify()""",
)

CHECKPOINT_DDL = (
    f"""CREATE TABLE IF NOT EXISTS {CHECKPOINTS} (
    name text PRIMARY KEY,
    last_tx xid8 NOT NULL DEFAULT '0',
    last_id bigint NOT NULL DEFAULT 0,
    applied bigint NOT NULL DEFAULT 0,
    updated_at timestamptz NOT NULL DEFAULT clock_timestamp(),
    failed_event bigint,
    error text
)""",
    f"""CREATE TABLE IF NOT EXISTS {DEAD_LETTERS} (
    projector text NOT NULL,
    event_id bigint NOT NULL,
    type text NOT NULL,
    aggregate_id text NOT NULL,
    version bigint NOT NULL,
    payload jsonb NOT NULL,
    error text NOT NULL,
    created_at timestamptz NOT NULL DEFAULT clock_timestamp(),
    PRIMARY KEY (projector, event_id)
)""",
)

_APPEND_INSERT = f"""
INSERT INTO {EVENTS} (tx, aggregate_id, version, type, payload)
SELECT last_tx, :aggregate_id, version, :type, CAST(:payload AS jsonb) FROM s
RETURNING id, version"""


def append_sql(expected_version: int | None) -> str:
    """One statement appending an event and advancing its aggregate's stream row.

    The stream row is the per-aggregate lock: a second appender to the same aggregate waits for the
    first to commit. The event's ``tx`` is the appending transaction's xid, raised to the previous
    event's ``tx`` of the aggregate when that is larger, so an aggregate's events are in version
    order in the reading order too. With ``expected_version`` no row comes back on a conflict.
    """
    if expected_version is None:
        stream = f"""INSERT INTO {STREAMS} AS st (aggregate_id, version, last_tx)
    VALUES (:aggregate_id, 1, pg_current_xact_id())
    ON CONFLICT (aggregate_id) DO UPDATE
    SET version = st.version + 1, last_tx = greatest(st.last_tx, pg_current_xact_id())
    RETURNING version, last_tx"""
    elif expected_version == 0:
        stream = f"""INSERT INTO {STREAMS} (aggregate_id, version, last_tx)
    VALUES (:aggregate_id, 1, pg_current_xact_id())
    ON CONFLICT (aggregate_id) DO NOTHING
    RETURNING version, last_tx"""
    elif expected_version > 0:
        stream = f"""UPDATE {STREAMS}
    SET version = version + 1, last_tx = greatest(last_tx, pg_current_xact_id())
    WHERE aggregate_id = :aggregate_id AND version = :expected
    RETURNING version, last_tx"""
    else:
        raise CqrsError(f"expected_version must be None or >= 0, not {expected_version}")
    return f"WITH s AS (\n    {stream}\n){_APPEND_INSERT}"


STREAM_VERSION_SQL = f"SELECT version FROM {STREAMS} WHERE aggregate_id = :aggregate_id"

#: The next rows after a position, in reading order, with the snapshot's horizon on every row.
FETCH_SQL = f"""
SELECT id, tx::text AS tx, aggregate_id, version, type, payload, created_at,
       pg_snapshot_xmin(pg_current_snapshot())::text AS horizon
FROM {EVENTS}
WHERE (tx, id) > (CAST(:tx AS xid8), :id)
ORDER BY tx, id
LIMIT :limit"""

COUNT_AFTER_SQL = f"""
SELECT count(*) AS events, extract(epoch FROM clock_timestamp() - min(created_at)) AS seconds
FROM {EVENTS} WHERE (tx, id) > (CAST(:tx AS xid8), :id)"""

CHECKPOINT_ENSURE_SQL = f"INSERT INTO {CHECKPOINTS} (name) VALUES (:name) ON CONFLICT (name) DO NOTHING"
CHECKPOINT_LOCK_SQL = f"SELECT last_tx::text AS tx, last_id AS id FROM {CHECKPOINTS} WHERE name = :name FOR UPDATE"
CHECKPOINT_SAVE_SQL = f"""
UPDATE {CHECKPOINTS}
SET last_tx = CAST(:tx AS xid8), last_id = :id, applied = applied + :applied, updated_at = clock_timestamp(),
    failed_event = :failed_event, error = :error
WHERE name = :name"""
CHECKPOINT_RESET_SQL = f"""
UPDATE {CHECKPOINTS}
SET last_tx = CAST(:tx AS xid8), last_id = :id, applied = :applied, updated_at = clock_timestamp(),
    failed_event = NULL, error = NULL
WHERE name = :name"""
_CHECKPOINT_COLUMNS = "name, last_tx::text AS tx, last_id AS id, applied, updated_at, failed_event, error"
CHECKPOINTS_SQL = f"SELECT {_CHECKPOINT_COLUMNS} FROM {CHECKPOINTS} ORDER BY name"
CHECKPOINT_SQL = f"SELECT {_CHECKPOINT_COLUMNS} FROM {CHECKPOINTS} WHERE name = :name"
DEAD_LETTER_SQL = f"""
INSERT INTO {DEAD_LETTERS} (projector, event_id, type, aggregate_id, version, payload, error)
VALUES (:projector, :event_id, :type, :aggregate_id, :version, CAST(:payload AS jsonb), :error)
ON CONFLICT (projector, event_id) DO NOTHING"""
COUNT_EVENTS_SQL = f"SELECT count(*) FROM {EVENTS}"


@dataclass(frozen=True)
class ProjectionStatus:
    """A projector's checkpoint and how far it trails the log (``dbscale project status``)."""

    name: str
    position: Position
    applied: int
    lag_events: int
    lag_seconds: float
    updated_at: datetime | None = None
    failed_event: int | None = None
    error: str | None = None

    def as_dict(self) -> dict[str, Any]:
        """Plain data for JSON."""
        return {
            "name": self.name,
            "last_event": self.position.id,
            "last_tx": self.position.tx,
            "applied": self.applied,
            "lag_events": self.lag_events,
            "lag_seconds": round(self.lag_seconds, 3),
            "updated_at": None if self.updated_at is None else self.updated_at.isoformat(),
            "failed_event": self.failed_event,
            "error": self.error,
        }


__all__ = [
    "CHANNEL",
    "Batch",
    "Event",
    "OnError",
    "Position",
    "ProjectionStatus",
    "append_sql",
    "check_name",
    "event_from_row",
    "lease_key",
    "plan_batch",
    "rebuild_schema",
]
