"""Global 64-bit IDs, time-ordered and carrying their logical shard (Instagram's layout).

Theory of operation
-------------------
An ID is ``time << 23 | shard << 10 | sequence``: milliseconds since a custom epoch in the top 41
bits, the logical shard (0-8191) in the next 13, a per-millisecond sequence (0-1023) in the low 10.
Any ID therefore says where its row lives (:func:`shard_of_id`) and roughly when it was made
(:func:`time_of_id`), and IDs of different shards can never be equal.

PostgreSQL's ``bigint`` is signed, so IDs are kept below ``2**63``: the time field may use 40 of
its 41 bits, which lasts 34.8 years from the epoch (the default epoch, 2024-01-01 UTC, runs until
2058-11). Making an ID later than that raises :class:`~dbscale.errors.GlobalIdError`.

:func:`next_id` is the pure rule both generators follow: given the last ID issued for a shard and
the current time, the next one is the first ID of the current millisecond if the clock moved past
the last ID's millisecond, else the last ID plus one. When the 1,024 sequence numbers of the
current millisecond are used up the caller waits for the next millisecond; when the clock went
backwards it does not wait for it to catch up but continues after the last ID (borrowing the next
millisecond if need be). So IDs of one generator are strictly increasing whatever the clock does.

:class:`IdGenerator` applies that rule under a lock (thread-safe, one per logical shard and
process); :func:`next_id_function_sql` renders the same rule as a PL/pgSQL function for
PostgreSQL. Two generators must never share a logical shard number (e.g. a Python generator and
the database function of the same shard), or their IDs can collide. A process made by ``os.fork()``
holds a copy of its parent's generators, which would issue the same IDs as the parent's in the
same millisecond: there they raise instead, and the child makes its own with a shard of its own.
"""

from __future__ import annotations

import os
import re
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import NamedTuple

from dbscale.errors import GlobalIdError

TIME_BITS = 41
SHARD_BITS = 13
SEQUENCE_BITS = 10
MAX_SHARD = (1 << SHARD_BITS) - 1
MAX_SEQUENCE = (1 << SEQUENCE_BITS) - 1
_SHARD_SHIFT = SEQUENCE_BITS
_TIME_SHIFT = SHARD_BITS + SEQUENCE_BITS
#: Largest time field that keeps an ID a positive signed 64-bit integer (PostgreSQL ``bigint``).
MAX_TIME = (1 << (63 - _TIME_SHIFT)) - 1

#: Default custom epoch: 2024-01-01T00:00:00Z, in Unix milliseconds.
DEFAULT_EPOCH_MS = 1_704_067_200_000


class IdParts(NamedTuple):
    """The three fields of an ID."""

    time_ms: int
    shard: int
    sequence: int


def _check_shard(shard: int) -> int:
    if isinstance(shard, bool) or not isinstance(shard, int) or not 0 <= shard <= MAX_SHARD:
        raise GlobalIdError(f"shard={shard!r}: a logical shard number is an int from 0 to {MAX_SHARD}")
    return shard


def epoch_ms(epoch: datetime | int) -> int:
    """An epoch given as an aware ``datetime`` or as Unix milliseconds, in Unix milliseconds."""
    if isinstance(epoch, datetime):
        if epoch.tzinfo is None:
            raise GlobalIdError(f"epoch={epoch!r} is naive: give a timezone-aware datetime, e.g. tzinfo=UTC")
        return int(epoch.timestamp() * 1000)
    if isinstance(epoch, bool) or not isinstance(epoch, int) or epoch < 0:
        raise GlobalIdError(f"epoch={epoch!r}: give an aware datetime or non-negative Unix milliseconds")
    return epoch


def make_id(time_ms: int, shard: int, sequence: int) -> int:
    """The ID of ``sequence`` in millisecond ``time_ms`` (since the epoch) on ``shard``."""
    if not 0 <= time_ms <= MAX_TIME:
        raise GlobalIdError(
            f"time {time_ms} ms since the epoch is outside [0, {MAX_TIME}]: the clock is before the epoch, "
            "or the epoch is more than 34.8 years old (choose a later epoch for new IDs)"
        )
    if not 0 <= sequence <= MAX_SEQUENCE:
        raise GlobalIdError(f"sequence={sequence}: must be 0..{MAX_SEQUENCE}")
    return time_ms << _TIME_SHIFT | _check_shard(shard) << _SHARD_SHIFT | sequence


def parse_id(global_id: int) -> IdParts:
    """Split an ID into time (ms since its epoch), shard and sequence."""
    if isinstance(global_id, bool) or not isinstance(global_id, int) or not 0 <= global_id < 1 << 63:
        raise GlobalIdError(f"{global_id!r} is not a global ID (a non-negative 64-bit signed integer)")
    return IdParts(global_id >> _TIME_SHIFT, (global_id >> _SHARD_SHIFT) & MAX_SHARD, global_id & MAX_SEQUENCE)


def shard_of_id(global_id: int) -> int:
    """The logical shard an ID was made on."""
    return parse_id(global_id).shard


def time_of_id(global_id: int, epoch: datetime | int = DEFAULT_EPOCH_MS) -> datetime:
    """When an ID was made (UTC, millisecond precision), given the epoch its generator used."""
    ms = parse_id(global_id).time_ms + epoch_ms(epoch)
    return datetime.fromtimestamp(ms / 1000, tz=UTC)


def next_id(last: int | None, now_ms: int, shard: int, epoch: int = DEFAULT_EPOCH_MS) -> int | None:
    """The ID after ``last`` (None: the first) at Unix time ``now_ms``; None means "wait for the next ms".

    Pure: the rule of the module docstring. Never returns an ID ``<= last``.
    """
    t = now_ms - epoch
    if last is None:
        return make_id(t, shard, 0)
    last_t, last_seq = last >> _TIME_SHIFT, last & MAX_SEQUENCE
    if t > last_t:
        return make_id(t, shard, 0)
    if last_seq < MAX_SEQUENCE:
        return last + 1
    if t == last_t:
        return None
    return make_id(last_t + 1, shard, 0)


def _wall_clock_ms() -> int:
    return time.time_ns() // 1_000_000


#: How many times this process's line of ancestors forked into it: a generator issues IDs only in the
#: process it was made in (a copy in a child would repeat its parent's IDs).
_forks = 0


def _after_fork_in_child() -> None:
    global _forks
    _forks += 1


os.register_at_fork(after_in_child=_after_fork_in_child)


class IdGenerator:
    """Thread-safe generator of global IDs for one logical shard; IDs strictly increase.

    ``clock`` returns Unix milliseconds (injectable for tests); the generator waits (yielding the
    GIL) only when 1,024 IDs were already made in the current millisecond.
    """

    __slots__ = ("_born", "_clock", "_epoch", "_last", "_lock", "_shard")

    def __init__(
        self,
        shard: int,
        *,
        epoch: datetime | int = DEFAULT_EPOCH_MS,
        clock: Callable[[], int] = _wall_clock_ms,
    ) -> None:
        self._shard = _check_shard(shard)
        self._epoch = epoch_ms(epoch)
        self._clock = clock
        self._lock = threading.Lock()
        self._last: int | None = None
        self._born = _forks  # the process it issues IDs in

    @property
    def shard(self) -> int:
        """The logical shard embedded in every ID."""
        return self._shard

    @property
    def epoch_ms(self) -> int:
        """The epoch, in Unix milliseconds."""
        return self._epoch

    def next_id(self) -> int:
        """A new ID, greater than every ID this generator made before.

        Raises :class:`~dbscale.errors.GlobalIdError` in a process forked after the generator was made.
        """
        if self._born != _forks:
            raise GlobalIdError(
                f"IdGenerator(shard={self._shard}) was made before this process was forked from its parent,"
                " whose copy issues the same IDs in the same millisecond: make the generator in each process"
                " (after the fork: gunicorn's post_fork, a Celery worker_process_init handler), each with a"
                " logical shard of its own"
            )
        with self._lock:
            while True:
                new = next_id(self._last, self._clock(), self._shard, self._epoch)
                if new is not None:
                    self._last = new
                    return new
                time.sleep(0)

    __call__ = next_id


_IDENT = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")
#: First key of the advisory lock that serializes the SQL generator (the second is the shard).
ADVISORY_LOCK_CLASS = 0x64627369  # "dbsi"


def _ident(value: str, what: str) -> str:
    if not _IDENT.match(value):
        raise GlobalIdError(f"{what}={value!r}: use a lower-case SQL identifier (letters, digits, _; at most 63)")
    return f'"{value}"'


def next_id_function_sql(
    shard: int,
    *,
    epoch: datetime | int = DEFAULT_EPOCH_MS,
    schema: str = "public",
    function: str = "dbscale_next_id",
    sequence: str = "dbscale_id_last",
) -> str:
    """PL/pgSQL creating ``schema.function()`` that returns this shard's next global ID (pure string builder).

    Run the script once on each shard's primary (idempotent: ``CREATE SEQUENCE IF NOT EXISTS`` and
    ``CREATE OR REPLACE FUNCTION``), then use it as a column default:
    ``id bigint PRIMARY KEY DEFAULT dbscale_next_id()``. It follows :func:`next_id` with
    ``clock_timestamp()`` as the clock; the last ID issued is kept in a sequence (via ``setval``,
    which is not transactional, so an ID is never reused after a rollback) and read and advanced
    under a session advisory lock ``(ADVISORY_LOCK_CLASS, shard)`` that is released before the
    function returns (also on error, through an EXCEPTION block: one subtransaction per call), so
    concurrent transactions serialize for microseconds, not until commit. Where the Python generator waits for the next millisecond, the function borrows
    it instead (an ID's time may then run up to a few ms ahead of the clock under bursts above
    1,024 IDs per ms); it raises if the clock is before the epoch or past its 34.8-year span.
    """
    shard = _check_shard(shard)
    start = epoch_ms(epoch)
    qualified_seq = f"{_ident(schema, 'schema')}.{_ident(sequence, 'sequence')}"
    qualified_fn = f"{_ident(schema, 'schema')}.{_ident(function, 'function')}"
    return f"""\
CREATE SEQUENCE IF NOT EXISTS {qualified_seq} AS bigint MINVALUE 0 START 0;

CREATE OR REPLACE FUNCTION {qualified_fn}() RETURNS bigint
LANGUAGE plpgsql VOLATILE AS $dbscale$
DECLARE
    shard constant bigint := {shard};
    epoch constant bigint := {start};
    t bigint;
    last bigint;
    result bigint;
BEGIN
    t := floor(extract(epoch FROM clock_timestamp()) * 1000)::bigint - epoch;
    IF t < 0 OR t > {MAX_TIME} THEN
        RAISE EXCEPTION 'dbscale global id: clock is % ms from the epoch %, outside [0, {MAX_TIME}]', t, epoch
            USING HINT = 'fix the server clock, or regenerate the function with a later epoch';
    END IF;
    PERFORM pg_advisory_lock({ADVISORY_LOCK_CLASS}, {shard});
    BEGIN
        SELECT last_value INTO last FROM {qualified_seq};
        IF last = 0 OR t > (last >> {_TIME_SHIFT}) THEN
            result := (t << {_TIME_SHIFT}) | (shard << {_SHARD_SHIFT});
        ELSIF (last & {MAX_SEQUENCE}) < {MAX_SEQUENCE} THEN
            result := last + 1;
        ELSE
            result := (((last >> {_TIME_SHIFT}) + 1) << {_TIME_SHIFT}) | (shard << {_SHARD_SHIFT});
        END IF;
        PERFORM setval('{qualified_seq}', result);
    EXCEPTION WHEN OTHERS OR query_canceled THEN
        PERFORM pg_advisory_unlock({ADVISORY_LOCK_CLASS}, {shard});
        RAISE;
    END;
    PERFORM pg_advisory_unlock({ADVISORY_LOCK_CLASS}, {shard});
    RETURN result;
END
$dbscale$;
"""


__all__ = [
    "ADVISORY_LOCK_CLASS",
    "DEFAULT_EPOCH_MS",
    "MAX_SHARD",
    "MAX_TIME",
    "IdGenerator",
    "IdParts",
    "epoch_ms",
    "make_id",
    "next_id",
    "next_id_function_sql",
    "parse_id",
    "shard_of_id",
    "time_of_id",
]
