"""Parked connections: a read's idle connection waits checked out, in front of its pool, for the next read.

Theory of operation: returning a connection to a SQLAlchemy pool and taking it out again costs a
routed read about as much CPU as its statement (the ``_ConnectionFairy`` made and finalized, its
weak reference, the checkout and checkin events, the queue's locks and conditions). A read whose
session is idle at the end (autocommit, nothing open: :func:`dbscale.routing.quick.checkin_idle`)
does not need any of that: :meth:`ParkingPool.park` keeps its fairy, still checked out, on a LIFO
stack, and the next checkout of the pool takes it back (:meth:`ParkingPool.unpark`) as it was.

The pool stays honest about them:

- A parked connection is idle: :meth:`~ParkingPool.checkedout` does not count it, ``checkedin()``
  and ``status()`` do. A connection that is checked out and never returned still counts.
- Size limits: parked plus queued connections never exceed ``pool_size`` (an overflow connection
  is checked in, and closed, as before); parked plus checked out never exceed the pool's capacity,
  because a parked connection keeps its slot. No caller waits for a connection while one is
  parked: every checkout (``pool.connect()``, ``engine.connect()`` …) takes a parked one first, and
  nothing is parked while a checkout is inside the pool, where it might be waiting for a checkin.
- Liveness as in the pool: a parked connection is handed out as it is only within the idle window
  of :mod:`dbscale.routing.pool` (its ``USED_KEY`` stamped when parked, as the checkin event
  does); an older one goes through SQLAlchemy's checkout again (the ping, and a reconnect when the
  ping fails). One the pool would recycle (``pool_recycle``, the pool invalidated by a lost
  connection after it connected, a soft invalidation) is checked in, and the pool recycles it.
- :meth:`~ParkingPool.dispose` (``engine.dispose()``, ``cluster.close()``) closes parked
  connections with the idle ones, and the pool that ``engine.dispose()`` makes next parks with the
  same idle window (it inherits the ping listener that carries it); :meth:`~ParkingPool.drop_parked`
  checks them all in, marked for recycling (the router calls it when a read on the node failed on
  its connection).
- Only pools with no checkout, checkin or reset listeners of anyone else park (such a listener
  would miss events); reads on a SQLAlchemy ``Connection`` are returned to the pool as usual.

Park and unpark do no I/O and never ``await``, so a cancellation cannot land between taking a
connection off the stack and handing it out; the stack is guarded by a lock for threads.
"""

from __future__ import annotations

import threading
import time
from typing import Any

from sqlalchemy.pool import AsyncAdaptedQueuePool, PoolProxiedConnection, QueuePool
from sqlalchemy.pool.base import _ConnectionFairy

from dbscale.routing.pool import USED_KEY, idle_window


class _Parking:
    """The parking behaviour of :class:`ParkingPool` and :class:`AsyncParkingPool` (a mixin over ``QueuePool``)."""

    def __init__(self, *args: Any, **kw: Any) -> None:
        super().__init__(*args, **kw)
        self._parked: list[Any] = []  # fairies, newest last
        self._park_lock = threading.Lock()
        self._inside = 0  # checkouts running inside the pool (one may be waiting for a checkin)

    # -- accounting ---------------------------------------------------------------------------
    def parked(self) -> int:
        """How many idle connections are parked."""
        return len(self._parked)

    def checkedout(self) -> int:
        """Connections in use (parked ones are idle and not counted)."""
        base: Any = super()
        return int(base.checkedout()) - len(self._parked)

    def checkedin(self) -> int:
        """Idle connections: in the pool's queue or parked."""
        base: Any = super()
        return int(base.checkedin()) + len(self._parked)

    # -- park / unpark ------------------------------------------------------------------------
    def _parks(self) -> bool:
        """Whether this pool may park (no listener of anyone else would miss a checkout or checkin)."""
        ours = 0 if idle_window(self) is None else 1
        d = self.dispatch  # type: ignore[attr-defined]
        return len(d.checkout) <= ours and len(d.checkin) <= ours and not d.reset

    def park(self, fairy: PoolProxiedConnection) -> bool:
        """Keep ``fairy`` (checked out, its session idle) for the next checkout; False: check it in instead."""
        f: Any = fairy
        record = f._connection_record
        if record is None or f.dbapi_connection is None or f._counter != 1 or not self._parks():
            return False
        with self._park_lock:
            queue = self._pool  # type: ignore[attr-defined]
            if self._inside or len(self._parked) + queue.qsize() >= queue.maxsize:
                return False
            record.info[USED_KEY] = time.monotonic()  # what the idle ping's checkin listener records
            self._parked.append(f)
        return True

    def unpark(self) -> PoolProxiedConnection | None:
        """The newest parked connection when it can be handed out as it is (no I/O), else None."""
        parked = self._parked
        if not parked:
            return None
        with self._park_lock:
            if not parked:
                return None
            f = parked[-1]
            if not self._usable(f):
                return None
            parked.pop()
        return f  # type: ignore[no-any-return]

    def _usable(self, f: Any) -> bool:
        """Whether parked ``f`` may be handed out without I/O (the checks of a checkout, minus the ping)."""
        if not _current(self, f):
            return False
        idle = idle_window(self)
        if idle is None:
            return True
        used = f._connection_record.info.get(USED_KEY)
        return used is not None and time.monotonic() - used <= idle

    def _take_any(self) -> Any:
        with self._park_lock:
            return self._parked.pop() if self._parked else None

    def connect(self) -> PoolProxiedConnection:
        """A connection: a parked one if any (pinged, or recycled, when it needs it), else the pool's."""
        fairy = self.unpark()
        if fairy is not None:
            return fairy
        while True:
            f = self._take_any()
            if f is None:
                break
            if _current(self, f):
                # SQLAlchemy's checkout of an existing fairy: the checkout events (the idle ping), and a
                # reconnect when the ping fails; on any other error the record is checked in.
                f._counter = 0
                return _ConnectionFairy._checkout(self, fairy=f)  # type: ignore[arg-type]
            f._checkin(transaction_was_reset=True)  # to be recycled by the pool's own checkout
        with self._park_lock:
            self._inside += 1
        base: Any = super()
        try:
            return base.connect()  # type: ignore[no-any-return]
        finally:
            with self._park_lock:
                self._inside -= 1

    def drop_parked(self) -> int:
        """Check every parked connection in, marked for recycling (closed and reopened at its next checkout).

        No I/O unless the pool's queue is full (then the pool closes the connection). Returns how many.
        """
        with self._park_lock:
            dropped, self._parked = self._parked, []
        for f in dropped:
            record = f._connection_record
            if record is not None:
                record.invalidate(soft=True)
            f._checkin(transaction_was_reset=True)
        return len(dropped)

    def dispose(self) -> None:
        """Close the idle connections, parked ones included."""
        self.drop_parked()  # back in the queue, which the pool's dispose closes
        base: Any = super()
        base.dispose()


def _current(pool: Any, f: Any) -> bool:
    """Whether parked ``f`` passes a checkout's checks other than the ping: still connected, and not due for
    recycling (``pool_recycle``, the pool invalidated since it connected, soft-invalidated)."""
    record = f._connection_record
    if record is None or f.dbapi_connection is None or record.dbapi_connection is not f.dbapi_connection:
        return False
    started = record.starttime
    if pool._invalidate_time > started or record._soft_invalidate_time > started:
        return False
    return not (pool._recycle > -1 and time.time() - started > pool._recycle)


class ParkingPool(_Parking, QueuePool):
    """A ``QueuePool`` whose idle read connections can wait parked, checked out, for the next read."""


class AsyncParkingPool(_Parking, AsyncAdaptedQueuePool):
    """The asyncio twin of :class:`ParkingPool` (``AsyncAdaptedQueuePool``)."""


def park(fairy: PoolProxiedConnection) -> bool:
    """Park ``fairy`` in its pool when that is a parking pool and it fits; False: check it in."""
    pool: Any = fairy._pool
    return isinstance(pool, _Parking) and pool.park(fairy)


def drop_parked(pool: Any) -> int:
    """:meth:`ParkingPool.drop_parked` for any pool (0 for one that does not park)."""
    return pool.drop_parked() if isinstance(pool, _Parking) else 0


__all__ = ["AsyncParkingPool", "ParkingPool", "drop_parked", "park"]
