"""In-process single-flight: shared outcomes, and interrupted leaders handing over (no server)."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest

from dbscale.cache.flight import AsyncSingleFlight, SingleFlight


def test_async_followers_share_the_leaders_result_and_error() -> None:
    flight = AsyncSingleFlight()
    calls: list[int] = []

    async def load() -> int:
        calls.append(1)
        await asyncio.sleep(0.01)
        return 7

    async def fail() -> int:
        await asyncio.sleep(0.01)
        raise ValueError("boom")

    async def main() -> None:
        assert await asyncio.gather(*(flight.run("k", load) for _ in range(5))) == [7] * 5
        outcomes = await asyncio.gather(*(flight.run("e", fail) for _ in range(3)), return_exceptions=True)
        assert all(isinstance(o, ValueError) for o in outcomes)

    asyncio.run(main())
    assert calls == [1]
    assert flight._flights == {}


def test_async_cancelled_leader_hands_the_load_to_a_follower() -> None:
    flight = AsyncSingleFlight()
    calls: list[str] = []

    async def main() -> None:
        leader_started = asyncio.Event()
        never = asyncio.Event()  # the leader's load only ends by cancellation: no timing involved
        go = asyncio.Event()

        def loader(name: str):  # type: ignore[no-untyped-def]
            async def load() -> str:
                calls.append(name)
                if name == "leader":
                    leader_started.set()
                    await never.wait()
                await go.wait()  # the new leader holds the flight until every follower has rejoined
                return name

            return load

        leader = asyncio.create_task(flight.run("k", loader("leader")))
        await leader_started.wait()
        followers = [asyncio.create_task(flight.run("k", loader(f"f{i}"))) for i in range(3)]
        for _ in range(5):  # let every follower reach the flight and wait on it
            await asyncio.sleep(0)
        leader.cancel()
        for _ in range(10):  # the followers see the hand-over; one leads, the others join it
            await asyncio.sleep(0)
        go.set()
        outcomes = await asyncio.gather(*followers, return_exceptions=True)
        assert outcomes == ["f0", "f0", "f0"]  # the first follower led; none saw CancelledError
        with pytest.raises(asyncio.CancelledError):
            await leader

    asyncio.run(main())
    assert calls == ["leader", "f0"]
    assert flight._flights == {}


def test_async_cancelled_follower_leaves_the_flight_alone() -> None:
    flight = AsyncSingleFlight()

    async def load() -> int:
        await asyncio.sleep(0.02)
        return 1

    async def main() -> None:
        leader = asyncio.create_task(flight.run("k", load))
        await asyncio.sleep(0)
        follower = asyncio.create_task(flight.run("k", load))
        await asyncio.sleep(0.005)
        follower.cancel()
        assert await leader == 1
        with pytest.raises(asyncio.CancelledError):
            await follower

    asyncio.run(main())


class Interrupted(BaseException):
    pass


def test_thread_leader_interrupted_hands_over_but_load_errors_are_shared() -> None:
    flight = SingleFlight()
    started = threading.Event()
    out: list[object] = []

    def interrupted() -> int:
        started.set()
        time.sleep(0.05)
        raise Interrupted

    def lead() -> None:
        with pytest.raises(Interrupted):
            flight.run("k", interrupted)

    def follow() -> None:
        out.append(flight.run("k", lambda: 2))

    threads = [threading.Thread(target=lead)]
    threads[0].start()
    started.wait(5)
    threads += [threading.Thread(target=follow) for _ in range(3)]
    for t in threads[1:]:
        t.start()
    for t in threads:
        t.join(5)
    assert out == [2, 2, 2]

    def fail() -> int:
        time.sleep(0.05)
        raise ValueError("boom")

    errors: list[BaseException] = []

    def call() -> None:
        try:
            flight.run("e", fail)
        except ValueError as exc:
            errors.append(exc)

    threads = [threading.Thread(target=call) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(5)
    assert len(errors) == 3
    assert flight._flights == {}


def test_caller_after_an_invalidation_does_not_join_an_older_flight() -> None:
    invalidated_at: dict[str, int] = {}

    def outdated(key: str, token: int) -> bool:
        return invalidated_at.get(key, -1) > token

    async def main() -> None:
        flight = AsyncSingleFlight(outdated)

        async def load(v: str) -> str:
            await asyncio.sleep(0.02)
            return v

        old = asyncio.create_task(flight.run("k", lambda: load("old"), token=3))
        await asyncio.sleep(0)
        joined = asyncio.create_task(flight.run("k", lambda: load("x"), token=4))  # before the invalidation
        await asyncio.sleep(0)
        invalidated_at["k"] = 5
        fresh = asyncio.create_task(flight.run("k", lambda: load("new"), token=6))  # after it
        later = asyncio.create_task(flight.run("k", lambda: load("y"), token=7))  # joins the fresh flight
        assert await asyncio.gather(old, joined, fresh, later) == ["old", "old", "new", "new"]
        assert flight._flights == {}

    asyncio.run(main())

    invalidated_at.clear()
    sync = SingleFlight(outdated)
    out: dict[str, str] = {}
    started = threading.Event()

    def slow() -> str:
        started.set()
        time.sleep(0.05)
        return "old"

    t = threading.Thread(target=lambda: out.update(old=sync.run("k", slow, token=3)))
    t.start()
    started.wait(5)
    invalidated_at["k"] = 5
    out["fresh"] = sync.run("k", lambda: "new", token=6)
    t.join(5)
    assert out == {"old": "old", "fresh": "new"}
    assert sync._flights == {}
