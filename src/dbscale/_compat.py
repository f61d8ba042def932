"""The few things sync and async truly differ in, paired by name (in the manner of psycopg_pool's ``_acompat``).

Async sources (``routing/aio.py``, ``routing/monitor_aio.py`` …) use the asyncio member of each
pair; ``scripts/unasync.py`` renames it to the blocking member (``ALock`` → ``Lock``, ``asleep`` →
``sleep``, ``aspawn`` → ``spawn`` …), so a generated twin differs from its source only by names.
Each pair keeps one contract:

============================ ============================ ==============================================
asyncio                      blocking                     contract
============================ ============================ ==============================================
``ALock``, ``AEvent``        ``Lock``, ``Event``          the primitives
``AWakeup``                  ``Wakeup``                   one waiter's wake-up: ``set``, ``wait``, ``clear``
``asleep(s)``                ``sleep(s)``                 wait ``s`` seconds
``atry_acquire(lock)``       ``try_acquire(lock)``        take the lock if free, else False at once
``aacquire(lock, s)``        ``acquire(lock, s)``         take the lock within ``s`` seconds, else False
``aevent_wait(ev, s)``       ``event_wait(ev, s)``        until set or ``s`` seconds; whether it is set
``aspawn(fn, name)``         ``spawn(fn, name)``          run ``fn()`` in the background (task / daemon thread)
``ajoin(runner, s)``         ``join(runner, s)``          end a spawned runner (cancel / wait up to ``s``)
``AWorkers(n, name).run``    ``Workers(n, name).run``     run calls concurrently under one deadline
``adeadline(s)``             ``deadline(s)``              bound a block to ``s`` seconds (asyncio: a
                                                          timeout; blocking: the socket timeout does it)
``ato_thread(fn)``           ``to_thread(fn)``            a blocking call, off the event loop
``acall_loader(f, a, kw)``   ``call_loader(f, a, kw)``    a cache loader's value (TypeError naming the
                                                          mix-up for a blocking loader given to asyncio
                                                          code, or an async one to blocking code)
``ALoopLocal(make)``         ``LoopLocal(make)``          one ``make()`` per event loop / per process
============================ ============================ ==============================================
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import threading
import time
import weakref
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Mapping
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import wait as wait_futures
from contextlib import AbstractContextManager, nullcontext
from typing import Any, Generic, TypeVar

T = TypeVar("T")

# -- primitives ---------------------------------------------------------------------------------------
Lock = threading.Lock
Event = threading.Event
Runner = threading.Thread
ALock = asyncio.Lock
AEvent = asyncio.Event
ARunner = asyncio.Task[None]
AWakeup = asyncio.Event
sleep = time.sleep
asleep = asyncio.sleep


class Wakeup:
    """The wake-up of one waiting thread: an Event's ``set``/``wait``/``clear`` for a single waiter, on one lock.

    ``wait()`` takes the lock that ``set()`` released, so it also clears (``clear`` is a no-op); several
    ``set()`` before a ``wait()`` wake it once. A ``threading.Event`` costs a Condition, and a new lock
    per wait, which a write-behind save made for every call.
    """

    __slots__ = ("_lock",)

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._lock.acquire()

    def set(self) -> None:
        """Wake the waiter (now, or at its next :meth:`wait`)."""
        with contextlib.suppress(RuntimeError):  # already set
            self._lock.release()

    def wait(self) -> bool:
        """Block until :meth:`set` (consumes it)."""
        return self._lock.acquire()

    def clear(self) -> None:
        """Nothing to do: :meth:`wait` consumed the wake-up."""


def try_acquire(lock: threading.Lock) -> bool:
    """Take ``lock`` if it is free; False at once if it is held."""
    return lock.acquire(blocking=False)


async def atry_acquire(lock: asyncio.Lock) -> bool:
    """Take ``lock`` if it is free; False at once if it is held (acquiring a free lock does not yield)."""
    if lock.locked():
        return False
    await lock.acquire()
    return True


def acquire(lock: threading.Lock, timeout: float) -> bool:
    """Take ``lock`` within ``timeout`` seconds; False if it stayed held."""
    return lock.acquire(timeout=timeout)


async def aacquire(lock: asyncio.Lock, timeout: float) -> bool:
    """Take ``lock`` within ``timeout`` seconds; False if it stayed held.

    ``asyncio.timeout``, not ``wait_for``: Python 3.11's ``wait_for`` swallows a cancellation that
    arrives as the awaited call finishes, and the caller runs on as if never cancelled.
    """
    try:
        async with asyncio.timeout(timeout):
            await lock.acquire()
    except TimeoutError:
        return False
    return True


def event_wait(event: threading.Event, timeout: float) -> bool:
    """Wait until ``event`` is set or ``timeout`` seconds passed; whether it is set."""
    return event.wait(timeout)


async def aevent_wait(event: asyncio.Event, timeout: float) -> bool:
    """Wait until ``event`` is set or ``timeout`` seconds passed; whether it is set (cancellable, as :func:`aacquire`)."""
    if not event.is_set():
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout):
                await event.wait()
    return event.is_set()


_NO_DEADLINE = nullcontext()


def deadline(seconds: float) -> AbstractContextManager[None]:
    """Nothing to add: a blocking call is bounded by its socket timeout (one shared no-op context)."""
    return _NO_DEADLINE


def adeadline(seconds: float) -> asyncio.Timeout:
    """Cancel the block after ``seconds`` (TimeoutError): one deadline for every await inside."""
    return asyncio.timeout(seconds)


def to_thread(fn: Callable[[], T]) -> T:
    """``fn()`` (a blocking caller may block)."""
    return fn()


async def ato_thread(fn: Callable[[], T]) -> T:
    """``fn()`` in a worker thread, so the event loop keeps running."""
    return await asyncio.to_thread(fn)


def call_loader(func: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    """``func(*args, **kwargs)``, refusing an awaitable: a blocking cache cannot await an async loader."""
    value = func(*args, **kwargs)
    if inspect.isawaitable(value):
        if inspect.iscoroutine(value):
            value.close()  # never awaited: close it instead of leaving a "never awaited" warning
        raise TypeError(
            f"the cache loader {_loader_name(func)} returned an awaitable; the blocking Cache calls its loader "
            "without awaiting it: use AsyncCache (cluster.cache of an AsyncCluster) or a plain def"
        )
    return value


async def acall_loader(func: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    """``await func(*args, **kwargs)``, with a clear error when ``func`` is a blocking loader."""
    value = func(*args, **kwargs)
    if not inspect.isawaitable(value):
        raise TypeError(
            f"the cache loader {_loader_name(func)} returned {type(value).__name__}, not an awaitable; "
            "AsyncCache awaits its loader: pass an async def (or a lambda returning a coroutine), "
            "or use the blocking Cache (cluster.cache of a Cluster)"
        )
    return await value


def _loader_name(func: Callable[..., Any]) -> str:
    return getattr(func, "__qualname__", None) or repr(func)


class LoopLocal(Generic[T]):
    """One ``make()`` for the process, made on first use (blocking code has no event loop to tell apart).

    ``close`` is for the asyncio flavour (the value lives as long as the process; its owner closes it).
    """

    __slots__ = ("_lock", "_make", "_value")

    def __init__(self, make: Callable[[], T], close: Callable[[T], Any] | None = None) -> None:
        self._make = make
        self._value: T | None = None
        self._lock = threading.Lock()

    def get(self) -> T:
        """The value, made now if there is none."""
        value = self._value
        if value is None:
            with self._lock:
                value = self._value
                if value is None:
                    value = self._value = self._make()
        return value

    def peek(self) -> T | None:
        """The value if it was made, else None (makes nothing)."""
        return self._value

    def pop(self) -> T | None:
        """Forget the value and return it (None if none was made); the next :meth:`get` makes a new one."""
        with self._lock:
            value, self._value = self._value, None
        return value


class ALoopLocal(Generic[T]):
    """One ``make()`` per running event loop (an asyncio client belongs to the loop it first ran on).

    With ``close``, a value still held when ``asyncio.run()`` (or an ``asyncio.Runner``) ends its loop
    is closed by ``await close(value)`` on that loop before it stops — a blocking program that calls
    ``asyncio.run()`` per request leaves no client's sockets to the garbage collector.
    """

    __slots__ = ("_close", "_guards", "_make", "_values")

    def __init__(self, make: Callable[[], T], close: Callable[[T], Awaitable[None]] | None = None) -> None:
        self._make = make
        self._close = close
        self._values: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, T] = weakref.WeakKeyDictionary()
        self._guards: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, Any] = weakref.WeakKeyDictionary()

    def get(self) -> T:
        """The running loop's value, made now if there is none."""
        loop = asyncio.get_running_loop()
        value = self._values.get(loop)
        if value is None:
            value = self._values[loop] = self._make()
            if self._close is not None:
                self._guards[loop] = self._close_at_shutdown(loop, value, self._close)
        return value

    def _close_at_shutdown(
        self, loop: asyncio.AbstractEventLoop, value: T, close: Callable[[T], Awaitable[None]]
    ) -> Any:
        """An async generator suspended on ``loop``: ``loop.shutdown_asyncgens()`` (run by ``asyncio.run``
        and ``Runner.close``) finalises it while the loop still runs, and its ``finally`` closes ``value``."""
        values, guards = self._values, self._guards  # their entries hold the loop: dropped here, or kept forever

        async def guard() -> AsyncIterator[None]:
            try:
                yield
            finally:
                guards.pop(loop, None)
                if values.get(loop) is value:  # not popped (and closed) by its owner meanwhile
                    values.pop(loop, None)
                    with contextlib.suppress(Exception):
                        await close(value)

        agen = guard()
        step = asyncio.ensure_future(agen.__anext__())  # the first step registers it with the loop's asyncgen hooks
        return agen, step  # held: the loop's weak set alone would let it be finalised (and the value closed) now

    def peek(self) -> T | None:
        """The running loop's value if it was made, else None (makes nothing)."""
        return self._values.get(asyncio.get_running_loop())

    def pop(self) -> T | None:
        """Forget the running loop's value and return it (None outside a loop or if none was made)."""
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return None
        self._guards.pop(loop, None)
        return self._values.pop(loop, None)


# -- background runners ---------------------------------------------------------------------------------
def spawn(fn: Callable[[], None], name: str) -> threading.Thread:
    """Run ``fn()`` in a started daemon thread."""
    thread = threading.Thread(target=fn, name=name, daemon=True)
    thread.start()
    return thread


def aspawn(fn: Callable[[], Coroutine[Any, Any, None]], name: str) -> asyncio.Task[None]:
    """Run ``fn()`` as a task on the running loop."""
    return asyncio.get_running_loop().create_task(fn(), name=name)


def join(runner: threading.Thread, timeout: float) -> None:
    """Wait up to ``timeout`` seconds for a thread that was told to stop (a daemon thread left hanging dies with the process)."""
    runner.join(timeout)


async def ajoin(runner: asyncio.Task[None], timeout: float) -> None:
    """Cancel a task and wait for it to unwind (``timeout`` is for the thread flavour)."""
    runner.cancel()
    with contextlib.suppress(asyncio.CancelledError, Exception):
        await runner


# -- concurrent calls under one deadline -----------------------------------------------------------------
class Workers:
    """A thread pool that runs named calls concurrently under one deadline."""

    def __init__(self, size: int, name: str) -> None:
        self._pool = ThreadPoolExecutor(max_workers=max(1, size), thread_name_prefix=name)

    def run(self, calls: Mapping[str, Callable[[], T]], timeout: float) -> dict[str, T]:
        """The results of the calls that finished within ``timeout`` (one deadline for all; late ones run on)."""
        futures = {name: self._pool.submit(call) for name, call in calls.items()}
        done, _ = wait_futures(futures.values(), timeout=timeout)
        return {name: fut.result() for name, fut in futures.items() if fut in done}

    def close(self, wait: bool = False) -> None:
        """Stop taking calls; queued ones are cancelled, running ones finish in their threads (waited for with ``wait``)."""
        self._pool.shutdown(wait=wait, cancel_futures=True)


class AWorkers:
    """Named calls run concurrently as tasks under one deadline (``size`` and ``name`` are for the thread flavour)."""

    def __init__(self, size: int, name: str) -> None:
        self.name = name

    async def run(self, calls: Mapping[str, Callable[[], Awaitable[T]]], timeout: float) -> dict[str, T]:
        """The results of the calls that finished within ``timeout``; late ones are cancelled (and unwound).

        Cancelled itself, it cancels every call and returns (raising) only once they have unwound.
        """
        tasks = {name: asyncio.ensure_future(call()) for name, call in calls.items()}
        if not tasks:
            return {}
        try:
            done, pending = await asyncio.wait(tasks.values(), timeout=timeout)
        except BaseException:  # the caller is cancelled: so are the calls, and it returns once they unwound
            for task in tasks.values():
                task.cancel()
            await asyncio.gather(*tasks.values(), return_exceptions=True)
            raise
        for task in pending:
            task.cancel()
        if pending:
            await asyncio.gather(*pending, return_exceptions=True)
        return {name: task.result() for name, task in tasks.items() if task in done}

    def close(self, wait: bool = False) -> None:
        """Nothing to release or wait for: :meth:`run` returns, even cancelled, once its tasks ended."""


__all__ = [
    "AEvent",
    "ALock",
    "ALoopLocal",
    "ARunner",
    "AWakeup",
    "AWorkers",
    "Event",
    "Lock",
    "LoopLocal",
    "Runner",
    "Wakeup",
    "Workers",
    "aacquire",
    "acall_loader",
    "acquire",
    "adeadline",
    "aevent_wait",
    "ajoin",
    "asleep",
    "aspawn",
    "ato_thread",
    "atry_acquire",
    "call_loader",
    "deadline",
    "event_wait",
    "join",
    "sleep",
    "spawn",
    "to_thread",
    "try_acquire",
]
