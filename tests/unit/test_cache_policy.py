"""Pure timing decisions: jitter, XFetch, circuit breaker, lease waiting."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from dbscale.cache.leases import LeaseStatus, WaitAction, parse_lease_reply, wait_decision
from dbscale.cache.markers import MARGIN, marker_ttl
from dbscale.cache.policy import BreakerState, CircuitBreaker, check_ttl, jittered_ttl, xfetch_should_recompute
from dbscale.errors import ConfigError


@given(st.floats(0.01, 1e6), st.floats(0, 0.99), st.floats(0, 0.999999))
def test_property_jitter_stays_in_band(ttl: float, jitter: float, rand: float) -> None:
    out = jittered_ttl(ttl, jitter, rand)
    assert ttl * (1 - jitter) - 1e-9 <= out <= ttl * (1 + jitter) + 1e-9 or out == 0.001


def test_jitter_spreads_and_zero_disables() -> None:
    assert jittered_ttl(100, 0.1, 0.0) == 90 and math.isclose(jittered_ttl(100, 0.1, 0.999999), 110, rel_tol=1e-5)
    assert jittered_ttl(100, 0.0, 0.3) == 100


def test_xfetch_probability_rises_near_expiry() -> None:
    # delta 1 s, beta 1, rand 0.5 => recompute once now >= expiry - ln(2) ≈ expiry - 0.69 s
    assert not xfetch_should_recompute(now=99.0, expires_at=100.0, delta=1.0, beta=1.0, rand=0.5)
    assert xfetch_should_recompute(now=99.4, expires_at=100.0, delta=1.0, beta=1.0, rand=0.5)
    assert not xfetch_should_recompute(now=99.99, expires_at=100.0, delta=1.0, beta=0.0, rand=0.01)


@given(st.floats(0, 100), st.floats(0.001, 10), st.floats(0.0001, 1.0))
def test_property_xfetch_monotone_in_time(now: float, delta: float, rand: float) -> None:
    if xfetch_should_recompute(now, 100.0, delta, 1.0, rand):
        assert xfetch_should_recompute(now + 1.0, 100.0, delta, 1.0, rand)


def test_breaker_opens_after_threshold_and_probes_after_cooldown() -> None:
    b = CircuitBreaker(threshold=3, cooldown=2.0)
    assert b.allow(0.0)
    assert not b.failure(0.0) and not b.failure(0.1)
    assert b.failure(0.2) and b.state is BreakerState.OPEN and b.trips == 1
    assert not b.allow(1.0)
    assert b.allow(2.3) and b.state is BreakerState.HALF_OPEN  # one probe
    assert not b.allow(2.4)
    assert b.failure(2.5) and b.state is BreakerState.OPEN  # probe failed: open again
    assert not b.allow(4.0)
    assert b.allow(4.6)
    b.success()
    assert b.state is BreakerState.CLOSED and b.allow(4.7)


def test_breaker_success_resets_consecutive_failures() -> None:
    b = CircuitBreaker(threshold=2, cooldown=1.0)
    b.failure(0)
    b.success()
    assert not b.failure(0)
    assert b.state is BreakerState.CLOSED


def test_breaker_lost_probe_is_replaced() -> None:
    b = CircuitBreaker(threshold=1, cooldown=1.0)
    b.failure(0)
    assert b.allow(1.0)
    assert not b.allow(1.5)
    assert b.allow(2.1)


def test_wait_decision_serves_stale_polls_then_gives_up() -> None:
    d = wait_decision(elapsed=0, attempt=0, lease_wait=1, serve_stale=True, has_stale=True, holder_ttl=5)
    assert d.action is WaitAction.SERVE_STALE
    d = wait_decision(elapsed=0, attempt=0, lease_wait=1, serve_stale=True, has_stale=False, holder_ttl=5)
    assert d.action is WaitAction.SLEEP and d.sleep == 0.002
    d = wait_decision(elapsed=0.5, attempt=20, lease_wait=1, serve_stale=False, has_stale=True, holder_ttl=5)
    assert d.action is WaitAction.SLEEP and d.sleep == 0.05
    d = wait_decision(elapsed=0.99, attempt=20, lease_wait=1, serve_stale=False, has_stale=False, holder_ttl=5)
    assert d.action is WaitAction.SLEEP and 0 < d.sleep <= 0.0100001
    d = wait_decision(elapsed=1.0, attempt=3, lease_wait=1, serve_stale=False, has_stale=False, holder_ttl=5)
    assert d.action is WaitAction.LOAD_WITHOUT_FILL


@given(st.floats(0, 5), st.integers(0, 50), st.floats(0.01, 5), st.floats(0, 10))
def test_property_wait_never_sleeps_past_budget(elapsed: float, attempt: int, budget: float, holder: float) -> None:
    d = wait_decision(
        elapsed=elapsed, attempt=attempt, lease_wait=budget, serve_stale=False, has_stale=False, holder_ttl=holder
    )
    if d.action is WaitAction.SLEEP:
        assert 0 < d.sleep <= budget - elapsed + 1e-12 and d.sleep <= 0.05
    else:
        assert d.action is WaitAction.LOAD_WITHOUT_FILL and elapsed >= budget


def test_parse_lease_reply() -> None:
    assert parse_lease_reply([1, b"x"]).status is LeaseStatus.HIT
    r = parse_lease_reply([2, None])
    assert r.status is LeaseStatus.GRANTED and r.entry is None
    r = parse_lease_reply([3, b"stale", 1234])
    assert r.status is LeaseStatus.HELD and r.entry == b"stale" and r.holder_ttl_ms == 1234
    assert r.marker is None
    r = parse_lease_reply([2, None, 0, 0, b"main/0/3000060,main/0/3000100"])
    assert r.status is LeaseStatus.GRANTED and r.marker == "main/0/3000060,main/0/3000100"


def test_marker_ttl_is_max_lag_plus_margin_unless_configured() -> None:
    assert marker_ttl(None, 10.0) == 10.0 + MARGIN
    assert marker_ttl(3.0, 10.0) == 3.0


@pytest.mark.parametrize("bad", [0, -1, -0.5, float("nan"), float("inf"), True, "5m", None.__class__])
def test_a_ttl_that_is_no_lifetime_is_refused(bad: object) -> None:
    """0, negative, NaN, infinite, a bool or a non-number: a ConfigError naming the value (a negative TTL used
    to reach Redis as a failed SET and the loader ran on every call; NaN failed deep inside the miss path)."""
    with pytest.raises(ConfigError, match="positive finite number"):
        check_ttl(bad)  # type: ignore[arg-type]


def test_a_lifetime_passes_and_none_means_the_default() -> None:
    assert check_ttl(300) == 300.0 and check_ttl(0.25) == 0.25 and check_ttl(None) is None
