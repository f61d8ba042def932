"""The miss flow driven by hand: scripted Redis answers, no server (dbscale.cache.miss)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from dbscale.cache.core import CacheCore, Options
from dbscale.cache.l2 import CacheUnavailable
from dbscale.cache.leases import LeaseReply, LeaseStatus
from dbscale.cache.miss import MISS, Flow, Op, miss_flow
from dbscale.config import CacheConfig


@pytest.fixture
def core() -> CacheCore:
    # No redis_url: no listener thread, no client. The flow itself never touches I/O.
    core = CacheCore(CacheConfig.model_validate({"redis_url": None}), clock=lambda: 1000.0, rand=lambda: 0.5)
    core.monotonic = lambda: 0.0
    return core


def opts(**kw: Any) -> Options:
    return Options(kw.pop("ttl", 60.0), l1=False, serve_stale=kw.pop("serve_stale", False), xfetch_beta=0.0, **kw)


class Script:
    """Steps a flow: ``ask`` returns the next request, ``answer``/``fail`` reply to it."""

    def __init__(self, flow: Flow) -> None:
        self.flow = flow
        self.result: Any = MISS
        self.request = next(flow)

    def answer(self, value: Any = None) -> tuple[Any, ...] | None:
        try:
            self.request = self.flow.send(value)
        except StopIteration as stop:
            self.result = stop.value
            return None
        return self.request

    def fail(self, exc: BaseException) -> tuple[Any, ...] | None:
        try:
            self.request = self.flow.throw(exc)
        except StopIteration as stop:
            self.result = stop.value
            return None
        return self.request


def test_granted_loads_and_fills(core: CacheCore) -> None:
    s = Script(miss_flow(core, "k", opts(tags=("t",)), None, 0, redis=True))
    assert s.request[0] is Op.LEASE and s.request[1:3] == ("k", ["t"]) and s.request[7] is False
    assert s.answer(LeaseReply(LeaseStatus.GRANTED, None)) == (Op.LOAD,)
    fill = s.answer(("v", 0.01))
    assert fill is not None and fill[0] is Op.FILL and fill[1] == "k"
    assert core.decode(fill[3])[0] == "v"
    assert s.answer(True) is None and s.result == "v"
    assert core.metrics.value("cache_fills_total") == 1


def test_revoked_fill_is_dropped_but_value_returned(core: CacheCore) -> None:
    s = Script(miss_flow(core, "k", opts(), None, 0, redis=True))
    s.answer(LeaseReply(LeaseStatus.GRANTED, None))
    s.answer((0, 0.0))
    assert s.answer(False) is None and s.result == 0
    assert core.metrics.value("cache_dropped_fills_total") == 1


def test_loader_error_releases_the_lease_then_propagates(core: CacheCore) -> None:
    s = Script(miss_flow(core, "k", opts(), None, 0, redis=True))
    s.answer(LeaseReply(LeaseStatus.GRANTED, None))
    release = s.fail(ZeroDivisionError())
    assert release is not None and release[0] is Op.RELEASE and release[1] == "k"
    with pytest.raises(ZeroDivisionError):
        s.answer(None)


def test_held_waits_then_takes_the_fresh_value(core: CacheCore) -> None:
    entry = core.make_entry({"a": 1}, 60, 0.0)[0]
    s = Script(miss_flow(core, "k", opts(), None, 0, redis=True))
    sleep = s.answer(LeaseReply(LeaseStatus.HELD, None, holder_ttl_ms=500))
    assert sleep is not None and sleep[0] is Op.SLEEP and 0 < sleep[1] <= 0.05
    assert s.answer(None) is not None and s.request[0] is Op.LEASE
    assert s.answer(LeaseReply(LeaseStatus.HIT, entry)) is None and s.result == {"a": 1}
    assert core.metrics.value("cache_lease_waits_total") == 1


def test_held_with_stale_value_serves_it_when_allowed(core: CacheCore) -> None:
    stale = core.make_entry("old", 60, 0.0)[0]
    s = Script(miss_flow(core, "k", opts(serve_stale=True), None, 0, redis=True))
    assert s.answer(LeaseReply(LeaseStatus.HELD, stale)) is None and s.result == "old"
    assert core.metrics.value("cache_stale_served_total") == 1


def test_waiter_gives_up_after_lease_wait_and_loads_without_filling(core: CacheCore) -> None:
    now = [0.0]
    core.monotonic = lambda: now[0]
    s = Script(miss_flow(core, "k", opts(), None, 0, redis=True))
    assert s.answer(LeaseReply(LeaseStatus.HELD, None))[0] is Op.SLEEP  # type: ignore[index]
    now[0] = core.config.lease_wait + 1
    s.answer(None)
    assert s.answer(LeaseReply(LeaseStatus.HELD, None)) == (Op.LOAD,)
    assert s.answer(("mine", 0.0)) is None and s.result == "mine"
    assert core.metrics.value("cache_lease_timeouts_total") == 1


def test_redis_failure_on_lease_fails_open(core: CacheCore) -> None:
    s = Script(miss_flow(core, "k", opts(), None, 0, redis=True))
    assert s.fail(CacheUnavailable("down")) == (Op.LOAD,)
    assert s.answer(("v", 0.0)) is None and s.result == "v"
    assert core.metrics.value("cache_errors_total", op="lease") == 1


def test_xfetch_early_recompute_keeps_current_when_someone_else_holds(core: CacheCore) -> None:
    s = Script(miss_flow(core, "k", opts(), None, 0, redis=True, current="fresh"))
    assert s.request[7] is True  # force: the entry is fresh, the lease is taken anyway
    assert s.answer(LeaseReply(LeaseStatus.HELD, None)) is None and s.result == "fresh"


def test_without_redis_only_loads(core: CacheCore) -> None:
    s = Script(miss_flow(core, "k", opts(), None, 0, redis=False))
    assert s.request == (Op.LOAD,)
    assert s.answer(("v", 0.0)) is None and s.result == "v"


def test_leases_off_sets_unconditionally(core: CacheCore) -> None:
    core.config = core.config.model_copy(update={"leases": False})
    s = Script(miss_flow(core, "k", opts(), lambda: ["t1"], 0, redis=True))
    assert s.request == (Op.LOAD,)
    req = s.answer(("v", 0.0))
    assert req is not None and req[0] is Op.SET and req[1] == "k" and req[4] == ["t1"]
    assert s.answer(None) is None and s.result == "v"


@pytest.mark.parametrize("step", ["lease", "fill"])
def test_interrupted_round_trip_releases_the_lease_then_propagates(core: CacheCore, step: str) -> None:
    # A cancellation during the lease (or fill) round trip: the script may have run, the reply is lost.
    s = Script(miss_flow(core, "k", opts(), None, 0, redis=True))
    if step == "fill":
        s.answer(LeaseReply(LeaseStatus.GRANTED, None))
        assert s.answer(("v", 0.0))[0] is Op.FILL  # type: ignore[index]
    token = s.request[4] if step == "lease" else s.request[2]
    release = s.fail(asyncio.CancelledError())
    assert release == (Op.RELEASE, "k", token)
    with pytest.raises(asyncio.CancelledError):
        s.answer(None)


def test_interrupted_load_releases_even_if_release_fails(core: CacheCore) -> None:
    s = Script(miss_flow(core, "k", opts(), None, 0, redis=True))
    s.answer(LeaseReply(LeaseStatus.GRANTED, None))
    assert s.fail(KeyboardInterrupt())[0] is Op.RELEASE  # type: ignore[index]
    with pytest.raises(KeyboardInterrupt):
        s.fail(CacheUnavailable("down"))
    assert core.metrics.value("cache_errors_total", op="release") == 1


def test_markers_found_by_the_lease_travel_with_the_load(core: CacheCore) -> None:
    s = Script(miss_flow(core, "k", opts(), None, 0, redis=True))
    assert s.request[8] is False  # no causality provider: the lease script reads no markers
    assert s.answer(LeaseReply(LeaseStatus.GRANTED, None, marker="main/0/10")) == (Op.LOAD, "main/0/10")
    now = [0.0]
    core.monotonic = lambda: now[0]
    s = Script(miss_flow(core, "k", opts(), None, 0, redis=True))
    s.answer(LeaseReply(LeaseStatus.HELD, None))
    now[0] = core.config.lease_wait + 1
    s.answer(None)
    assert s.answer(LeaseReply(LeaseStatus.HELD, None, marker="main/0/20")) == (Op.LOAD, "main/0/20")
