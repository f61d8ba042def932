"""In-process single-flight: concurrent callers of one key share one load.

:class:`SingleFlight` serves threads, :class:`AsyncSingleFlight` asyncio tasks (per event loop).
The first caller of a key runs the function; the others wait for it and get its result or its
exception. Across processes the leases do the same job (:mod:`dbscale.cache.leases`); this layer
only keeps one process from sending one lease request per waiting caller.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Awaitable, Callable
from typing import Any

__all__ = ["AsyncSingleFlight", "SingleFlight"]


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
        with self._lock:
            flight = self._flights.get(key)
            leader = flight is None
            if flight is None:
                flight = self._flights[key] = _Flight()
        if not leader:
            flight.wait()
            if flight.error is not None:
                raise flight.error
            return flight.value
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
        flight = self._flights.get(fkey)
        if flight is not None:
            return await asyncio.shield(flight)
        flight = loop.create_future()
        self._flights[fkey] = flight
        try:
            value = await fn()
        except BaseException as exc:
            if not flight.done():
                flight.set_exception(exc)
                flight.exception()  # mark retrieved: there may be no followers
            raise
        else:
            flight.set_result(value)
            return value
        finally:
            self._flights.pop(fkey, None)
