"""Ban state machine: exponential backoff, readmission only (and at once) by a passing check."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from dbscale.routing.bans import BanPolicy, BanState

POLICY = BanPolicy(initial=5.0, maximum=60.0)


def test_backoff_doubles_to_the_maximum() -> None:
    state, now, lengths = BanState(), 0.0, []
    for _ in range(7):
        state = POLICY.fail(state, now)
        assert state.until is not None
        lengths.append(state.until - now)
        now = state.until  # the ban ran out; the next check fails again
    assert lengths == [5, 10, 20, 40, 60, 60, 60]


def test_expired_ban_needs_a_passing_check() -> None:
    state = POLICY.fail(BanState(), 0.0)
    assert state.phase(1.0) == "banned" and not state.usable(1.0)
    assert state.phase(6.0) == "probation" and not state.usable(6.0)
    state = POLICY.passed(state, 6.0)
    assert state.usable(6.0)


def test_passing_check_readmits_at_once_however_long_the_ban_grew() -> None:
    # the only primary down for 40 s: bans of 5, 10, 20 s, then one of 40 s from t=35 to t=75
    state, now = BanState(), 0.0
    for _ in range(4):
        state = POLICY.fail(state, now)
        assert state.until is not None
        last_start, now = now, state.until
    assert (last_start, state.until) == (35.0, 75.0)
    back = 41.0  # the primary is back 6 s into the 40 s ban
    assert not state.usable(back)
    state = POLICY.passed(state, back)
    assert state.usable(back) and state.phase(back) == "ok" and state.reason == ""


def test_failures_during_a_ban_are_one_incident() -> None:
    state = POLICY.fail(BanState(), 0.0)
    assert POLICY.fail(state, 1.0) == state


def test_backoff_resets_after_a_healthy_stretch() -> None:
    state = POLICY.fail(POLICY.fail(BanState(), 0.0), 5.0)  # second ban: 10 s
    state = POLICY.passed(state, 15.0)
    state = POLICY.fail(state, 15.0 + 61.0)
    assert state.until == 15.0 + 61.0 + 5.0


@given(st.lists(st.tuples(st.booleans(), st.floats(min_value=0, max_value=100)), max_size=40))
def test_never_usable_while_banned(events: list[tuple[bool, float]]) -> None:
    state, now = BanState(), 0.0
    for ok, dt in events:
        now += dt
        was_banned = state.phase(now) != "ok"
        state = POLICY.passed(state, now) if ok else POLICY.fail(state, now)
        if not ok:
            assert not state.usable(now)
        if was_banned and state.usable(now):
            assert ok  # only a passing check readmits a node
        if ok:
            assert state.usable(now)  # and it does so at once
