"""The asyncio bulk loader: COPY per batch, one commit per batch, resumable, shard-aware.

``bulk/aio.py`` is the source; ``bulk/shell.py`` (blocking) is generated from it by
``scripts/unasync.py``. The decisions (numbering, routing, batching, resume skipping, splitting a
failed batch) are in ``bulk/plan.py``; SQL, the reject file and the progress bar in ``bulk/base.py``.

Each batch is one transaction on its group's primary (through the group's router, so a write goes
where ``cluster.write()`` would): the resume record (``dbscale_bulk_loads``) is updated and the rows
are sent with ``COPY … FROM STDIN`` — binary when psycopg can dump every column type, text
otherwise, CSV as is for raw CSV records — then the router commits. A batch that fails on a row is
split (:func:`dbscale.bulk.plan.split_failed`) and its good rows are committed without the bad one.
"""

from __future__ import annotations

import math
import time
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Iterator
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import psycopg

from dbscale._compat import AEvent, ALock, AWorkers, aevent_wait, asleep
from dbscale.bulk.base import (
    COLUMNS_SQL,
    CREATE_PROGRESS,
    FOREVER,
    FORGET_PROGRESS,
    LIMIT_LOCK_WAIT,
    LOAD_LOCK_HOLDERS,
    LOCK_LOAD,
    READ_PROGRESS,
    RECORD_PROGRESS,
    RELATION_SQL,
    RejectFile,
    _Abandoned,
    _DumpFailed,
    bad_row_error,
    check_options,
    close_callback,
    copy_statement,
    dump_culprit,
    elapsed,
    in_flight_error,
    is_row_error,
    progress_callback,
    rejected_from,
    shown,
)
from dbscale.bulk.plan import (
    Batch,
    Chunk,
    InputFormat,
    OnError,
    Progress,
    Rejected,
    Row,
    chunks,
    copy_format,
    csv_data,
    csv_fields,
    group_of,
    key_from_text,
    split_failed,
    target_name,
    to_values,
)
from dbscale.config import libpq_conninfo, mask_url
from dbscale.errors import AuthenticationFailed, BulkLoadError, PrimaryUnavailable
from dbscale.readiness import not_ready, refused

if TYPE_CHECKING:
    from dbscale.cluster_aio import AsyncCluster
    from dbscale.config import TopologyConfig
    from dbscale.sharding.shardmap import ShardMap

Work = tuple[int, int] | Rejected
QUEUED = 2  # batches read ahead per lane (memory: about lanes × groups × (QUEUED + 1) batches)
READER = "#reader"  # the name of the call that reads the input (no group's)


class _Gate:
    """Whether a lane's batch has finished, and finished well (orders the commits of a group's lanes)."""

    def __init__(self) -> None:
        self.done = AEvent()
        self.ok = False

    def finish(self, ok: bool) -> None:
        self.ok = ok
        self.done.set()


@dataclass(slots=True)
class _Item:
    """Chunk ``index``'s batch for ``target``; with ordered commits, the gate to wait for and the gate to open."""

    index: int
    target: str
    batch: Batch
    after: _Gate | None
    gate: _Gate | None


class _Queue:
    """One target's batches, put by the reader and taken by the target's lane (in input order)."""

    def __init__(self) -> None:
        self.items: deque[_Item] = deque()
        self.filled = AEvent()  # set when an item is put, the input ends or the load stops
        self.taken = AEvent()  # set when an item is taken or the load stops
        self.closed = False


class AsyncPrimaries:
    """Each group's write endpoint reached with psycopg alone: what ``dbscale load`` loads through.

    The endpoint is where ``cluster.write(group)`` sends a write — the group's PgBouncer when writes
    go through it, else its primary — with the same connect timeout; but there is no SQLAlchemy and
    no router to import and start (the CLI process starts sooner), and one connection per lane
    stays open for the whole load. A group whose primary Patroni elects (``patroni`` configured)
    needs the router's discovery: load through the cluster then (:meth:`direct` says which).
    """

    def __init__(self, config: TopologyConfig) -> None:
        self.config = config
        self._connections: dict[str, psycopg.AsyncConnection[Any]] = {}
        self._opening: dict[str, ALock] = {}  # one connect per target, however many callers ask at once

    @staticmethod
    def direct(config: TopologyConfig) -> bool:
        """Whether every group's writer is known from the config alone (no Patroni election to follow)."""
        return not any(group.patroni for group in config.groups.values())

    def default_group(self) -> str:
        """``main`` if configured, else the only group (as ``Cluster.default_group``)."""
        return self.config.default_group()

    @property
    def shard_map(self) -> ShardMap:
        """The shard map of ``[sharding]`` (a ConfigError without one)."""
        from dbscale.sharding.shardmap import shard_map_of  # sharded loads only

        return shard_map_of(self.config.sharding_section())

    @asynccontextmanager
    async def transaction(self, target: str) -> AsyncIterator[psycopg.AsyncConnection[Any]]:
        """One transaction on ``target``'s connection (opened on first use), committed when the block ends.

        A connection the block left busy (cancelled mid-COPY: its rollback cannot be sent) is closed, and
        the next transaction opens a new one.
        """
        conn = await self._begin(target)
        try:
            yield conn
        except BaseException:
            await self._abandon(conn)
            raise
        try:
            await conn.commit()
        finally:  # a COMMIT interrupted before its answer leaves the connection in no state to reuse
            if conn.info.transaction_status != psycopg.pq.TransactionStatus.IDLE:
                await conn.close()

    @staticmethod
    async def _abandon(conn: psycopg.AsyncConnection[Any]) -> None:
        """Roll back; close the connection if that left it anything but idle (busy, broken, cancelled mid-statement)."""
        with suppress(psycopg.Error):
            await conn.rollback()
        if conn.info.transaction_status != psycopg.pq.TransactionStatus.IDLE:
            await conn.close()

    async def _begin(self, target: str) -> psycopg.AsyncConnection[Any]:
        """``target``'s connection with a transaction begun; as ``cluster.write()`` does before your code runs, a
        writer not ready yet (restarting, PgBouncer's ``server_login_retry``) or a connection that died while idle
        is waited out within the group's ``write_timeout`` — nothing of the batch was sent yet."""
        group = group_of(target)
        deadline = time.monotonic() + self.config.group(group).write_timeout
        while True:
            try:
                conn = await self.connection(target)
            except PrimaryUnavailable:
                if time.monotonic() >= deadline:
                    raise
                await asleep(0.05)
                continue
            try:
                await conn.execute("BEGIN")
                return conn
            except psycopg.Error as exc:
                lost = conn.pgconn.status != psycopg.pq.ConnStatus.OK
                await conn.close()  # the next try opens a new one
                if not (lost or not_ready(exc)):
                    raise
                if time.monotonic() >= deadline:
                    raise PrimaryUnavailable(
                        f"group {group!r}: its writer did not take a transaction within write_timeout"
                        f" ({self.config.group(group).write_timeout:g}s): {' '.join(str(exc).split())}"
                    ) from None
            except BaseException:  # cancelled (or interrupted) before BEGIN's answer: not left busy for the next one
                await self._abandon(conn)
                raise
            await asleep(0.05)

    async def connection(self, target: str) -> psycopg.AsyncConnection[Any]:
        """``target``'s connection, opened on first use (a lane opens it when it starts, before its first batch)."""
        async with self._opening.setdefault(target, ALock()):
            conn = self._connections.get(target)
            if conn is None or conn.closed:
                conn = self._connections[target] = await self._connect(group_of(target))
        return conn

    async def _connect(self, group: str) -> psycopg.AsyncConnection[Any]:
        cfg = self.config.group(group)
        bouncer = cfg.pgbouncer is not None and cfg.write_via_pgbouncer
        url = str(cfg.pgbouncer if bouncer else cfg.primary)
        timeout = max(1, min(round(cfg.pool.connect_timeout), math.ceil(cfg.write_timeout)))
        options: dict[str, Any] = {"prepare_threshold": None} if bouncer else {}  # as the cluster's engines
        try:
            return await psycopg.AsyncConnection.connect(
                libpq_conninfo(url), autocommit=True, connect_timeout=timeout, **options
            )
        except psycopg.OperationalError as exc:
            what = "PgBouncer" if bouncer else "primary"
            why = " ".join(str(exc).split())
            if refused(exc):  # as cluster.write(): at once, not retried within write_timeout
                raise AuthenticationFailed(
                    f"group {group!r}: its {what} {mask_url(url)} refused the connection: {why} — fix the user,"
                    " password or database name in its URL (retrying will not help)"
                ) from None
            raise PrimaryUnavailable(
                f"group {group!r}: connecting to its {what} {mask_url(url)} failed: {why}"
            ) from None

    async def close(self) -> None:
        """Close every connection."""
        connections, self._connections = list(self._connections.values()), {}
        for conn in connections:
            await conn.close()

    async def __aenter__(self) -> AsyncPrimaries:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


class AsyncBulkLoader:
    """One load of ``rows`` into ``table`` (see :func:`bulk_load_async` for the parameters)."""

    #: How long a resumed load waits for a batch of its load still open (a dead client's) before naming it.
    resume_wait = "30s"

    def __init__(
        self,
        cluster: AsyncCluster | AsyncPrimaries,
        table: str,
        *,
        columns: list[str] | None = None,
        batch_rows: int = 10_000,
        parallel: int = 1,
        progress: bool | Callable[[Progress], None] = True,
        on_error: OnError = "stop",
        resume: str | None = None,
        restart: bool = False,
        reject_file: str | Path | None = None,
        shard_key: str | None = None,
        entity: str | None = None,
        input_format: InputFormat = "rows",
        group_for: Callable[[Row], str] | None = None,
    ) -> None:
        check_options(batch_rows, parallel, on_error, reject_file)
        self.cluster = cluster
        self.table = table
        self.relation = table  # the table as the server names it (read by _describe)
        self.columns = list(columns) if columns else []
        self.batch_rows = batch_rows
        self.lanes = parallel
        self.on_error = on_error
        self.resume = resume
        self.restart = restart
        self.rejects = RejectFile(reject_file)
        self.shard_key = shard_key
        self.entity = entity
        self.raw_csv = input_format == "csv"
        self.text_values = input_format == "text"
        self.group_for = group_for
        self.callback = progress_callback(progress, table)
        self.progress = Progress()
        self.types: list[str] = []
        self.oids: list[int] = []
        self.binary = False
        self._start = time.perf_counter()
        self._lock = ALock()
        self._queues: dict[str, _Queue] = {}
        self._stop_at: int | None = None
        self._errors: list[tuple[int, Exception]] = []

    # -- the load ------------------------------------------------------------------------------------
    async def run(self, rows: Iterable[Any]) -> Progress:
        """Load every row; the counts (loaded, rejected, skipped by resume, batches, seconds).

        One reader (numbering, converting and routing the input chunk by chunk) feeds one queue per
        target; each target's lane takes its next batch as soon as its last one is committed, with
        no round for the lanes to wait for each other at. An error stops the reader and every lane
        before the first chunk after the failing one; what the lanes had committed stays committed,
        and the error of the earliest chunk is raised.
        """
        self._start = time.perf_counter()
        groups = list(self.cluster.config.groups) if self._sharded() else [self.cluster.default_group()]
        try:
            await self._describe(groups)
            group_for = self._router()
            positions = await self._positions(groups) if self.resume else {}
        except psycopg.Error as exc:
            raise self._failed(exc) from exc
        convert = self._check_raw if self.raw_csv else self._to_values
        width = None if self.raw_csv else len(self.columns)
        self._queues = {target_name(g, lane, self.lanes): _Queue() for g in groups for lane in range(self.lanes)}
        self._stop_at = None
        self._errors = []
        source = chunks(
            rows, self.batch_rows, convert, width, group_for, groups[0], positions, self.progress, self.lanes
        )
        workers = AWorkers(len(self._queues) + 1, "dbscale-bulk")
        calls = {target: self._lane(target, queue) for target, queue in self._queues.items()}
        calls[READER] = self._reader(source)
        try:
            await workers.run(calls, FOREVER)
            if self._errors:
                raise min(self._errors, key=lambda pair: pair[0])[1]
        except psycopg.Error as exc:  # not a row's fault: the statement, the server, the connection
            raise self._failed(exc) from exc
        finally:
            self._halt(-1)  # a lane or the reader still running (an interrupt) ends after its batch
            workers.close(wait=True)  # blocking lanes still loading (Ctrl-C) end with their batch
            self.rejects.close()
            close_callback(self.callback)
        self.progress.seconds = elapsed(self._start)
        return self.progress

    def _failed(self, exc: psycopg.Error) -> BulkLoadError:
        """The load's error for one that is not a row's fault: the statement, the server, the connection."""
        return BulkLoadError(
            f"loading {self.table!r} failed: {' '.join(str(exc).split())} ({self.progress.loaded} rows committed in"
            " this run; fix the cause and load again with the same resume id to continue after them)"
        )

    def _reader(self, source: Iterator[Chunk]) -> Callable[[], Awaitable[None]]:
        async def read() -> None:
            last: dict[str, _Gate] = {}  # each group's gate of its latest batch (on_error="stop", parallel lanes)
            gated = self.on_error == "stop" and self.lanes > 1
            index = 0
            try:
                for index, chunk in enumerate(source):
                    if self._stop_at is not None:
                        return
                    batches = chunk.batches
                    if chunk.rejected and self.on_error == "stop":  # everything before the bad row is committed first
                        batches = {t: b.before(chunk.rejected[0].number) for t, b in batches.items()}
                    for target, batch in batches.items():
                        if not len(batch):
                            continue
                        group = group_of(target)
                        gate = _Gate() if gated else None
                        after = last.get(group)
                        if gate is not None:
                            last[group] = gate
                        await self._put(self._queues[target], _Item(index, target, batch, after, gate))
                    for bad in chunk.rejected:
                        await self._reject(bad)
                index += 1
            except Exception as exc:  # an input error or a bad row (stop): raised after what came before it
                self._fail(index, exc)
            finally:
                for queue in self._queues.values():
                    queue.closed = True
                    queue.filled.set()

        return read

    def _lane(self, target: str, queue: _Queue) -> Callable[[], Awaitable[None]]:
        async def lane() -> None:
            try:
                await self._open(target)
                while (item := await self._take(queue)) is not None:
                    try:
                        result = await self._load(target, item.batch, item.after, item.gate)
                    except Exception as exc:  # a bad row (stop), or the server's or connection's error
                        self._fail(item.index, exc)
                        return
                    await self._count(target, *result)
            finally:
                self._drop(queue)

        return lane

    async def _open(self, target: str) -> None:
        """Connect ``target``'s lane while the reader cuts its first batch (the CLI's lanes connect side by side).

        A failure here is left to the lane's first batch, which connects again and reports it as a load
        error; a lane that gets no batch (a short input) must not fail the load.
        """
        if isinstance(self.cluster, AsyncPrimaries):
            with suppress(PrimaryUnavailable):
                await self.cluster.connection(target)

    async def _put(self, queue: _Queue, item: _Item) -> None:
        """Queue ``item`` for its lane, waiting while the lane has ``QUEUED`` batches not yet taken."""
        while len(queue.items) >= QUEUED and self._stop_at is None:
            queue.taken.clear()
            if len(queue.items) < QUEUED or self._stop_at is not None:
                break
            await aevent_wait(queue.taken, FOREVER)
        queue.items.append(item)
        queue.filled.set()

    async def _take(self, queue: _Queue) -> _Item | None:
        """The lane's next batch; None at the end of the input, or when a stop leaves it none to load."""
        while True:
            if queue.items:
                stop = self._stop_at
                if stop is not None and queue.items[0].index > stop:
                    self._drop(queue)
                    return None
                item = queue.items.popleft()
                queue.taken.set()
                return item
            if queue.closed or self._stop_at is not None:
                return None
            queue.filled.clear()
            if queue.items or queue.closed or self._stop_at is not None:
                continue
            await aevent_wait(queue.filled, FOREVER)

    @staticmethod
    def _drop(queue: _Queue) -> None:
        """Leave the lane's queued batches unloaded: a later lane waiting for one to commit gives up too."""
        while queue.items:
            gate = queue.items.popleft().gate
            if gate is not None:
                gate.finish(False)
        queue.taken.set()

    def _fail(self, index: int, error: Exception) -> None:
        self._errors.append((index, error))
        self._halt(index)

    def _halt(self, index: int) -> None:
        """Take no chunk after ``index`` (the batches before it are still loaded); wake every waiting lane and the reader."""
        self._stop_at = index if self._stop_at is None else min(self._stop_at, index)
        for queue in self._queues.values():
            queue.filled.set()
            queue.taken.set()

    async def _count(self, target: str, loaded: int, rejected: int, commits: int) -> None:
        async with self._lock:
            self.progress.loaded += loaded
            self.progress.rejected += rejected
            self.progress.batches += commits
            group = group_of(target)
            self.progress.per_group[group] = self.progress.per_group.get(group, 0) + loaded
            self.progress.seconds = elapsed(self._start)
            if self.callback is not None:
                self.callback(self.progress)

    async def _load(
        self, target: str, batch: Batch, after: _Gate | None = None, gate: _Gate | None = None
    ) -> tuple[int, int, int]:
        """Load one target's batch, splitting it around bad rows; (rows loaded, rows rejected, commits).

        ``after``: commit only once that lane has finished well (else roll back and give up);
        ``gate``: opened when this batch is done, saying whether it finished well.
        """
        loaded = rejected = commits = 0
        ok = False
        try:
            loaded, rejected, commits = await self._split_load(target, batch, after)
            ok = True
        except _Abandoned:
            pass
        finally:
            if gate is not None:
                gate.finish(ok)
        return loaded, rejected, commits

    async def _split_load(self, target: str, batch: Batch, after: _Gate | None) -> tuple[int, int, int]:
        work: deque[Work] = deque([(0, len(batch))])
        loaded = rejected = commits = unrecorded = 0
        while work:
            item = work.popleft()
            if isinstance(item, Rejected):
                await self._reject(item, counted=True)
                rejected += 1
                unrecorded += 1
                continue
            lo, hi = item
            failure = await self._copy(target, batch, lo, hi, unrecorded, after)
            if failure is None:
                loaded += hi - lo
                commits += 1
                unrecorded = 0
                continue
            index, bad = failure
            split = split_failed(lo, hi, index)
            retry: list[Work] = [split.before] if split.before else []
            if split.reject is not None:
                retry.append(
                    bad if index is not None else replace(bad, number=batch.numbers[lo], data=shown(batch.row(lo)))
                )
            work.extendleft(reversed([*retry, *split.after]))
        if unrecorded and self.resume:
            await self._record(target, batch.numbers[-1], unrecorded)
        return loaded, rejected, commits

    async def _copy(
        self, target: str, batch: Batch, lo: int, hi: int, unrecorded: int, after: _Gate | None = None
    ) -> tuple[int | None, Rejected] | None:
        """COPY ``batch[lo:hi]`` and record the resume position in one transaction; None, or where it failed."""
        try:
            async with self._transaction(target) as pg:
                if self.resume:
                    await pg.execute(
                        RECORD_PROGRESS, self._record_args(target, batch.numbers[hi - 1], hi - lo, unrecorded)
                    )
                cur = pg.cursor()
                try:
                    async with cur.copy(self._statement()) as copy:
                        if self.raw_csv:
                            await copy.write(csv_data(batch.values, lo, hi))
                        else:
                            if self.binary:
                                copy.set_types(self.oids)
                            for i in range(lo, hi):
                                try:
                                    await copy.write_row(batch.values[i])
                                except (TypeError, ValueError, psycopg.DataError) as exc:
                                    raise _DumpFailed(i, exc) from exc
                except ValueError as exc:
                    if pg.pgconn.status == psycopg.pq.ConnStatus.OK:
                        raise
                    # psycopg 3.3 ends a COPY whose server died mid-way with "too many values to unpack"
                    # (the server's error and the end of the stream read as two results): a lost connection
                    raise psycopg.OperationalError(f"the connection was lost during COPY ({exc})") from exc
                if after is not None:  # the lane before commits first; if it stopped, so does this one
                    await aevent_wait(after.done, FOREVER)
                    if not after.ok:
                        raise _Abandoned
        except _DumpFailed as exc:
            row = batch.row(exc.index)
            column, value = dump_culprit(batch.values[exc.index], self.oids, self.columns)
            reason = f"cannot be sent as {self._type_of(column)}: {exc.error}"
            return exc.index, Rejected(row.number, reason, column, value, row.values)
        except psycopg.Error as exc:
            if not is_row_error(exc):
                raise
            return rejected_from(exc, batch, lo, hi, self.columns)
        return None

    async def _reject(self, bad: Rejected, counted: bool = False) -> None:
        """Set ``bad`` aside (``skip``), or stop the load with an error naming it (``stop``)."""
        if self.on_error == "stop":
            raise bad_row_error(bad, self.resume)
        self.rejects.write(bad)
        if not counted:  # a batch's rejections are counted when its lane reports
            async with self._lock:
                self.progress.rejected += 1

    async def _record(self, target: str, position: int, rejected: int) -> None:
        """Move the resume position past rejected rows that no later batch of this target covered."""
        async with self._transaction(target) as pg:
            await pg.execute(RECORD_PROGRESS, self._record_args(target, position, 0, rejected))

    @asynccontextmanager
    async def _transaction(self, target: str) -> AsyncIterator[Any]:
        """One transaction on ``target``'s group primary as a psycopg connection, committed when the block ends."""
        if isinstance(self.cluster, AsyncPrimaries):
            async with self.cluster.transaction(target) as pg:
                yield pg
        else:
            async with self.cluster.write(group_of(target)) as conn:
                yield (await conn.get_raw_connection()).driver_connection

    def _record_args(self, target: str, position: int, loaded: int, rejected: int) -> list[Any]:
        """The resume record of ``target``: the load id, plus ``#lane`` with parallel lanes."""
        load_id = f"{self.resume}{target[len(group_of(target)) :]}"
        return [load_id, self.table, position, loaded, rejected, self.batch_rows, self.lanes, self.resume]

    # -- set-up ----------------------------------------------------------------------------------------
    async def _describe(self, groups: list[str]) -> None:
        """Read the table's columns and types (on the first group that has the table); pick the COPY format."""
        found: list[tuple[str, str, int]] = []
        for group in groups:
            async with self._transaction(target_name(group, 0, self.lanes)) as pg:
                try:
                    relation = (await (await pg.execute(RELATION_SQL, [self.table])).fetchone() or [None])[0]
                except psycopg.errors.InvalidName as exc:
                    raise BulkLoadError(
                        f"{self.table!r} is not a table name ({exc}): write it as in SQL, e.g. orders,"
                        ' sales.orders or "MixedCase"'
                    ) from None
                if relation is not None:
                    self.relation = str(relation)
                    cur = await pg.execute(COLUMNS_SQL, [self.relation])
                    found = await cur.fetchall()
            if found:
                break
        if not found:
            raise BulkLoadError(
                f"table {self.table!r} does not exist on group {groups[0]!r}: create it first (bulk_load loads, it does not create)"
            )
        types = {name: (type_name, oid) for name, type_name, oid in found}
        unknown = [c for c in self.columns if c not in types]
        if unknown:
            raise BulkLoadError(f"{self.table!r} has no column {', '.join(map(repr, unknown))} (it has {list(types)})")
        self.columns = self.columns or list(types)
        self.types = [types[c][0] for c in self.columns]
        self.oids = [types[c][1] for c in self.columns]
        self.binary = copy_format(self.types) == "binary" and not self.text_values
        if self.shard_key is not None and self.shard_key not in self.columns:
            raise BulkLoadError(f"shard_key {self.shard_key!r} is not among the loaded columns {self.columns}")

    async def _positions(self, groups: list[str]) -> dict[str, int]:
        """Each target's recorded resume position for this load (forgotten first with ``restart``).

        A load resumed with another ``batch_rows`` or ``parallel`` would put rows in other lanes
        than the recorded positions speak of: the recorded settings are adopted. A record of a load
        into another table is refused (resuming from it would skip rows this table never got).
        """
        positions: dict[str, int] = {}
        for group in groups:
            target = target_name(group, 0, self.lanes)
            try:
                async with self._transaction(target) as pg:
                    await pg.execute(CREATE_PROGRESS)
                    await pg.execute(LIMIT_LOCK_WAIT, [self.resume_wait])
                    await pg.execute(LOCK_LOAD, [self.resume])  # after every batch still in flight has ended
                    if self.restart:
                        await pg.execute(FORGET_PROGRESS, [self.resume, f"{self.resume}#"])
                    cur = await pg.execute(READ_PROGRESS, [self.resume, f"{self.resume}#"])
                    found = await cur.fetchall()
            except psycopg.errors.LockNotAvailable:
                async with self._transaction(target) as pg:
                    holders = await (await pg.execute(LOAD_LOCK_HOLDERS, [self.resume])).fetchall()
                raise in_flight_error(str(self.resume), group, self.resume_wait, holders) from None
            for load_id, table, position, batch_rows, lanes in found:
                if table != self.table:
                    raise BulkLoadError(
                        f"resume id {self.resume!r} holds the position of a load into {table!r}, not {self.table!r}:"
                        " give this load a resume id of its own (or restart=True to forget that record)"
                    )
                self.batch_rows, self.lanes = int(batch_rows), int(lanes)
                positions[group + str(load_id)[len(str(self.resume)) :]] = int(position)
        return positions

    def _sharded(self) -> bool:
        return self.group_for is not None or self.shard_key is not None

    def _router(self) -> Callable[[Row], str] | None:
        """The seam that names a row's group: the caller's, the cluster's shard map, or None (the default group)."""
        if self.group_for is not None:
            return self.group_for
        if self.shard_key is None:
            return None
        shard_map = self.cluster.shard_map  # a ConfigError naming [sharding] when the cluster has none
        # the named entity's scheme; else the table's own [sharding.entities.<table>] if there is one, else the default
        entity = self.entity if self.entity is not None or self.table not in shard_map.entities else self.table
        index, type_name = self.columns.index(self.shard_key), self.types[self.columns.index(self.shard_key)]

        def group_for(row: Row) -> str:
            values = row.values
            key = key_from_text(csv_fields(values)[index], type_name) if isinstance(values, bytes) else values[index]
            return shard_map.group_for(entity, key)

        return group_for

    def _statement(self) -> Any:
        return copy_statement(
            self.relation, self.columns, "csv" if self.raw_csv else "binary" if self.binary else "text"
        )

    def _type_of(self, column: str | None) -> str:
        return self.types[self.columns.index(column)] if column in self.columns else "its column type"

    def _to_values(self, raw: Any) -> tuple[Any, ...]:
        return to_values(raw, self.columns)

    @staticmethod
    def _check_raw(raw: Any) -> bytes:
        if not isinstance(raw, bytes):
            raise ValueError(f"input_format='csv' takes raw CSV records as bytes, not {type(raw).__name__}")
        return raw


async def bulk_load_async(
    cluster: AsyncCluster | AsyncPrimaries,
    table: str,
    rows: Iterable[Any],
    *,
    columns: list[str] | None = None,
    batch_rows: int = 10_000,
    parallel: int = 1,
    progress: bool | Callable[[Progress], None] = True,
    on_error: OnError = "stop",
    resume: str | None = None,
    restart: bool = False,
    reject_file: str | Path | None = None,
    shard_key: str | None = None,
    entity: str | None = None,
    input_format: InputFormat = "rows",
) -> Progress:
    """Load ``rows`` into ``table`` with COPY, committing every ``batch_rows`` rows.

    ``rows``: an iterable (read lazily, so memory stays bounded) of tuples in ``columns`` order or
    mappings by column name, holding Python values of the columns' types (sent with binary COPY
    where psycopg can dump every column type, text COPY otherwise); with ``input_format="text"``,
    values the server should parse from their text form (strings from a file: text COPY); with
    ``input_format="csv"``, raw CSV records as bytes (sent as is; see :func:`dbscale.bulk.csv_records`). ``columns``: default every column of
    the table. ``progress``: a progress bar on stderr (True), none (False), or a callable given the
    :class:`~dbscale.bulk.plan.Progress` after each batch.

    ``on_error="stop"`` raises :class:`~dbscale.BadRowError` naming the input row (1-based), the
    column and the value, after committing every row before it; ``"skip"`` writes bad rows to
    ``reject_file`` (JSON lines with the reason) and goes on. ``resume``: a load id under which the
    committed position is recorded in each batch's transaction (table ``dbscale_bulk_loads``), so
    running again with the same id after a crash or a bad row skips exactly what is committed;
    ``restart=True`` forgets that record first (a resumed load keeps the ``batch_rows`` and
    ``parallel`` it was recorded with). ``parallel``: connections per group loading side by side
    (chunk ``k`` of ``batch_rows`` rows goes to lane ``k % parallel``; each lane commits in order). ``shard_key``: route each row by this column
    through ``cluster.shard_for(entity, key)`` (no ``entity``: the table's own
    ``[sharding.entities.<table>]`` scheme if configured, else the default scheme) and load the shard groups in parallel.
    """
    loader = AsyncBulkLoader(
        cluster,
        table,
        columns=columns,
        batch_rows=batch_rows,
        parallel=parallel,
        progress=progress,
        on_error=on_error,
        resume=resume,
        restart=restart,
        reject_file=reject_file,
        shard_key=shard_key,
        entity=entity,
        input_format=input_format,
    )
    return await loader.run(rows)


__all__ = ["AsyncBulkLoader", "AsyncPrimaries", "bulk_load_async"]
