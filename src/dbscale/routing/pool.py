"""Liveness without a round trip per checkout: ping a pooled connection only after it sat idle.

SQLAlchemy's ``pool_pre_ping`` sends ``SELECT 1`` on every checkout, a round trip that doubles the
cost of a one-statement read. Like HikariCP (``aliveBypassWindowMs``, 500 ms), a connection that was
checked in (or opened, or pinged) within the last ``idle`` seconds is handed out as it is; an older
one is pinged first, and a failed ping raises ``DisconnectionError``, on which the pool discards the
connection and opens a new one (SQLAlchemy's documented "custom pessimistic ping"). A connection that
died within the window surfaces on its first statement: a read retries it on another node once; a
write raises ``PrimaryUnavailable`` at the caller's first statement, which never reached the server
(psycopg sends ``BEGIN`` alone first).
"""

from __future__ import annotations

import time
import weakref
from collections.abc import Callable
from typing import Any

from sqlalchemy import Engine, event
from sqlalchemy import exc as sa_exc

#: ``ConnectionPoolEntry.info`` key: when the connection last proved usable (on ``clock``).
USED_KEY = "dbscale_used"
#: The ping listener's attribute holding its idle window.
_WINDOW_ATTR = "dbscale_idle_window"
#: Each pool's idle window, read once from its listeners (None: no ping installed).
_WINDOWS: weakref.WeakKeyDictionary[Any, float | None] = weakref.WeakKeyDictionary()


def idle_window(pool: Any) -> float | None:
    """The idle window (seconds) after which ``pool``'s connections are pinged; None: never pinged.

    Read from the pool's own checkout listeners, which the pool ``engine.dispose()`` makes next
    (``pool.recreate()``) inherits, so the window travels with them to every later pool; cached per pool.
    """
    try:
        return _WINDOWS[pool]
    except KeyError:
        idle = None
        for listener in pool.dispatch.checkout:
            idle = getattr(listener, _WINDOW_ATTR, idle)
        _WINDOWS[pool] = idle
        return idle


def install_idle_ping(engine: Engine, idle: float, clock: Callable[[], float] = time.monotonic) -> None:
    """Ping ``engine``'s connections on checkout only when idle longer than ``idle`` seconds."""
    dialect = engine.dialect

    def used(dbapi_conn: Any, record: Any, *_: Any) -> None:
        if dbapi_conn is not None:
            record.info[USED_KEY] = clock()

    def checkout(dbapi_conn: Any, record: Any, proxy: Any) -> None:
        last = record.info.get(USED_KEY)
        if last is not None and clock() - last <= idle:
            return
        try:
            dialect.do_ping(dbapi_conn)
        except Exception as exc:  # any failure: discard the connection, the pool opens another
            raise sa_exc.DisconnectionError(f"ping failed: {type(exc).__name__}") from exc
        record.info[USED_KEY] = clock()

    setattr(checkout, _WINDOW_ATTR, idle)  # what idle_window() finds on this pool and the ones recreated from it
    _WINDOWS.pop(engine.pool, None)
    event.listen(engine, "connect", used)
    event.listen(engine, "checkin", used)
    event.listen(engine, "checkout", checkout)


__all__ = ["USED_KEY", "idle_window", "install_idle_ping"]
