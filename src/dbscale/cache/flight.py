"""In-process single-flight: concurrent callers of one key share one load.

:class:`SingleFlight` serves threads, :class:`AsyncSingleFlight` asyncio tasks (per event loop).
The first caller of a key runs the function; the others wait for it and get its result or its
exception — an exception of the load itself (an :class:`Exception`). A leader that was *interrupted*
(cancelled, or a ``KeyboardInterrupt``/``SystemExit`` in its thread) did not fail the load: its
followers, which were not interrupted, try again and one of them leads. Across processes the leases do the same job (:mod:`dbscale.cache.leases`); this layer
only keeps one process from sending one lease request per waiting caller.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Awaitable, Callable
from typing import Any

__all__ = ["AsyncSingleFlight", "SingleFlight"]


def _shared(exc: BaseException) -> bool:
    """Is the leader's exception its followers' outcome too? Only a failure of the load, not an interruption."""
    return isinstance(exc, Exception)


class _Flight:
    """One load that concurrent callers wait for (a held lock, not an Event: cheaper)."""

    __slots__ = ("_lock", "error", "value")

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._lock.acquire()
        self.value: Any = None
        self.error: BaseException | None = None

    def wait(self) -> None:
        with self._lock:
            pass

    def finish(self) -> None:
        self._lock.release()


class SingleFlight:
    """Single-flight for threads."""

    __slots__ = ("_flights", "_lock")

    def __init__(self) -> None:
        self._flights: dict[str, _Flight] = {}
        self._lock = threading.Lock()

    def run(self, key: str, fn: Callable[[], Any]) -> Any:
        """Run ``fn`` once for concurrent callers of ``key``; share its outcome."""
        while True:
            with self._lock:
                flight = self._flights.get(key)
                if flight is None:
                    flight = self._flights[key] = _Flight()
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
                del self._flights[key]
            flight.finish()


class AsyncSingleFlight:
    """Single-flight for asyncio tasks; flights of different event loops are kept apart."""

    __slots__ = ("_flights",)

    def __init__(self) -> None:
        self._flights: dict[tuple[int, str], asyncio.Future[Any]] = {}

    async def run(self, key: str, fn: Callable[[], Awaitable[Any]]) -> Any:
        """Await ``fn()`` once for concurrent callers of ``key`` on this loop; share its outcome."""
        loop = asyncio.get_running_loop()
        fkey = (id(loop), key)
        while True:
            flight = self._flights.get(fkey)
            if flight is None:
                break
            await asyncio.wait((flight,))  # raises only if *this* task is cancelled; the flight is untouched
            if flight.cancelled():
                continue  # the leader was cancelled, not the load: try again (one of the followers leads)
            exc = flight.exception()
            if exc is None:
                return flight.result()
            raise exc
        flight = loop.create_future()
        self._flights[fkey] = flight
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
            if self._flights.get(fkey) is flight:
                del self._flights[fkey]
