"""Pool checkout and checkin without SQLAlchemy's greenlet when they need no I/O (asyncio reads).

Under asyncio SQLAlchemy runs every pool checkout and checkin inside a greenlet, because either
*may* do I/O: open a connection, ping it, recycle it, roll it back. A greenlet switch costs about as
much as the rest of a routed read. Most checkouts do none of that: an idle connection waits at the
head of the pool's queue, it was used within the idle window (so the ping listener of
:mod:`dbscale.routing.pool` lets it through), it is younger than ``pool_recycle`` and the pool was
not invalidated since it connected. :func:`checkout_without_io` checks exactly that on the
record the pool will hand out next, and only then calls ``pool.connect()`` directly; otherwise it
returns None and the caller goes through the greenlet as before. The check and the checkout run
without an ``await`` between them, so no other task can take that record in between. The pool's
bookkeeping (sizes, overflow, ``checkedout()``, events) is SQLAlchemy's own in both cases.

:func:`checkin_idle` is the matching checkin: a connection whose session is idle (autocommit, no
transaction open) has nothing to roll back, so the pool's reset is skipped.
"""

from __future__ import annotations

import time
from typing import Any

from psycopg.pq import TransactionStatus
from sqlalchemy.pool import Pool, PoolProxiedConnection

from dbscale.routing.park import _Parking, park
from dbscale.routing.pool import USED_KEY, idle_window

IDLE = TransactionStatus.IDLE.value

#: Hand a connection out without the ping only this far inside the idle window, so the ping
#: listener, which reads the clock again a moment later, agrees with the check.
MARGIN = 0.05


def checkout_without_io(pool: Pool) -> PoolProxiedConnection | None:
    """A parked connection (:mod:`dbscale.routing.park`), or ``pool.connect()`` when it will do no I/O
    (an asyncio pool only); else None."""
    p: Any = pool
    if isinstance(pool, _Parking):
        fairy = pool.unpark()
        if fairy is not None or pool.parked():
            return fairy  # a parked one that needs I/O (a ping) goes first: the caller's pool.connect() does it
    queue = p.__dict__.get("_pool")
    inner = getattr(queue, "__dict__", {}).get("_queue")  # the asyncio queue, made on first use
    if inner is None or p._pre_ping:
        return None
    items = inner._queue
    if not items:
        return None
    record = items[-1] if queue.use_lifo else items[0]
    if record.dbapi_connection is None:
        return None
    started = record.starttime
    if started < p._invalidate_time or started < record._soft_invalidate_time:
        return None
    if p._recycle > -1 and time.time() - started > p._recycle:
        return None
    listeners = len(p.dispatch.checkout)
    idle = idle_window(pool)
    if idle is None:
        if listeners:
            return None  # someone else's checkout listener, which may do I/O
    else:
        used = record.info.get(USED_KEY)
        if listeners > 1 or used is None or time.monotonic() - used > idle - MARGIN:
            return None
    return pool.connect()


def checkin_idle(fairy: PoolProxiedConnection) -> bool:
    """Return ``fairy`` to its pool when that needs no I/O (its session is idle, or it was invalidated).

    The pool's reset (a ``ROLLBACK`` call, which psycopg sends only inside a transaction) is skipped:
    there is nothing to roll back; a parking pool keeps it parked (:mod:`dbscale.routing.park`).
    False: the caller must close it the usual way.
    """
    driver: Any = fairy.driver_connection
    if driver is not None:
        if driver.pgconn.transaction_status != IDLE:
            return False
        if park(fairy):
            return True
    fairy._checkin(transaction_was_reset=True)
    return True


__all__ = ["MARGIN", "checkin_idle", "checkout_without_io"]
