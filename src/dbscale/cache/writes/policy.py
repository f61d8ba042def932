"""The decisions of write-through and write-behind, without I/O: versions, coalescing, batch plans, SQL, scripts.

Theory of operation.

*Write-through* orders the writes of one key by a **version** taken inside the writing transaction
after a transaction-scoped advisory lock on the key (:data:`VERSION_SQL`): two writers of a key
serialize on the lock, so the later one commits later and draws the larger number from the
sequence. The cache is written only after COMMIT, by :data:`SET_IF_NEWER` (Lua, atomic): an entry
is replaced only by a strictly larger version, so whichever order the post-commit sets arrive in,
the entry ends at the last commit. A delete leaves a *tombstone* (the delete's version, no data)
for ``tombstone_ttl`` seconds, so a late set of an older version cannot resurrect the row. A fill
after a miss carries version 0: it lands only on an absent key, and any committed write replaces it.

*Write-behind* appends each change to a Redis Stream and updates the cache entry in the same Lua
script (:data:`SAVE_SCRIPT`), so the cache and the stream agree on the order of changes. A flusher
reads the oldest pending entries, :func:`coalesce` keeps the last change per key (stream order),
and :func:`plan_batch` drops entries at or below the stream id the database already recorded
(the checkpoint written in the same transaction as the rows): a redelivered batch is a no-op.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from operator import itemgetter
from typing import Any, NamedTuple

#: The sequence every write-through version is drawn from (one per database).
VERSION_SEQUENCE = "dbscale_write_version"
#: Per stream: the last applied stream id and the epoch of the flusher allowed to apply.
CHECKPOINT_TABLE = "dbscale_write_behind"

INSTALL_SQL = (
    f"CREATE SEQUENCE IF NOT EXISTS {VERSION_SEQUENCE}",
    f"CREATE TABLE IF NOT EXISTS {CHECKPOINT_TABLE} ("
    " stream text PRIMARY KEY, last_id text NOT NULL DEFAULT '0-0', epoch bigint NOT NULL DEFAULT 0)",
)
#: Serializes concurrent installs (``CREATE … IF NOT EXISTS`` alone can still race on the catalog).
INSTALL_LOCK_SQL = "SELECT pg_advisory_xact_lock(hashtextextended('dbscale_write_install', 0))"

#: Lock the key for the rest of the transaction, then draw its version (after the lock, by the CTE order).
VERSION_SQL = (
    "WITH l AS MATERIALIZED (SELECT pg_advisory_xact_lock(hashtextextended(:lock, 0)))"
    f" SELECT nextval('{VERSION_SEQUENCE}') FROM l"
)

TAKEOVER_SQL = (
    f"INSERT INTO {CHECKPOINT_TABLE} (stream, epoch) VALUES (:stream, 1)"
    " ON CONFLICT (stream) DO UPDATE SET epoch = "
    f"{CHECKPOINT_TABLE}.epoch + 1 RETURNING epoch"
)
CHECKPOINT_SQL = f"SELECT last_id, epoch FROM {CHECKPOINT_TABLE} WHERE stream = :stream FOR UPDATE"
ADVANCE_SQL = f"UPDATE {CHECKPOINT_TABLE} SET last_id = :last_id WHERE stream = :stream"

# The write scripts open with a ``#!lua`` shebang and no flags (Redis 7): over ``maxmemory`` Redis refuses
# the whole call with -OOM before it runs (no ``allow-oom``); without one, the script would run and only its
# first write be refused from inside (a call never stops part-way for memory either way). Keys: all in KEYS.

# KEYS[1] entry hash; ARGV: version, data, tombstone flag ("1"/"0"), ttl ms, channel, message.
# Applied only over a strictly smaller version (or no entry); then the L1s of every process drop the key.
SET_IF_NEWER = """#!lua
local kind = redis.call('TYPE', KEYS[1])['ok']
if kind ~= 'hash' and kind ~= 'none' then redis.call('DEL', KEYS[1]) end
local cur = tonumber(redis.call('HGET', KEYS[1], 'v') or '')
if cur and cur >= tonumber(ARGV[1]) then return 0 end
redis.call('HSET', KEYS[1], 'v', ARGV[1], 'd', ARGV[2], 't', ARGV[3])
redis.call('PEXPIRE', KEYS[1], ARGV[4])
if ARGV[5] ~= '' then redis.call('PUBLISH', ARGV[5], ARGV[6]) end
return 1
"""

# KEYS[1] stream, KEYS[2..n+1] the entry hashes of n saves; ARGV[1] ttl ms, then key, op ("s"/"d"), data per save.
# Per save, one atomic step: the stream order of a key's changes is the order its cache entry saw them.
# One call carries a round trip's saves (Lua's per-call cost is paid once); the reply has one element per
# save: its stream id, or the error that stopped it (then no later save of the call ran either).
SAVE_SCRIPT = """#!lua
local stream = KEYS[1]
local kind = redis.call('TYPE', stream)['ok']
if kind ~= 'stream' and kind ~= 'none' then
  return redis.error_reply('WRONGTYPE ' .. stream .. ' holds a ' .. kind .. ', not a write-behind stream')
end
local ttl = ARGV[1]
local ids = {}
for i = 2, #KEYS do
  local entry, a = KEYS[i], 3 * i - 4
  local op, data = ARGV[a + 1], ARGV[a + 2]
  local id = redis.pcall('XADD', stream, '*', 'k', ARGV[a], 'o', op, 'd', data)
  if type(id) == 'table' and id.err then
    for j = i, #KEYS do ids[j - 1] = id end
    return ids
  end
  local tomb = '0'
  if op == 'd' then tomb = '1' end
  if type(redis.pcall('HSET', entry, 'v', id, 'd', data, 't', tomb)) == 'table' then
    redis.call('DEL', entry)  -- data dbscale did not write (another type): replaced
    redis.call('HSET', entry, 'v', id, 'd', data, 't', tomb)
  end
  redis.call('PEXPIRE', entry, ttl)
  ids[i - 1] = id
end
return ids
"""

#: ``EVALSHA`` name of :data:`SAVE_SCRIPT` (loaded by ``SCRIPT LOAD`` when Redis answers ``NOSCRIPT``).
SAVE_SHA = hashlib.sha1(SAVE_SCRIPT.encode()).hexdigest()

SAVE, DELETE = "s", "d"
#: At most this many queued saves go to Redis in one script call (one round trip).
SEND_BATCH = 512


def resp_bulk(value: bytes) -> bytes:
    """``value`` as a RESP bulk string."""
    return b"$%d\r\n%b\r\n" % (len(value), value)


def save_command_parts(stream: str, ttl_ms: int) -> tuple[bytes, bytes, bytes]:
    """The fixed parts of a table's packed :data:`SAVE_SCRIPT` call, built once per table: the script's
    sha, its first key (the stream) and its first argument (the TTL), each a RESP bulk string."""
    return resp_bulk(SAVE_SHA.encode()), resp_bulk(stream.encode()), resp_bulk(str(ttl_ms).encode())


def pack_save(entry_key: str, key: str, op: str, data: bytes) -> tuple[bytes, bytes]:
    """One save's share of a packed :data:`SAVE_SCRIPT` call: its key (the entry hash), its arguments."""
    entry, k, o = entry_key.encode(), key.encode(), op.encode()
    return (
        b"$%d\r\n%b\r\n" % (len(entry), entry),
        b"$%d\r\n%b\r\n$%d\r\n%b\r\n$%d\r\n%b\r\n" % (len(k), k, len(o), o, len(data), data),
    )


def pack_saves(parts: tuple[bytes, bytes, bytes], saves: Sequence[tuple[bytes, bytes]]) -> bytes:
    """The RESP encoding of one ``EVALSHA`` of :data:`SAVE_SCRIPT` carrying ``saves`` (:func:`pack_save`),
    as redis-py would pack it."""
    sha, stream, ttl = parts
    n = len(saves)
    return b"".join(
        (
            b"*%d\r\n$7\r\nEVALSHA\r\n" % (4 * n + 5),
            sha,
            resp_bulk(b"%d" % (n + 1)),
            stream,
            *(entry for entry, _ in saves),
            ttl,
            *(args for _, args in saves),
        )
    )


def pack_wait(replicas: int, timeout_ms: int) -> bytes:
    """The RESP encoding of ``WAIT replicas timeout_ms``."""
    return b"*3\r\n" + b"".join(resp_bulk(v) for v in (b"WAIT", str(replicas).encode(), str(timeout_ms).encode()))


@dataclass(eq=False)
class Queued:
    """A save waiting to be sent to Redis: its share of the packed script call (:func:`pack_save`), then Redis's reply.

    ``reply`` is the stream id, or the exception Redis answered for this save (or for its round
    trip); ``replicas`` is what ``WAIT`` answered for the round trip that carried it. ``wake`` is
    the waiting caller's event: set once the reply is in, or to make it send the next round trip.
    """

    packed: tuple[bytes, bytes]
    wake: Any
    sent: bool = False
    reply: Any = None
    replicas: int | None = None


def quote_ident(name: str) -> str:
    """``name`` as a PostgreSQL identifier (double-quoted, quotes doubled)."""
    return '"' + name.replace('"', '""') + '"'


@dataclass(frozen=True)
class TableSpec:
    """The table a strategy writes: a name (optionally schema-qualified) and its key column."""

    name: str
    key_column: str
    schema: str | None = None

    @classmethod
    def of(cls, target: Any, key_column: str) -> TableSpec:
        """From a table name (``"users"``, ``"app.users"``) or a SQLAlchemy ``Table`` (its name and schema)."""
        if isinstance(target, str):
            schema, _, name = target.rpartition(".")
            return cls(name, key_column, schema or None)
        found = getattr(target, "name", None)
        if not isinstance(found, str):
            raise TypeError(f"{target!r}: pass a table name or a SQLAlchemy Table (an ORM class: pass its __table__)")
        return cls(found, key_column, getattr(target, "schema", None))

    @property
    def qualified(self) -> str:
        """The quoted, qualified table name for SQL."""
        table = quote_ident(self.name)
        return f"{quote_ident(self.schema)}.{table}" if self.schema else table

    @property
    def label(self) -> str:
        """The plain name (for Redis keys, locks and metrics)."""
        return f"{self.schema}.{self.name}" if self.schema else self.name

    def select_sql(self) -> str:
        """One row by key, as a mapping of its columns."""
        return f"SELECT * FROM {self.qualified} WHERE {quote_ident(self.key_column)} = :key"

    def delete_sql(self) -> str:
        """Delete the rows whose keys are in the array ``:keys``."""
        return f"DELETE FROM {self.qualified} WHERE {quote_ident(self.key_column)} = ANY(:keys)"

    def upsert_sql(self, columns: Sequence[str], rows: int) -> str:
        """A multi-row ``INSERT … ON CONFLICT (key) DO UPDATE`` of ``rows`` rows; parameters ``p{row}_{col}``."""
        if self.key_column not in columns:
            raise ValueError(f"the row has no key column {self.key_column!r} (columns: {', '.join(columns)})")
        cols = ", ".join(quote_ident(c) for c in columns)
        values = ", ".join("(" + ", ".join(f":p{r}_{c}" for c in range(len(columns))) + ")" for r in range(rows))
        updates = [f"{quote_ident(c)} = EXCLUDED.{quote_ident(c)}" for c in columns if c != self.key_column]
        action = "DO UPDATE SET " + ", ".join(updates) if updates else "DO NOTHING"
        return (
            f"INSERT INTO {self.qualified} ({cols}) VALUES {values}"
            f" ON CONFLICT ({quote_ident(self.key_column)}) {action}"
        )


def unnest_upsert_sql(table: TableSpec, columns: Sequence[str], types: Mapping[str, str]) -> str:
    """The upsert of any number of rows as one statement with one array parameter per column (``c0``, ``c1`` …).

    Each array is cast to its column's type (``types``: column -> SQL type; an unknown column is
    left for the database to reject).
    """
    if table.key_column not in columns:
        raise ValueError(f"the row has no key column {table.key_column!r} (columns: {', '.join(columns)})")
    cols = ", ".join(quote_ident(c) for c in columns)
    arrays = ", ".join(f"CAST(:c{i} AS {types.get(c, 'text')}[])" for i, c in enumerate(columns))
    updates = [f"{quote_ident(c)} = EXCLUDED.{quote_ident(c)}" for c in columns if c != table.key_column]
    action = "DO UPDATE SET " + ", ".join(updates) if updates else "DO NOTHING"
    return (
        f"INSERT INTO {table.qualified} ({cols}) SELECT * FROM unnest({arrays})"
        f" ON CONFLICT ({quote_ident(table.key_column)}) {action}"
    )


def unnest_params(columns: Sequence[str], rows: Sequence[Mapping[str, Any]]) -> dict[str, list[Any]]:
    """The array parameters of :func:`unnest_upsert_sql` for ``rows`` (each having exactly ``columns``)."""
    return {f"c{i}": [row[c] for row in rows] for i, c in enumerate(columns)}


#: The SQL type of every column of a table (``:table`` is its quoted, qualified name).
COLUMN_TYPES_SQL = (
    "SELECT attname, format_type(atttypid, atttypmod) FROM pg_attribute"
    " WHERE attrelid = CAST(:table AS regclass) AND attnum > 0 AND NOT attisdropped"
)


def upsert_params(columns: Sequence[str], rows: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """The parameters of :meth:`TableSpec.upsert_sql` for ``rows`` (each having exactly ``columns``)."""
    return {f"p{r}_{c}": row[name] for r, row in enumerate(rows) for c, name in enumerate(columns)}


def cache_key(template: str, key_column: str, row: Mapping[str, Any]) -> str:
    """The cache key of ``row`` from a template such as ``"user:{id}"`` (fields name columns)."""
    try:
        return template.format_map(row)
    except (KeyError, IndexError) as exc:
        raise KeyError(
            f"key template {template!r} names {exc} which the row lacks (key column {key_column!r})"
        ) from None


def risky_redis_settings(settings: Mapping[Any, Any]) -> list[str]:
    """Warnings for the Redis settings (``CONFIG GET appendonly maxmemory maxmemory-policy``) under which
    write-behind loses acknowledged changes or serves older rows; none when they are safe (or unknown)."""
    values = {as_str(k): as_str(v) for k, v in settings.items()}
    warnings = []
    if values.get("appendonly") == "no":
        warnings.append(
            "Redis runs with appendonly no: write-behind changes acknowledged since the last RDB snapshot"
            " are lost if Redis restarts before they are flushed; set appendonly yes (see the README)"
        )
    policy = values.get("maxmemory-policy", "noeviction")
    if values.get("maxmemory", "0") != "0" and policy != "noeviction":
        if policy.startswith("allkeys-"):
            what = "the stream itself, losing acknowledged changes not yet flushed"
        else:  # volatile-*: keys with a TTL, i.e. the cache entries
            what = "cache entries before their change is flushed, so get() reads an older row from the database"
        warnings.append(
            f"Redis runs with maxmemory-policy {policy}: at maxmemory it may evict {what};"
            " set maxmemory-policy noeviction for the Redis that holds write-behind streams"
        )
    return warnings


def parse_stream_id(stream_id: str) -> tuple[int, int]:
    """A Redis stream id ``"ms-seq"`` as a comparable pair."""
    ms, _, seq = stream_id.partition("-")
    return int(ms), int(seq or 0)


def as_str(value: str | bytes) -> str:
    """A Redis reply field as text."""
    return value.decode() if isinstance(value, bytes) else value


class Change(NamedTuple):
    """One stream entry: ``op`` :data:`SAVE` (``data`` is the row) or :data:`DELETE` (``data`` is the key value).

    A named tuple: a flush round makes one per entry, and a frozen dataclass costs several times more to build.
    """

    id: str
    key: str
    op: str
    data: bytes


def decode_entry(entry_id: str | bytes, fields: Mapping[Any, Any]) -> Change:
    """A :class:`Change` from a stream entry as redis-py returns it."""
    get = {as_str(k): v for k, v in fields.items()}
    data = get.get("d", b"")
    return Change(as_str(entry_id), as_str(get.get("k", b"")), as_str(get.get("o", b"")), bytes(data) if data else b"")


def decode_entries(reply: Any) -> list[Change]:
    """The changes of an ``XREADGROUP`` reply of one stream as Redis sends it (no redis-py parsing:
    ``[[stream, [[id, [field, value, …]], …]]]``, or a map in RESP3); an entry deleted while pending
    (no fields) is left out."""
    if not reply:
        return []
    streams = list(reply.items()) if isinstance(reply, Mapping) else reply
    out = []
    for entry_id, fields in streams[0][1]:
        if not fields:
            continue
        if len(fields) == 6 and fields[0] == b"k" and fields[2] == b"o" and fields[4] == b"d":  # as XADD wrote it
            out.append(Change(entry_id.decode(), fields[1].decode(), fields[3].decode(), fields[5]))
        else:
            out.append(decode_entry(entry_id, dict(zip(fields[::2], fields[1::2], strict=True))))
    return out


def _ordered(changes: Iterable[Change]) -> list[tuple[tuple[int, int], Change]]:
    """``changes`` with their parsed ids, in stream order (each id parsed once)."""
    keyed = [(parse_stream_id(c.id), c) for c in changes]
    keyed.sort(key=itemgetter(0))  # a read is in stream order already: one linear pass
    return keyed


def _last_per_key(keyed: list[tuple[tuple[int, int], Change]]) -> list[Change]:
    last: dict[str, tuple[tuple[int, int], Change]] = {}
    for item in keyed:
        last[item[1].key] = item
    return [c for _, c in sorted(last.values(), key=itemgetter(0))]


def coalesce(changes: Iterable[Change]) -> list[Change]:
    """The last change of each key in stream order (later ids win), ordered by id."""
    return _last_per_key(_ordered(changes))


@dataclass
class Batch:
    """What one flush transaction does: the changes to apply and the checkpoint to record."""

    apply: list[Change] = field(default_factory=list)
    ids: list[str] = field(default_factory=list)  # every entry of the batch: acknowledged after the commit
    skipped: int = 0  # entries at or below the checkpoint (a redelivered, already applied batch)
    last_id: str | None = None  # the new checkpoint (None: nothing new)


def plan_batch(changes: Sequence[Change], applied: str) -> Batch:
    """Plan a flush: drop entries at or below ``applied`` (already in the database), coalesce the rest."""
    floor = parse_stream_id(applied)
    fresh = [item for item in _ordered(changes) if item[0] > floor]
    batch = Batch(apply=_last_per_key(fresh), ids=[c.id for c in changes], skipped=len(changes) - len(fresh))
    if fresh:
        batch.last_id = fresh[-1][1].id
    return batch


def group_rows(rows: Sequence[Mapping[str, Any]]) -> list[tuple[tuple[str, ...], list[Mapping[str, Any]]]]:
    """Rows grouped by their column set (one multi-row upsert per group), in first-seen order."""
    groups: dict[tuple[str, ...], list[Mapping[str, Any]]] = {}
    for row in rows:
        groups.setdefault(tuple(row), []).append(row)
    return list(groups.items())


__all__ = [
    "CHECKPOINT_TABLE",
    "COLUMN_TYPES_SQL",
    "DELETE",
    "SAVE",
    "SAVE_SCRIPT",
    "SAVE_SHA",
    "SEND_BATCH",
    "SET_IF_NEWER",
    "VERSION_SEQUENCE",
    "VERSION_SQL",
    "Batch",
    "Change",
    "Queued",
    "TableSpec",
    "cache_key",
    "coalesce",
    "decode_entries",
    "decode_entry",
    "group_rows",
    "pack_save",
    "pack_saves",
    "pack_wait",
    "parse_stream_id",
    "plan_batch",
    "quote_ident",
    "resp_bulk",
    "risky_redis_settings",
    "save_command_parts",
    "unnest_params",
    "unnest_upsert_sql",
    "upsert_params",
]
