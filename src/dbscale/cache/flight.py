"""In-process single-flight: concurrent callers of one key share one load.

:class:`SingleFlight` serves threads, :class:`AsyncSingleFlight` asyncio tasks (per event loop).
The first caller of a key runs the function; the others wait for it and get its result or its
exception — an exception of the load itself (an :class:`Exception`). A leader that was *interrupted*
(cancelled, or a ``KeyboardInterrupt``/``SystemExit`` in its thread) did not fail the load: its
followers, which were not interrupted, try again and one of them leads. A caller whose L2 read came
after an invalidation naming the key does not join a load that began before it (``outdated``):
that load may have read the old row, so the caller starts a fresh one. Across processes the leases do the same job (:mod:`dbscale.cache.leases`); this layer
only keeps one process from sending one lease request per waiting caller.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Awaitable, Callable
from typing import Any

from dbscale.forks import AtFork

__all__ = ["AsyncSingleFlight", "SingleFlight"]


def _shared(exc: BaseException) -> bool:
    """Is the leader's exception its followers' outcome too? Only a failure of the load, not an interruption."""
    return isinstance(exc, Exception)


class _Flight:
    """One load that concurrent callers wait for (a held lock, not an Event: cheaper)."""

    __slots__ = ("_lock", "error", "token", "value")

    def __init__(self, token: int) -> None:
        self._lock = threading.Lock()
        self._lock.acquire()
        self.token = token
        self.value: Any = None
        self.error: BaseException | None = None

    def wait(self) -> None:
        with self._lock:
            pass

    def finish(self) -> None:
        self._lock.release()


Outdated = Callable[[str, int], bool]


def _never(key: str, token: int) -> bool:
    return False


class SingleFlight:
    """Single-flight for threads. ``outdated(key, token)``: was ``key`` invalidated since ``token``?"""

    __slots__ = ("__weakref__", "_flights", "_lock", "_outdated")

    def __init__(self, outdated: Outdated = _never) -> None:
        self._flights: dict[str, _Flight] = {}
        self._lock = threading.Lock()
        self._outdated = outdated
        _thread_flights.add(self)

    def _after_fork(self) -> None:
        """In a forked child: no flight (their leaders are the parent's threads, which a child has not)."""
        self._flights = {}
        self._lock = threading.Lock()

    def run(self, key: str, fn: Callable[[], Any], token: int = 0) -> Any:
        """Run ``fn`` once for concurrent callers of ``key``; share its outcome.

        ``token`` is the caller's L1 token, taken before its L2 read: a flight led with an older
        token is not joined if ``key`` was invalidated since that older token (the new flight
        replaces it). Conservative: an invalidation after ``token`` too costs a load, never a value.
        """
        while True:
            with self._lock:
                flight = self._flights.get(key)
                if flight is None or (flight.token < token and self._outdated(key, flight.token)):
                    flight = self._flights[key] = _Flight(token)
                    break
            flight.wait()
            if flight.error is None:
                return flight.value
            if _shared(flight.error):
                raise flight.error
            # the leader was interrupted, not the load: try again (one of the followers leads)
        try:
            flight.value = fn()
            return flight.value
        except BaseException as exc:
            flight.error = exc
            raise
        finally:
            with self._lock:
                if self._flights.get(key) is flight:
                    del self._flights[key]
            flight.finish()


class AsyncSingleFlight:
    """Single-flight for asyncio tasks; flights of different event loops are kept apart. See :class:`SingleFlight`."""

    __slots__ = ("__weakref__", "_flights", "_outdated")

    def __init__(self, outdated: Outdated = _never) -> None:
        self._flights: dict[tuple[int, str], tuple[asyncio.Future[Any], int]] = {}
        self._outdated = outdated
        _task_flights.add(self)

    def _after_fork(self) -> None:
        """In a forked child: no flight (their futures belong to the parent's event loops)."""
        self._flights = {}

    async def run(self, key: str, fn: Callable[[], Awaitable[Any]], token: int = 0) -> Any:
        """Await ``fn()`` once for concurrent callers of ``key`` on this loop; share its outcome."""
        loop = asyncio.get_running_loop()
        fkey = (id(loop), key)
        while True:
            found = self._flights.get(fkey)
            if found is None:
                break
            flight, led_with = found
            if led_with < token and self._outdated(key, led_with):
                break
            await asyncio.wait((flight,))  # raises only if *this* task is cancelled; the flight is untouched
            if flight.cancelled():
                continue  # the leader was cancelled, not the load: try again (one of the followers leads)
            exc = flight.exception()
            if exc is None:
                return flight.result()
            raise exc
        flight = loop.create_future()
        entry = self._flights[fkey] = (flight, token)
        try:
            value = await fn()
        except BaseException as exc:
            if _shared(exc):
                flight.set_exception(exc)
                flight.exception()  # mark retrieved: there may be no followers
            else:
                flight.cancel()
            raise
        else:
            flight.set_result(value)
            return value
        finally:
            if self._flights.get(fkey) is entry:
                del self._flights[fkey]


#: Every single-flight table, emptied in a forked child (:mod:`dbscale.forks`).
_thread_flights: AtFork[SingleFlight] = AtFork(SingleFlight._after_fork)
_task_flights: AtFork[AsyncSingleFlight] = AtFork(AsyncSingleFlight._after_fork)
