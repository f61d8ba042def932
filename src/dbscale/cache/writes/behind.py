# auto-generated from behind_aio.py by scripts/unasync.py — do not edit
"""The synchronous write-behind cache: acknowledge once Redis has the change, flush to PostgreSQL in batches.

Theory of operation. :meth:`WriteBehind.save` runs one Lua script that appends the change to
the table's Redis Stream and updates its cache entry (same order in both), and returns once Redis
has it (with ``wait_replicas=N``, once N Redis replicas have it, by ``WAIT``). Concurrent saves of
one object (threads, or tasks) share round trips: while one caller's round trip is in flight the
others queue and wait; when it ends, the callers it carried are woken with their replies, and the
caller of the oldest save still queued is woken to send every queued save in one round trip
(``WAIT`` last, on the same connection). Each caller returns only once Redis answered its own script.
The transport is the L2 GET fast path's (:mod:`dbscale.cache.l2`): each save is packed once
(``EVALSHA``, :func:`~dbscale.cache.writes.policy.pack_save`), a round trip is one write of the
concatenated commands on the object's own connection, then one read per reply, without redis-py's
pipeline object and per-command pool probe. A save is never sent twice: a connection the server
closed while idle is found before sending (:func:`~dbscale.cache.l2_base.closed`), and any error or
interruption after sending fails every save of that round trip (it may or may not be in Redis) and
drops the connection, so no reply is left for the next round trip to read. A flusher
(:class:`Flusher`: ``start_flusher()`` in-process, or ``dbscale write-behind run``) takes over
the stream by bumping an epoch in the database, then, each round, moves new entries into the
consumer group's pending list; when older entries are pending too (``XPENDING``: a dead or fenced
flusher's), it claims the oldest pending ones instead (``XAUTOCLAIM``, any consumer's), so changes
are always applied in stream order. In one database transaction it checks its epoch
(a flusher that was taken over stops), drops entries at or below the recorded stream id,
coalesces the rest per key, upserts them in one statement per column set (``unnest`` of one array per column), deletes, and records the new
stream id; only after COMMIT does it ``XACK`` and ``XDEL`` them. A change the database rejects is
retried alone in a savepoint, and on failure lands in the dead-letter stream with the error.

``behind_aio.py`` is the source; ``behind.py`` is generated from it by ``scripts/unasync.py``.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import time
import uuid
from collections import deque
from collections.abc import Mapping, Sequence
from typing import Any

import redis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError, OutOfMemoryError, RedisError, ResponseError
from sqlalchemy import exc as sa_exc
from sqlalchemy import text

from dbscale._compat import (
    Event,
    Lock,
    Runner,
    Wakeup,
    deadline,
    event_wait,
    join,
    sleep,
    spawn,
    try_acquire,
)
from dbscale.cache.core import CacheFront
from dbscale.cache.l2_base import Conn, closed, connected, drop, get_options, live, make_connection
from dbscale.cache.writes.base import Strategy
from dbscale.cache.writes.policy import (
    ADVANCE_SQL,
    CHECKPOINT_SQL,
    COLUMN_TYPES_SQL,
    DELETE,
    SAVE,
    SAVE_SCRIPT,
    SEND_BATCH,
    TAKEOVER_SQL,
    Batch,
    Change,
    Queued,
    as_str,
    decode_entries,
    decode_entry,
    group_rows,
    pack_save,
    pack_saves,
    pack_wait,
    parse_stream_id,
    plan_batch,
    risky_redis_settings,
    save_command_parts,
    unnest_params,
    unnest_upsert_sql,
)
from dbscale.cache.writes.through import RedisEntries, install_schema, read_row
from dbscale.errors import CacheUnavailable, FlusherFenced, FlushTimeout, NotReplicated
from dbscale.forks import AtFork, inherit

log = logging.getLogger("dbscale.write_behind")

GROUP = "dbscale-flush"
#: A consumer of the group idle this long with nothing pending is forgotten at the next takeover.
STALE_CONSUMER_MS = 600_000
#: Database errors that reject a change (it goes to the dead-letter stream), not the connection:
#: constraints, bad values, and statements the table cannot take (an unknown column).
REJECTED = (sa_exc.IntegrityError, sa_exc.DataError, sa_exc.ProgrammingError)


class WriteBehind:
    """``views = cluster.cache.write_behind("page_views", key_column="id", key="pv:{id}")``.

    ``save(row)`` / ``delete(id)`` return once Redis holds the change (and its cache entry);
    ``get(id)`` sees the newest acknowledged value before it is flushed; ``flush(timeout=)``
    returns once every change acknowledged before the call is in the database.
    ``invalidates=["user:{id}"]``: cache-aside keys (templates over the row) invalidated when the
    flusher commits the row.
    """

    def __init__(
        self,
        front: CacheFront,
        table: Any,
        *,
        key_column: str,
        key: str,
        ttl: float | None = None,
        wait_replicas: int = 0,
        wait_timeout: float = 1.0,
        invalidates: Sequence[str] = (),
    ) -> None:
        self.strategy = Strategy(
            front, table, key_column=key_column, key=key, ttl=ttl, tombstone_ttl=0.0, invalidates=invalidates
        )
        self.redis = RedisEntries(self.strategy, max(self.strategy.core.admin_timeout, 5.0))
        self.wait_replicas = wait_replicas
        self.wait_timeout_ms = int(wait_timeout * 1000)
        self._checked = False
        self._parts = save_command_parts(self.strategy.stream, self.strategy.ttl_ms)
        self._wait = pack_wait(wait_replicas, self.wait_timeout_ms)
        self._pool = redis.ConnectionPool.from_url(self.strategy.url, **get_options(self.redis.timeout))
        self._idle: list[Conn] = []  # the save connection (one round trip in flight); dropped in a forked child
        live.add(self)
        self._queue: deque[Queued] = deque()  # saves not yet sent (appends and pops are thread-safe)
        self._sending = Lock()  # held by the caller sending a round trip (one in flight per object)
        self._shared = False  # the last round trip carried several callers' saves
        self.flusher_running: Flusher | None = None
        self._flush_flusher: Flusher | None = None
        _writers.add(self)

    def _persistence_check(self) -> None:
        """Warn (once per object) about Redis settings that lose acknowledged changes: no AOF, eviction."""
        self._checked = True
        try:
            reply = self.redis.client.config_get("appendonly", "maxmemory", "maxmemory-policy")
        except RedisError:  # CONFIG may be renamed or forbidden: nothing to warn about then
            return
        for warning in risky_redis_settings(reply):
            log.warning(warning)

    def _save(self, key: str, op: str, data: bytes) -> str:
        s = self.strategy
        if not self._checked:
            self._persistence_check()
        # no L1 broadcast: get() reads Redis; cache-aside copies are invalidated at flush (``invalidates``)
        queued = Queued(pack_save(s.entry_key(key), key, op, data), Wakeup())
        self._queue.append(queued)  # before trying the lock: a sender that ends after a failed try sees it
        try:
            while not queued.sent:
                if try_acquire(self._sending):  # nobody is sending: send every queued save
                    batch: list[Queued] = []
                    try:
                        self._send(batch)
                    finally:
                        self._sending.release()
                        self._wake_next()  # the next round trip goes out first, then this one's callers wake
                        for carried in batch:
                            carried.wake.set()
                else:  # the round trip in flight ends by replying to this save or by waking it to send
                    queued.wake.wait()
                    queued.wake.clear()
        except BaseException:
            if not queued.sent:  # interrupted while queued: it never reaches Redis
                with contextlib.suppress(ValueError):
                    self._queue.remove(queued)
                self._wake_next()  # it may have been woken to send: pass that on
            raise
        reply = queued.reply
        if isinstance(reply, OutOfMemoryError):  # the save script's shebang: Redis refused the call whole
            raise CacheUnavailable(
                f"Redis is out of memory (used memory above its maxmemory) and refused the change of {key!r}:"
                " nothing of its round trip was appended or cached, nothing acknowledged; free memory in Redis"
                " or raise its maxmemory, then retry"
            ) from reply
        if isinstance(reply, BaseException):
            raise CacheUnavailable(
                f"Redis did not take the change of {key!r} ({reply}); nothing was acknowledged: retry, check Redis"
            ) from reply
        entry_id = as_str(reply)
        if queued.replicas is not None and queued.replicas < self.wait_replicas:
            raise NotReplicated(
                f"change {entry_id} of {key!r} reached {queued.replicas} of {self.wait_replicas} Redis replicas"
                f" within {self.wait_timeout_ms} ms; it may be lost if the Redis primary dies now"
            )
        return entry_id

    def _wake_next(self) -> None:
        """Wake the caller of the oldest queued save to send the next round trip (if any is queued)."""
        with contextlib.suppress(IndexError):
            self._queue[0].wake.set()

    def _send(self, batch: list[Queued]) -> None:
        """Send the queued saves (at most :data:`SEND_BATCH`, gathered into ``batch``) in one round trip; set
        each one's reply (the caller wakes them)."""
        if self._shared:  # callers are concurrent: let the ones just woken queue their next saves first
            sleep(0)
        while self._queue and len(batch) < SEND_BATCH:
            batch.append(self._queue.popleft())
        self._shared = len(batch) > 1
        try:
            replies, replicas = self._execute(batch)
        except RedisError as exc:
            replies, replicas = [exc] * len(batch), None
        except BaseException as exc:  # this caller was interrupted mid-round-trip: the others' outcome is unknown
            lost = RedisError(f"the round trip carrying it was interrupted ({exc!r}); it may or may not be in Redis")
            replies, replicas = [lost] * len(batch), None
            raise
        finally:
            for queued, reply in zip(batch, replies, strict=True):
                queued.reply, queued.replicas, queued.sent = reply, replicas, True

    def _execute(self, batch: list[Queued]) -> tuple[list[Any], int | None]:
        """The replies of ``batch``'s saves (an exception for a refused one) and ``WAIT``'s answer."""
        command = pack_saves(self._parts, [q.packed for q in batch])
        reply, replicas = self._round_trip(command)
        if isinstance(reply, NoScriptError):  # Redis restarted: the script ran nothing; load it, send again
            self.redis.client.script_load(SAVE_SCRIPT)
            reply, replicas = self._round_trip(command)
        if isinstance(reply, BaseException):  # refused as a whole (nothing ran)
            return [reply] * len(batch), replicas
        if not isinstance(reply, list) or len(reply) != len(batch):
            raise ResponseError(f"the write-behind save script answered {reply!r} for {len(batch)} saves")
        return reply, replicas

    def _round_trip(self, command: bytes) -> tuple[Any, int | None]:
        """Send ``command`` (then ``WAIT``) in one write on the save connection; its reply (an error reply
        as the exception) and ``WAIT``'s answer."""
        idle = self._idle
        conn = idle.pop() if idle else self._new_connection()
        replicas = None
        try:
            if closed(conn):  # the server closed it while idle; nothing was sent on it: reconnect
                drop(conn)
            if not connected(conn):
                conn.connect()  # bounded by socket_connect_timeout
            with deadline(self.redis.timeout):
                conn.send_packed_command((command + self._wait if self.wait_replicas else command,), False)
                try:
                    reply = conn.read_response()
                except ResponseError as exc:  # an error reply, read whole: the connection stays in step
                    reply = exc
                if self.wait_replicas:  # on the same connection, after the script: WAIT counts its writes
                    try:
                        answer = conn.read_response()
                    except ResponseError:
                        answer = 0
                    replicas = int(answer)
        except BaseException as exc:
            drop(conn)  # a reply may be unread: the next round trip must not read it
            idle.append(conn)
            if isinstance(exc, OSError):  # the deadline, or a socket error redis-py did not wrap
                raise RedisConnectionError(f"Redis round trip failed: {exc!r}") from exc
            raise
        idle.append(conn)
        return reply, replicas

    def _new_connection(self) -> Conn:
        return make_connection(self._pool)  # type: ignore[no-any-return]

    def save(self, row: Mapping[str, Any]) -> str:
        """Queue ``row`` (an upsert by its key column) and cache it; returns the change's stream id."""
        s = self.strategy
        return self._save(s.key_of(row), SAVE, s.dumps(row))

    def delete(self, key_value: Any) -> str:
        """Queue the delete of the row whose key column is ``key_value``; returns the change's stream id."""
        s = self.strategy
        return self._save(s.key_for(key_value), DELETE, s.dumps(key_value))

    def get(self, key_value: Any) -> dict[str, Any] | None:
        """The newest acknowledged row (flushed or not), or None; the database when the cache has no entry."""
        s = self.strategy
        key = s.key_for(key_value)
        found, row = self.redis.fetch(key)
        if found:
            return row
        return read_row(s, key_value)

    def flush(self, timeout: float = 30.0) -> None:
        """Return once every change acknowledged before the call is in the database.

        Runs flush rounds in the calling thread or task unless this object's flusher is running.
        Raises :class:`~dbscale.errors.FlushTimeout` after ``timeout`` seconds.
        """
        client = self.redis.client
        last = client.xrevrange(self.strategy.stream, count=1)
        if not last:
            return
        target = as_str(last[0][0])
        deadline = time.monotonic() + timeout
        flusher = self._flush_flusher  # flush()'s own, kept: its consumer is not "another flusher"
        elsewhere = self._flusher_alive(flusher)  # then wait for it rather than take the stream over
        while client.xrange(self.strategy.stream, max=target, count=1):
            if time.monotonic() > deadline:
                raise FlushTimeout(
                    f"changes up to {target} of {self.strategy.table.label} are not all in the database after"
                    f" {timeout:g} s; start a flusher, check the database, or pass a longer timeout"
                )
            if self.flusher_running is not None or elsewhere:
                sleep(0.01)
                continue
            if flusher is None:
                flusher = self._flush_flusher = self.flusher(block=0.0)
            try:
                flusher.run_round()
            except FlusherFenced:  # another flusher runs this stream: wait for it
                elsewhere = True
                flusher.epoch = None

    def _flusher_alive(self, mine: Flusher | None) -> bool:
        """Whether a consumer of the stream's group other than ``mine`` read within the last 2 s (a running flusher)."""
        try:
            consumers = self.redis.client.xinfo_consumers(self.strategy.stream, GROUP)
        except ResponseError:  # no group yet: no flusher ever ran
            return False
        own = None if mine is None else mine.consumer
        return any(int(c["idle"]) < 2000 and as_str(c["name"]) != own for c in consumers)

    def flusher(self, **options: Any) -> Flusher:
        """A flusher of this table (see :class:`Flusher` for the options); run it or start it."""
        return Flusher(self, **options)

    def start_flusher(self, **options: Any) -> Flusher:
        """Start a flusher in the background (a task, or a daemon thread in the blocking twin); ``stop()`` it."""
        flusher = self.flusher(**options)
        flusher.start()
        self.flusher_running = flusher
        return flusher

    def dead_letters(self, count: int = 100) -> list[dict[str, Any]]:
        """The oldest ``count`` dead letters: stream id, key, op, the change, the database's error."""
        entries = self.redis.client.xrange(self.strategy.dead_stream, count=count)
        out = []
        for entry_id, fields in entries:
            f = {as_str(k): v for k, v in fields.items()}
            out.append(
                {
                    "id": as_str(entry_id),
                    "change": as_str(f.get("change", b"")),
                    "key": as_str(f.get("k", b"")),
                    "op": as_str(f.get("o", b"")),
                    "data": self.strategy.loads(f["d"]) if f.get("d") else None,
                    "error": as_str(f.get("error", b"")),
                }
            )
        return out

    def status(self) -> dict[str, Any]:
        """Queue depth, oldest pending age (s), dead letters; also sets the gauges."""
        s = self.strategy
        client = self.redis.client
        depth = client.xlen(s.stream)
        first = client.xrange(s.stream, count=1)
        oldest = 0.0
        if first:
            oldest = max(0.0, time.time() - parse_stream_id(as_str(first[0][0]))[0] / 1000)
        s.m_depth.set(depth)
        s.m_oldest.set(oldest)
        return {
            "table": s.table.label,
            "queue_depth": depth,
            "oldest_pending_s": round(oldest, 3),
            "dead_letters": client.xlen(s.dead_stream),
        }

    def close(self) -> None:
        """Stop this object's flusher (if started) and close its Redis connections."""
        if self.flusher_running is not None:
            self.flusher_running.stop()
        idle, self._idle = self._idle, []
        for conn in idle:
            drop(conn)
        self.redis.close()


class Flusher:
    """Moves a table's stream into the database: batches of ``batch`` entries, blocking ``block`` s for new ones.

    After a round that was not a full batch, :meth:`run` waits ``interval`` seconds (the write delay:
    changes gather into bigger batches and coalesce; a change waits about this long to be flushed).

    ``consumer`` names it in the consumer group (default: host, pid and a random suffix).
    """

    def __init__(
        self,
        owner: WriteBehind,
        *,
        batch: int = 5000,
        block: float = 0.2,
        interval: float = 0.2,
        consumer: str | None = None,
    ) -> None:
        self.owner = owner
        self.s = owner.strategy
        self.batch = batch
        self.block_ms = int(block * 1000)
        self.interval = interval
        self.consumer = consumer or _consumer_name()
        self.epoch: int | None = None
        self.types: dict[str, str] | None = None  # the table's column types (read once)
        self._stop = Event()
        self._runner: Runner | None = None
        _flushers.add(self)

    def takeover(self) -> None:
        """Create the group and the checkpoint row if needed, and become the stream's flusher (bump the epoch)."""
        try:
            self.owner.redis.client.xgroup_create(self.s.stream, GROUP, id="0", mkstream=True)
        except ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise
        for consumer in self.owner.redis.client.xinfo_consumers(self.s.stream, GROUP):
            if (
                int(consumer["pending"]) == 0 and int(consumer["idle"]) > STALE_CONSUMER_MS
            ):  # past flushers, flush() calls
                self.owner.redis.client.xgroup_delconsumer(self.s.stream, GROUP, consumer["name"])
        install_schema(self.s.cluster)
        with self.s.cluster.write() as conn:
            self.epoch = int((conn.execute(text(TAKEOVER_SQL), {"stream": self.s.stream})).scalar_one())
        log.info("flusher %s took over %s (epoch %d)", self.consumer, self.s.stream, self.epoch)

    def run_round(self) -> int:
        """Flush the oldest pending entries (at most ``batch``); the number of entries handled."""
        if self.epoch is None:
            self.takeover()
        client = self.owner.redis.client
        stream = self.s.stream
        block = ("BLOCK", self.block_ms) if self.block_ms else ()
        # named in bytes, the command has no redis-py reply parser: decode_entries reads the raw reply
        # (redis-py's dict per entry costs more than the rest of the round's client work)
        read = client.execute_command(
            b"XREADGROUP", "GROUP", GROUP, self.consumer, "COUNT", self.batch, *block, "STREAMS", stream, ">"
        )
        changes = decode_entries(read)
        pending = client.xpending(stream, GROUP)
        if pending["pending"] != (len(read[0][1]) if read else 0):  # older entries are pending (a dead or fenced
            _, fresh, _ = client.xautoclaim(  # flusher's): the oldest first
                stream, GROUP, self.consumer, min_idle_time=0, start_id="0-0", count=self.batch
            )
            changes = [decode_entry(entry_id, fields) for entry_id, fields in fresh if fields]
        if not changes:
            self.owner.status()
            return 0
        t0 = time.perf_counter()
        batch = self._apply(changes)
        with client.pipeline(transaction=True) as pipe:
            pipe.xack(stream, GROUP, *batch.ids)
            pipe.xdel(stream, *batch.ids)
            pipe.execute()
        self.s.m_flush.observe(time.perf_counter() - t0)
        self.s.m_batch.observe(len(batch.ids))
        self.s.m_flushed.inc(len(batch.ids))
        self.owner.status()
        return len(batch.ids)

    def _apply(self, changes: list[Change]) -> Batch:
        s = self.s
        with s.cluster.write() as conn:
            last_id, epoch = (conn.execute(text(CHECKPOINT_SQL), {"stream": s.stream})).one()
            if epoch != self.epoch:
                raise FlusherFenced(
                    f"flusher {self.consumer} of {s.stream} was taken over (epoch {epoch}, this one {self.epoch});"
                    " it stopped without applying its batch"
                )
            batch = plan_batch(changes, last_id)
            dead = self._write(conn, batch.apply)
            if batch.last_id is not None:
                conn.execute(text(ADVANCE_SQL), {"stream": s.stream, "last_id": batch.last_id})
            if dead:  # before COMMIT: a dead letter is never lost (a retried batch may repeat it)
                with self.owner.redis.client.pipeline(transaction=False) as pipe:
                    for change, error in dead:
                        fields = {
                            "change": change.id,
                            "k": change.key,
                            "o": change.op,
                            "d": change.data,
                            "error": error,
                        }
                        pipe.xadd(s.dead_stream, fields)
                    pipe.execute()
                s.m_dead.inc(len(dead))
            if s.invalidates:
                self._invalidate_on_commit(batch.apply)
        return batch

    def _invalidate_on_commit(self, applied: list[Change]) -> None:
        keys: list[str] = []
        for change in applied:
            row = (
                self.s.loads(change.data) if change.op == SAVE else {self.s.table.key_column: self.s.loads(change.data)}
            )
            keys.extend(template.format_map(row) for template in self.s.invalidates)
        if keys:
            self.s.front.invalidate_on_commit(*keys)

    def _write(self, conn: Any, changes: list[Change]) -> list[tuple[Change, str]]:
        """Apply ``changes`` (one per key); the ones the database rejected, with its error."""
        try:
            with conn.begin_nested():
                self._statements(conn, changes)
            return []
        except REJECTED:
            pass
        dead = []
        for change in changes:  # one savepoint each: find the rejected ones, keep the rest
            try:
                with conn.begin_nested():
                    self._statements(conn, [change])
            except REJECTED as exc:
                dead.append((change, str(getattr(exc, "orig", exc)).strip()))
        return dead

    def _statements(self, conn: Any, changes: list[Change]) -> None:
        table = self.s.table
        rows = [self.s.loads(c.data) for c in changes if c.op == SAVE]
        deletes = [self.s.loads(c.data) for c in changes if c.op == DELETE]
        if rows and self.types is None:
            result = conn.execute(text(COLUMN_TYPES_SQL), {"table": table.qualified})
            self.types = {name: kind for name, kind in result}
        for columns, group in group_rows(rows):
            sql = text(unnest_upsert_sql(table, columns, self.types or {}))
            conn.execute(sql, unnest_params(columns, group))
        if deletes:
            conn.execute(text(table.delete_sql()), {"keys": deletes})

    def run(self) -> None:
        """Flush until :meth:`stop` (a database or Redis outage is logged and retried, so is a takeover)."""
        while not self._stop.is_set():
            try:
                if self.run_round() < self.batch:  # not a full batch: let changes gather (and coalesce)
                    event_wait(self._stop, self.interval)
            except FlusherFenced:  # another flusher took over; take it back after a pause (it may be a one-off)
                log.warning("flusher %s of %s was taken over; retrying in 1 s", self.consumer, self.s.stream)
                self.epoch = None
                event_wait(self._stop, 1.0)
            except Exception as exc:  # keep flushing through outages: nothing unflushed is acknowledged
                log.warning("flush round of %s failed (%s); retrying", self.s.stream, exc)
                event_wait(self._stop, 1.0)

    def drain(self) -> int:
        """Flush until the stream is empty (``--once``); the number of entries handled."""
        total = 0
        while True:
            handled = self.run_round()
            total += handled
            if not handled:
                return total

    def start(self) -> None:
        """Run :meth:`run` in the background."""
        self._runner = spawn(self.run, f"dbscale-flusher-{self.s.table.label}")

    def request_stop(self) -> None:
        """Ask :meth:`run` to return after the current round (safe from a signal handler)."""
        self._stop.set()

    def stop(self, timeout: float = 10.0) -> None:
        """Stop the background flusher (the current round finishes in the blocking twin)."""
        self._stop.set()
        if self._runner is not None:
            join(self._runner, timeout)
            self._runner = None
        if self.owner.flusher_running is self:
            self.owner.flusher_running = None


__all__ = ["GROUP", "Flusher", "WriteBehind"]


def _consumer_name() -> str:
    """A flusher's default name in the consumer group: host, pid and a random suffix."""
    return f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:8]}"


def _writer_after_fork(writer: WriteBehind) -> None:
    """In a forked child: the parent's queued saves (its callers are not here), its sender's lock (maybe
    held by a thread that is not here) and its flushers stay the parent's; the child sends and flushes
    its own (:mod:`dbscale.forks`)."""
    inherit((writer._queue, writer.flusher_running, writer._flush_flusher))
    writer._queue = deque()
    writer._sending = Lock()
    writer._shared = False
    writer.flusher_running = None
    writer._flush_flusher = None


def _flusher_after_fork(flusher: Flusher) -> None:
    """In a forked child: a flusher object is the child's own consumer, not the parent's running one (a new
    name; it takes the stream over, with a new epoch, if it runs here); its thread or task is not here."""
    flusher.consumer = _consumer_name()
    flusher.epoch = None
    flusher._stop = Event()
    flusher._runner = None


_writers: AtFork[WriteBehind] = AtFork(_writer_after_fork)
_flushers: AtFork[Flusher] = AtFork(_flusher_after_fork)
