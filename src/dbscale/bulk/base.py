"""What the asyncio and blocking bulk loaders share: SQL, the reject file, the progress bar, driver-error reading.

The loaders (``bulk/aio.py`` and its generated twin ``bulk/shell.py``) differ only in how they wait;
everything else they need that is not a pure decision (``bulk/plan.py``) lives here.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import IO, Any

from psycopg import sql
from psycopg.adapt import PyFormat, Transformer
from psycopg.pq import Format

from dbscale.bulk.plan import Batch, Progress, Rejected, Row, locate, value_of
from dbscale.errors import BadRowError, BulkLoadError

#: The resume bookkeeping, one row per load, in each target database (written in each batch's transaction).
PROGRESS_TABLE = "dbscale_bulk_loads"
#: One row per load and lane: ``load_id`` is the caller's resume id (``id#lane`` with parallel lanes);
#: ``position`` the input row number up to which that lane's rows are committed or rejected; the
#: batch size and lane count fix which rows a lane holds, so a resume adopts them.
CREATE_PROGRESS = (
    f"CREATE TABLE IF NOT EXISTS {PROGRESS_TABLE} (load_id text PRIMARY KEY, target text NOT NULL,"
    " position bigint NOT NULL, loaded bigint NOT NULL, rejected bigint NOT NULL,"
    " batch_rows integer NOT NULL, lanes integer NOT NULL, updated_at timestamptz NOT NULL DEFAULT now())"
)
#: A load's batches hold its lock shared until they commit; reading its positions takes it exclusive, so a
#: resumed load waits for a batch still in flight (a killed or cancelled client's COMMIT may land late: read
#: before it, the position would be short and the batch loaded twice). Keyed by the load id without its lane.
LOAD_LOCK_KEY = "hashtextextended('dbscale_bulk:' || %s, 0)"
LOCK_LOAD = f"SELECT pg_advisory_xact_lock({LOAD_LOCK_KEY})"
#: How long the wait for that lock may take (``lock_timeout``, this transaction only) before the load names the
#: backend holding it: a client gone without the server noticing (a network cut) leaves it open for hours.
LIMIT_LOCK_WAIT = "SELECT set_config('lock_timeout', %s, true)"
#: The backends holding a load's lock: pid, state, seconds since their transaction began.
LOAD_LOCK_HOLDERS = (
    "SELECT a.pid, a.state, coalesce(round(extract(epoch FROM now() - a.xact_start))::int, 0)"
    " FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid"
    " WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 1"
    f" AND ((l.classid::bigint << 32) | l.objid::bigint) = {LOAD_LOCK_KEY} ORDER BY a.pid"
)
READ_PROGRESS = (
    f"SELECT load_id, target, position, batch_rows, lanes FROM {PROGRESS_TABLE}"
    " WHERE load_id = %s OR starts_with(load_id, %s)"
)
RECORD_PROGRESS = (
    f"INSERT INTO {PROGRESS_TABLE} AS p (load_id, target, position, loaded, rejected, batch_rows, lanes)"
    f" SELECT %s::text, %s::text, %s::bigint, %s::bigint, %s::bigint, %s::integer, %s::integer"
    f" FROM pg_advisory_xact_lock_shared({LOAD_LOCK_KEY})"
    " ON CONFLICT (load_id) DO UPDATE SET position = excluded.position,"
    " loaded = p.loaded + excluded.loaded, rejected = p.rejected + excluded.rejected, updated_at = now()"
)
FORGET_PROGRESS = f"DELETE FROM {PROGRESS_TABLE} WHERE load_id = %s OR starts_with(load_id, %s)"
#: The table a name means, as SQL reads it (``t``, ``schema.t``, ``"MixedCase"``), printed back quoted where it must
#: be; NULL when there is none (a name that is not SQL name syntax raises ``InvalidName``).
RELATION_SQL = "SELECT to_regclass(%s)::text"
#: The table's loadable columns in order, with their types (generated columns cannot be loaded).
COLUMNS_SQL = (
    "SELECT attname, format_type(atttypid, atttypmod), atttypid::int FROM pg_attribute"
    " WHERE attrelid = to_regclass(%s) AND attnum > 0 AND NOT attisdropped AND attgenerated = ''"
    " ORDER BY attnum"
)
FOREVER = 1e9  # a deadline for the lanes and the reader that nothing reaches


def in_flight_error(resume: str, group: str, wait: str, holders: Sequence[tuple[int, str, int]]) -> BulkLoadError:
    """The error of a resumed load that waited ``wait`` for batches of its load still open on ``group``."""
    held = "; ".join(f"backend {pid}: {state}, its transaction open {secs} s" for pid, state, secs in holders)
    ends = " or ".join(f"SELECT pg_terminate_backend({pid})" for pid, _, _ in holders)
    return BulkLoadError(
        f"resume id {resume!r}: a batch of this load is still open on group {group!r} after {wait}"
        f" ({held or 'it ended meanwhile'}); its client may be gone without the server noticing."
        + (
            f" Wait and run again, or end it with {ends} and run again (its batch rolls back and is loaded again)"
            if holders
            else " Run again"
        )
    )


def copy_statement(relation: str, columns: Sequence[str], fmt: str) -> sql.Composed:
    """``COPY t (a, b) FROM STDIN (FORMAT binary|text|csv)``; ``relation`` is the table's name as the server
    prints a ``regclass`` (:data:`RELATION_SQL`: quoted where it must be, so it is used as it is)."""
    return sql.SQL("COPY {} ({}) FROM STDIN (FORMAT {})").format(
        sql.SQL(relation), sql.SQL(", ").join(map(sql.Identifier, columns)), sql.SQL(fmt)
    )


def check_options(batch_rows: int, parallel: int, on_error: str, reject_file: str | Path | None) -> None:
    """Refuse settings that cannot work, before anything is loaded."""
    if batch_rows < 1:
        raise BulkLoadError(f"batch_rows={batch_rows}: must be at least 1 (e.g. 10000)")
    if parallel < 1:
        raise BulkLoadError(f"parallel={parallel}: must be at least 1 (connections per group; e.g. 2)")
    if on_error not in ("stop", "skip"):
        raise BulkLoadError(f"on_error={on_error!r}: use 'stop' (raise on the first bad row) or 'skip'")
    if on_error == "stop" and reject_file is not None:
        raise BulkLoadError("a reject file is written only with on_error='skip'")


def rejected_from(
    exc: BaseException, batch: Batch, lo: int, hi: int, columns: Sequence[str]
) -> tuple[int | None, Rejected]:
    """Where a failed COPY of ``batch[lo:hi]`` stopped (an index into the batch, if the server said) and why."""
    diag = getattr(exc, "diag", None)
    where = locate(
        getattr(diag, "context", None), getattr(diag, "message_detail", None), getattr(diag, "column_name", None)
    )
    reason = (getattr(diag, "message_primary", None) or str(exc)).strip()
    if where.line is None or not 1 <= where.line <= hi - lo:
        return None, Rejected(batch.numbers[lo], reason)
    index = lo + where.line - 1
    row = batch.row(index)
    return index, Rejected(
        row.number, reason, where.column, value_of(row, columns, where.column, where.value), shown(row)
    )


def shown(row: Row) -> Any:
    """A row's data as the reject file shows it (a raw CSV record as text)."""
    return row.values.decode(errors="replace").rstrip("\r\n") if isinstance(row.values, bytes) else row.values


def bad_row_error(bad: Rejected, resume: str | None) -> BadRowError:
    """The error of a ``stop`` load: the row, column and value, what is committed, and how to go on."""
    again = f"run again with resume={resume!r} (CLI: --resume)" if resume else "load the rest again"
    return BadRowError(
        f"{bad.describe()}. The rows before it are committed, none after it; fix the row and {again}, "
        "or use on_error='skip' (CLI: --on-error skip) to set bad rows aside in a reject file",
        row=bad.number,
        column=bad.column,
        value=bad.value,
    )


class RejectFile:
    """Rejected rows as JSON lines ``{"row", "column", "value", "reason", "data"}``, appended (resume keeps earlier ones)."""

    def __init__(self, path: str | Path | None) -> None:
        self.path = None if path is None else Path(path)
        self._file: IO[bytes] | None = None
        self._lock = threading.Lock()  # shard groups load in parallel threads (blocking flavour)
        if self.path is not None:  # checked before the load: the first bad row may come after many committed batches
            parent = self.path.parent
            if self.path.is_dir() or not parent.is_dir():
                where = (
                    "is a directory"
                    if self.path.is_dir()
                    else f"is in {str(parent)!r}, which {'is not a directory' if parent.exists() else 'does not exist'}"
                )
                raise BulkLoadError(f"reject_file {str(self.path)!r} {where}: name a file in an existing directory")
            if not os.access(self.path if self.path.exists() else self.path.parent, os.W_OK):
                raise BulkLoadError(f"reject_file {str(self.path)!r} cannot be written here: pick a writable path")

    def write(self, bad: Rejected) -> None:
        """Append one rejected row (flushed at once: the file is the record of what was set aside)."""
        if self.path is None:
            return
        import orjson  # only when a row is set aside: a load without rejects does not import it

        record = {"row": bad.number, "column": bad.column, "value": bad.value, "reason": bad.reason, "data": bad.data}
        line = orjson.dumps(record, default=str) + b"\n"
        with self._lock:
            try:
                if self._file is None:
                    self._file = self.path.open("ab")
                self._file.write(line)
                self._file.flush()
            except OSError as exc:
                broken, self._file = self._file, None
                if broken is not None:  # its unwritten line would fail again at close: dropped with it
                    with contextlib.suppress(OSError):
                        broken.close()
                raise BulkLoadError(
                    f"cannot write row {bad.number} to the reject file {str(self.path)!r} ({exc.strerror or exc});"
                    " the rows before it are committed: free the disk or fix the path, then load again with the"
                    " same resume id"
                ) from exc

    def close(self) -> None:
        """Close the file if one was opened."""
        if self._file is not None:
            self._file.close()
            self._file = None


class ProgressBar:
    """A rich progress bar on stderr: rows loaded, rows/s, elapsed (no total: the input is a stream)."""

    def __init__(self, table: str) -> None:
        from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeElapsedColumn
        from rich.progress import Progress as RichBar

        self._bar = RichBar(
            TextColumn(f"loading {table}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[rate]} rows/s"),
            TimeElapsedColumn(),
            transient=False,
        )
        self._task = self._bar.add_task("load", total=None, rate="-")
        self._bar.start()

    def __call__(self, progress: Progress) -> None:
        self._bar.update(self._task, completed=progress.loaded, rate=f"{progress.rows_per_second:,.0f}")

    def close(self) -> None:
        """Stop drawing."""
        self._bar.stop()


def progress_callback(progress: bool | Callable[[Progress], None], table: str) -> Callable[[Progress], None] | None:
    """The callback to call after each flush: ours (``True``), the caller's, or none."""
    if progress is True:
        return ProgressBar(table)
    if progress is False:
        return None
    return progress


def close_callback(callback: Callable[[Progress], None] | None) -> None:
    """Stop our progress bar (a caller's callback is left alone)."""
    if isinstance(callback, ProgressBar):
        callback.close()


def elapsed(start: float) -> float:
    """Seconds since ``start`` (``time.perf_counter()``)."""
    return time.perf_counter() - start


def is_row_error(exc: BaseException) -> bool:
    """A server error caused by the data of some row (a data exception or a constraint), not by the connection or SQL."""
    code = getattr(exc, "sqlstate", None) or ""
    return code[:2] in ("22", "23")


__all__ = [
    "COLUMNS_SQL",
    "CREATE_PROGRESS",
    "FOREVER",
    "FORGET_PROGRESS",
    "LIMIT_LOCK_WAIT",
    "LOAD_LOCK_HOLDERS",
    "LOCK_LOAD",
    "PROGRESS_TABLE",
    "READ_PROGRESS",
    "RECORD_PROGRESS",
    "RELATION_SQL",
    "ProgressBar",
    "RejectFile",
    "bad_row_error",
    "check_options",
    "close_callback",
    "copy_statement",
    "dump_culprit",
    "elapsed",
    "in_flight_error",
    "is_row_error",
    "progress_callback",
    "rejected_from",
    "shown",
]


class _Abandoned(Exception):
    """Raised inside a lane's transaction when the lane before it stopped on a bad row (rolls this one back)."""


class _DumpFailed(Exception):
    """Raised inside a batch's transaction when psycopg cannot dump a row's value (rolls the batch back)."""

    def __init__(self, index: int, error: BaseException) -> None:
        super().__init__(str(error))
        self.index = index
        self.error = error


def dump_culprit(values: Sequence[object], oids: Sequence[int], columns: Sequence[str]) -> tuple[str | None, object]:
    """The first column whose value psycopg cannot dump in binary for its type (the column and the value)."""
    tx = Transformer()
    for column, value, oid in zip(columns, values, oids, strict=False):
        tx.set_dumper_types([oid], Format.BINARY)
        try:
            tx.dump_sequence([value], [PyFormat.BINARY])
        except Exception:
            return column, value
    return None, None
