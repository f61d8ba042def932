"""The asyncio members of ``dbscale._compat`` under cancellation: a cancelled caller stays cancelled, and
a cancelled ``AWorkers.run`` returns only after its calls have unwound."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Awaitable, Callable

import pytest

from dbscale._compat import AWorkers, Workers, aacquire, aevent_wait


def test_aevent_wait_cancelled_as_the_event_is_set_stays_cancelled() -> None:
    """Python 3.11's ``asyncio.wait_for`` returned the result when the cancellation and the wake-up met, and
    the cancelled waiter ran on (a cancelled bulk lane then waited forever for a batch no one would load)."""

    async def main() -> list[str]:
        outcomes = []
        for _ in range(20):
            event = asyncio.Event()
            ran_on: list[bool] = []

            async def waiter(event: asyncio.Event = event, ran_on: list[bool] = ran_on) -> None:
                await aevent_wait(event, 60)
                ran_on.append(True)

            task = asyncio.create_task(waiter())
            await asyncio.sleep(0)  # the waiter is waiting
            event.set()
            task.cancel()
            try:
                await task
                outcomes.append("ran on" if ran_on else "returned")
            except asyncio.CancelledError:
                outcomes.append("cancelled")
        return outcomes

    assert set(asyncio.run(main())) == {"cancelled"}


def test_aacquire_cancelled_as_the_lock_is_released_stays_cancelled_and_does_not_hold_it() -> None:
    async def main() -> tuple[str, bool]:
        lock = asyncio.Lock()
        await lock.acquire()
        task = asyncio.create_task(aacquire(lock, 60))
        await asyncio.sleep(0)
        lock.release()
        task.cancel()
        try:
            await task
            outcome = "acquired"
        except asyncio.CancelledError:
            outcome = "cancelled"
        return outcome, lock.locked()

    assert asyncio.run(main()) == ("cancelled", False)


def test_aevent_wait_times_out_and_sees_a_set_event() -> None:
    async def main() -> tuple[bool, bool]:
        event = asyncio.Event()
        timed_out = await aevent_wait(event, 0.01)
        event.set()
        return timed_out, await aevent_wait(event, 0.01)

    assert asyncio.run(main()) == (False, True)


def test_a_cancelled_aworkers_run_returns_after_its_calls_unwound() -> None:
    """A cancelled bulk load must not return while one of its lanes could still commit a batch, or a load
    run again at once reads a resume position that is short and loads that batch twice."""
    unwound: list[str] = []

    def call(name: str, cleanup: float) -> Callable[[], Awaitable[None]]:
        async def run() -> None:
            try:
                await asyncio.sleep(60)
            finally:
                await asyncio.shield(asyncio.sleep(cleanup))  # a rollback, a COMMIT's answer …
                unwound.append(name)

        return run

    async def main() -> list[str]:
        workers = AWorkers(2, "test")
        task = asyncio.create_task(workers.run({"a": call("a", 0.05), "b": call("b", 0.1)}, 60))
        await asyncio.sleep(0.01)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        return sorted(unwound)

    assert asyncio.run(main()) == ["a", "b"]


def test_workers_close_wait_waits_for_running_calls() -> None:
    finished = threading.Event()

    def slow() -> None:
        time.sleep(0.2)
        finished.set()

    workers = Workers(1, "test")
    assert workers.run({"slow": slow}, 0.01) == {}
    workers.close(wait=True)
    assert finished.is_set()


def test_aloop_local_closes_each_loops_value_as_asyncio_run_ends_once() -> None:
    from dbscale._compat import ALoopLocal

    closed: list[int] = []
    made = iter(range(100))

    async def close(value: int) -> None:
        await asyncio.sleep(0)  # the loop still runs
        closed.append(value)

    local: ALoopLocal[int] = ALoopLocal(lambda: next(made), close)

    async def use() -> int:
        return local.get() + local.get() * 0

    async def use_and_pop() -> int | None:
        local.get()
        return local.pop()  # its owner closes it: not closed again when the loop ends

    assert [asyncio.run(use()), asyncio.run(use())] == [0, 1]
    assert closed == [0, 1]
    assert asyncio.run(use_and_pop()) == 2
    assert closed == [0, 1]
    assert len(local._values) == len(local._guards) == 0
