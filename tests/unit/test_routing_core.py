"""The router's decision core, driven with snapshots and an injected clock — no servers."""

from __future__ import annotations

from dataclasses import replace

import pytest
from hypothesis import given
from hypothesis import strategies as st

from dbscale.config import load_config
from dbscale.errors import NoReplicaAvailable
from dbscale.routing import core
from dbscale.routing.core import GroupState, NodeCheck, Settings, apply_round, plan_read, plan_write, replica_lag
from dbscale.routing.lsn import Mark
from dbscale.routing.settings import group_settings
from dbscale.units import parse_read_your_writes

S = Settings(primary="p", replicas=("r1", "r2"), max_lag=5.0, causal_wait=0.05, health_interval=1.0)
PRIMARY = NodeCheck(in_recovery=False, lsn=1000, timeline=1)


def replica(lsn: int = 1000, age: float | None = 0.1) -> NodeCheck:
    return NodeCheck(in_recovery=True, lsn=lsn, receive_lsn=lsn, replay_age=age)


def healthy(now: float = 100.0, r1: int = 1000, r2: int = 1000) -> GroupState:
    return apply_round(GroupState.initial(S), {"p": PRIMARY, "r1": replica(r1), "r2": replica(r2)}, S, now)


def read(
    state: GroupState, now: float = 100.0, mark: Mark | None = None, rand: float = 0.0, **kw: object
) -> core.ReadPlan:
    return plan_read(
        state, S if "settings" not in kw else kw.pop("settings"), now=now, wall_now=1e9, rand=rand, mark=mark, **kw
    )  # type: ignore[arg-type]


def test_healthy_replicas_serve_reads_and_share_them() -> None:
    state = healthy()
    assert {read(state, rand=r).node for r in (0.1, 0.9)} == {"r1", "r2"}
    assert not read(state).fallback


def test_before_any_check_reads_go_to_the_assumed_primary() -> None:
    plan = read(GroupState.initial(S))
    assert plan.node == "p" and plan.fallback


def test_lag_sign_is_right() -> None:
    # PgDog #1122 computed lag with the sign inverted so the lag ban never fired
    lag_bytes, lag_s, _ = replica_lag(replica(lsn=400, age=9.0), 1000, None, 10.0)
    assert lag_bytes == 600 and lag_s == 9.0


def test_idle_primary_caught_up_replica_is_zero_seconds_behind() -> None:
    # now() - pg_last_xact_replay_timestamp() grows while the primary is idle; that is not lag
    lag_bytes, lag_s, caught = replica_lag(replica(lsn=1000, age=3600.0), 1000, None, 10.0)
    assert (lag_bytes, lag_s, caught) == (0, 0.0, 10.0)


def test_behind_after_idle_counts_from_when_it_was_last_caught_up() -> None:
    _, lag_s, _ = replica_lag(replica(lsn=900, age=3600.0), 1000, 98.0, 100.0)
    assert lag_s == 2.0


def test_replica_past_max_lag_gets_no_reads() -> None:
    state = healthy(now=100.0)  # both caught up at t=100
    p2 = replace(PRIMARY, lsn=5000)
    early = apply_round(state, {"p": p2, "r1": replica(1000, age=60.0), "r2": replica(5000)}, S, 103.0)
    # behind by at most the 3 s since it was last caught up, though the replay timestamp is 60 s old
    assert early.views["r1"].lag_seconds == 3.0
    assert {read(early, now=103.0, rand=r).node for r in (0.0, 0.99)} == {"r1", "r2"}
    behind = apply_round(early, {"p": p2, "r1": replica(1000, age=60.0), "r2": replica(5000)}, S, 106.0)
    assert behind.views["r1"].lag_seconds == 6.0 and behind.views["r1"].lag_bytes == 4000
    assert {read(behind, now=106.0, rand=r).node for r in (0.0, 0.5, 0.99)} == {"r2"}
    # resumed: caught up again at the next round
    again = apply_round(behind, {"p": p2, "r1": replica(5000), "r2": replica(5000)}, S, 107.0)
    assert {read(again, now=107.0, rand=r).node for r in (0.0, 0.99)} == {"r1", "r2"}


def test_max_lag_bytes() -> None:
    s = replace(S, max_lag_bytes=100)
    state = apply_round(GroupState.initial(s), {"p": PRIMARY, "r1": replica(850, age=0.1), "r2": replica(950)}, s, 1.0)
    assert {plan_read(state, s, now=1.0, wall_now=0, rand=r).node for r in (0.0, 0.99)} == {"r2"}


def test_failed_check_bans_and_unbans_only_after_a_passing_check() -> None:
    state = apply_round(healthy(), {"r1": ConnectionRefusedError("refused")}, S, 101.0)
    state = apply_round(state, {"p": PRIMARY, "r2": replica()}, S, 105.0)
    assert state.views["r1"].ban.phase(101.0) == "banned"
    assert {read(state, now=101.0, rand=r).node for r in (0.0, 0.99)} == {"r2"}
    assert "r1" in core.due_checks(state, 103.0)  # banned nodes are still checked every round
    assert read(state, now=106.5, rand=0.0).node == "r2"  # ban expired but no check passed yet
    state = apply_round(state, {"p": PRIMARY, "r1": replica(), "r2": replica()}, S, 106.5)
    assert {read(state, now=106.5, rand=r).node for r in (0.0, 0.99)} == {"r1", "r2"}


def test_a_passing_check_readmits_the_primary_however_long_its_ban_grew() -> None:
    state, now = healthy(), 100.0
    for _ in range(5):  # checked every second through a 40 s outage: the ban grew to 60 s
        now += 8.0
        state = apply_round(state, {"p": ConnectionRefusedError("refused")}, S, now)
    assert state.writer is None and plan_write(state, now + 1.0) is None
    assert "p" in core.due_checks(state, now + 1.0)
    state = apply_round(state, {"p": PRIMARY, "r1": replica(), "r2": replica()}, S, now + 1.0)
    assert state.writer == "p" and plan_write(state, now + 1.0) == "p"


def primary_down(state: GroupState, now: float, r1: NodeCheck, r2: NodeCheck) -> GroupState:
    return apply_round(state, {"p": ConnectionRefusedError("refused"), "r1": r1, "r2": r2}, S, now)


def test_primary_down_replicas_with_nothing_to_replay_keep_serving_reads() -> None:
    # 130 s after the last write, the replay timestamp is 130 s old: that is idleness, not lag
    state = primary_down(healthy(now=100.0), 230.0, replica(1000, age=130.0), replica(1000, age=130.0))
    assert state.writer is None
    assert state.views["r1"].lag_seconds == 0.0 and state.views["r1"].lag_bytes == 0
    assert {read(state, now=230.0, rand=r).node for r in (0.0, 0.99)} == {"r1", "r2"}


def test_primary_down_before_the_first_round_replicas_still_serve_reads() -> None:
    state = primary_down(GroupState.initial(S), 50.0, replica(1000, age=130.0), replica(1000, age=130.0))
    assert not core.needs_confirmation(state)
    assert {read(state, now=50.0, rand=r).node for r in (0.0, 0.99)} == {"r1", "r2"}


def test_primary_down_a_replica_with_wal_left_to_replay_is_judged_by_its_replay_age() -> None:
    behind = NodeCheck(in_recovery=True, lsn=900, receive_lsn=1000, replay_age=30.0)
    state = primary_down(GroupState.initial(S), 50.0, behind, replica(1000, age=130.0))
    assert state.views["r1"].lag_bytes == 100 and state.views["r1"].lag_seconds == 30.0
    assert {read(state, now=50.0, rand=r).node for r in (0.0, 0.99)} == {"r2"}
    state = primary_down(GroupState.initial(S), 51.0, behind, behind)
    plan = read(state, now=51.0)
    assert plan.node is None and "the primary is down (p: ConnectionRefusedError: refused)" in plan.reason


def test_primary_down_causal_reads_are_served_by_replicas_that_reached_the_token() -> None:
    state = primary_down(healthy(), 101.0, replica(1000, age=5.0), replica(800, age=5.0))
    assert read(state, now=101.0, mark=Mark(lsn=1000), rand=0.99).node == "r1"
    plan = read(state, now=101.0, mark=Mark(lsn=2000))  # nobody has it: an inline check, no primary to fall to
    assert plan.verify_lsn == 2000 and not plan.fallback


def test_refused_credentials_fail_reads_at_once_without_bans() -> None:
    refused = core.Refused('password authentication failed for user "app"')
    state = apply_round(GroupState.initial(S), {"p": refused, "r1": refused, "r2": refused}, S, 10.0)
    assert state.writer is None
    assert all(v.ban.strikes == 0 and v.ban.usable(10.0) for v in state.views.values())  # no ban churn
    plan = read(state, now=10.0)
    assert plan.node is None and plan.refused == 'p: password authentication failed for user "app"'
    fixed = apply_round(state, {"p": PRIMARY, "r1": replica(), "r2": replica()}, S, 11.0)
    assert fixed.views["p"].refused is None and fixed.writer == "p"


def test_endpoint_failures_ban_the_endpoint_never_the_primary() -> None:
    s = replace(S, endpoint="b")
    state = apply_round(GroupState.initial(s), {"p": PRIMARY, "r1": replica(), "r2": replica(), "b": PRIMARY}, s, 1.0)
    assert core.write_target(state, s, "p", 1.0) == "b"
    state = core.note_failure(state, "b", s, 2.0, "connection refused")
    assert state.writer == "p" and state.views["p"].ban.usable(2.0) and not state.views["b"].ban.usable(2.0)
    assert core.write_target(state, s, "p", 2.0) == "p"  # straight to the healthy primary meanwhile
    state = apply_round(state, {"b": ConnectionRefusedError("refused")}, s, 3.0)
    assert state.writer == "p" and state.views["p"].ban.strikes == 0
    state = apply_round(state, {"b": PRIMARY}, s, 4.0)  # PgBouncer back: used again at once
    assert core.write_target(state, s, "p", 4.0) == "b"
    assert core.write_target(state, s, "r1", 4.0) == "r1"  # PgBouncer fronts the configured primary only


def test_the_endpoint_is_not_checked_while_no_writer_is_known() -> None:
    s = replace(S, endpoint="b")
    state = apply_round(GroupState.initial(s), {"p": ConnectionRefusedError("x"), "r1": replica()}, s, 1.0)
    assert "b" not in core.due_checks(state, 2.0) and "p" in core.due_checks(state, 2.0)


def test_connection_refused_bans_the_replica() -> None:
    # PgDog #785: "connection refused" did not ban a replica
    state = core.note_failure(healthy(), "r1", S, 100.0, "connection refused")
    assert not state.views["r1"].ban.usable(100.0)


def test_stale_view_is_not_trusted() -> None:
    state = healthy(now=100.0)
    assert read(state, now=100.0 + S.stale_after + 1).fallback


def test_no_eligible_replica_falls_back_or_errors() -> None:
    state = core.note_failure(core.note_failure(healthy(), "r1", S, 100.0, "x"), "r2", S, 100.0, "x")
    plan = read(state)
    assert plan.node == "p" and plan.fallback
    strict = replace(S, fallback="error")
    plan = plan_read(state, strict, now=100.0, wall_now=0, rand=0.0)
    assert plan.node is None and "fallback = 'error'" in plan.reason


def test_causal_mark_prefers_replicas_that_reached_it() -> None:
    state = healthy(r1=1000, r2=2000)
    state = apply_round(
        state, {"p": replace(PRIMARY, lsn=2000), "r1": replica(1000, age=0.1), "r2": replica(2000)}, S, 100.0
    )
    plans = {read(state, mark=Mark(lsn=1500), rand=r).node for r in (0.0, 0.99)}
    assert plans == {"r2"}


def test_causal_mark_beyond_every_view_asks_for_an_inline_check() -> None:
    plan = read(healthy(), mark=Mark(lsn=5000))
    assert plan.node in ("r1", "r2") and plan.verify_lsn == 5000 and plan.wait == S.causal_wait


def test_stalled_replica_is_not_waited_on_until_it_moves() -> None:
    state = core.note_stalled(core.note_stalled(healthy(), "r1", 1000), "r2", 1000)
    assert read(state, mark=Mark(lsn=5000)).wait == 0.0
    moved = core.note_replay(state, "r1", 1200)
    assert read(moved, mark=Mark(lsn=5000), rand=0.0).wait == S.causal_wait


def test_delay_mode_sends_recent_writers_to_primary() -> None:
    s = replace(S, read_your_writes="delay", delay=2.0)
    state = apply_round(GroupState.initial(s), {"p": PRIMARY, "r1": replica(), "r2": replica()}, s, 1.0)
    assert plan_read(state, s, now=1.0, wall_now=101.0, rand=0, mark=Mark(at=100.0)).fallback
    assert not plan_read(state, s, now=1.0, wall_now=103.0, rand=0, mark=Mark(at=100.0)).fallback


def test_off_mode_ignores_marks() -> None:
    s = replace(S, read_your_writes="off")
    state = apply_round(GroupState.initial(s), {"p": PRIMARY, "r1": replica(), "r2": replica()}, s, 1.0)
    plan = plan_read(state, s, now=1.0, wall_now=0, rand=0, mark=Mark(lsn=10**9))
    assert plan.verify_lsn is None and not plan.fallback


def test_promoted_replica_becomes_writer_and_wins_over_stale_primary() -> None:
    state = healthy()
    down = apply_round(state, {"p": ConnectionRefusedError(), "r1": replica(), "r2": replica()}, S, 101.0)
    assert down.writer is None and plan_write(down, 101.0) is None
    promoted = apply_round(down, {"r1": NodeCheck(False, 1100, timeline=2), "r2": replica()}, S, 102.0)
    assert promoted.writer == "r1"
    # the old primary comes back, not in recovery, on the old timeline: r1 keeps the writes
    back = apply_round(promoted, {"p": PRIMARY, "r1": NodeCheck(False, 1200, timeline=2), "r2": replica()}, S, 200.0)
    assert back.writer == "r1"
    # reads no longer count r1 as a replica
    assert {read(back, now=200.0, rand=r).node for r in (0.0, 0.99)} == {"r2"}


def test_one_replica_down_does_not_block_start() -> None:
    # pgcat #823 refused to start while one replica was down
    state = apply_round(GroupState.initial(S), {"p": PRIMARY, "r1": OSError("down"), "r2": replica()}, S, 1.0)
    assert read(state, now=1.0).node == "r2" and state.writer == "p"


def test_parse_check_row() -> None:
    check = core.parse_check_row((True, "0/3000060", "0/3000100", 0.5, False, None, True))
    assert check == NodeCheck(True, 0x3000060, 0x3000100, 0.5, False, None, streaming=True)


def test_a_streaming_replica_with_nothing_left_to_replay_is_not_lagging() -> None:
    # the writer's insert position is ahead (in flight / not yet flushed); the replay timestamp is old
    streaming = NodeCheck(in_recovery=True, lsn=1000, receive_lsn=1000, replay_age=3600.0, streaming=True)
    assert replica_lag(streaming, 1200, None, 10.0) == (200, 0.0, 10.0)
    # not streaming (receiver cut off): judged against the writer, bounded by the replay age
    cut_off = replace(streaming, streaming=False)
    assert replica_lag(cut_off, 1200, None, 10.0) == (200, 3600.0, None)
    # seen right after `dbscale up`: received up to a page boundary inside a record not yet flushed
    # on the primary, replayed to the end of the last complete one
    partial = NodeCheck(in_recovery=True, lsn=0x4001EB8, receive_lsn=0x4002000, streaming=True)
    assert replica_lag(partial, 0x4003BC0, None, 10.0) == (0x4003BC0 - 0x4001EB8, 0.0, 10.0)
    # still replaying what it received: not caught up either
    replaying = replace(streaming, receive_lsn=1100)
    assert replica_lag(replaying, 1200, 5.0, 10.0) == (200, 5.0, 5.0)


def test_settings_from_config() -> None:
    cfg = load_config(
        environ={},
        groups={
            "main": {
                "primary": "postgresql://u@h:1/d",
                "replicas": ["postgresql://u@h:2/d", "postgresql://u@h:3/d"],
                "weights": [1, 3],
                "read_your_writes": "delay:2s",
                "load_balancing": "round_robin",
            }
        },
    )
    s = group_settings("main", cfg.groups["main"])
    assert s.replicas == ("main-replica1", "main-replica2")
    assert s.weights == {"main-replica1": 1, "main-replica2": 3}
    assert (s.read_your_writes, s.delay, s.policy) == ("delay", 2.0, "round_robin")
    with pytest.raises(ValueError):
        parse_read_your_writes("sometimes")


checks = st.one_of(
    st.builds(lambda lsn, age: NodeCheck(True, lsn, lsn, age), st.integers(0, 10_000), st.floats(0, 30)),
    st.just(ConnectionRefusedError("down")),
)


@given(
    st.lists(st.tuples(checks, checks, st.floats(0, 3)), min_size=1, max_size=8),
    st.integers(0, 12_000),
    st.floats(0, 0.999),
    st.booleans(),
)
def test_chosen_replica_is_always_eligible_and_never_banned(rounds, mark_lsn, rand, with_mark) -> None:  # type: ignore[no-untyped-def]
    state, now = GroupState.initial(S), 0.0
    for c1, c2, dt in rounds:
        now += dt
        state = apply_round(state, {"p": replace(PRIMARY, lsn=10_000), "r1": c1, "r2": c2}, S, now)
    mark = Mark(lsn=mark_lsn) if with_mark else None
    plan = plan_read(state, S, now=now, wall_now=0, rand=rand, mark=mark)
    assert plan.node is not None
    if plan.fallback:
        assert plan.node == "p"
        return
    view = state.views[plan.node]
    assert view.role == "replica" and view.ban.usable(now)
    assert core.replica_ok(view, S, now)
    if mark is not None and plan.verify_lsn is None:
        assert view.lsn is not None and view.lsn >= mark_lsn


@given(
    st.lists(st.tuples(checks, checks, st.floats(0, 3)), min_size=1, max_size=6),
    st.one_of(st.none(), st.integers(0, 12_000)),
    st.floats(0, 10),
)
def test_router_hot_path_agrees_with_the_core(rounds, mark_lsn, later) -> None:  # type: ignore[no-untyped-def]
    """The shell's cached fast path never picks a node the core would not allow."""
    import random

    from dbscale.metrics import Metrics
    from dbscale.routing.group import GroupRouterBase
    from dbscale.routing.metrics import RoutingMetrics

    clock = [0.0]
    router = GroupRouterBase(
        "g",
        S,
        RoutingMetrics(Metrics(), "g", S.nodes),
        write_timeout=1.0,
        clock=lambda: clock[0],
        wall_clock=lambda: 0.0,
        rng=random.Random(1),
    )
    for c1, c2, dt in rounds:
        clock[0] += dt
        router.apply_round({"p": replace(PRIMARY, lsn=10_000), "r1": c1, "r2": c2})
    mark = None if mark_lsn is None else Mark(lsn=mark_lsn)
    for extra in (0.0, later):  # also after the cached list may have gone stale
        clock[0] += extra
        try:
            plan = router.plan_read(mark)
        except NoReplicaAvailable:
            continue
        if plan.fallback:
            continue
        view = router.state.views[plan.node]
        assert core.replica_ok(view, S, clock[0])
        if mark is not None and plan.verify_lsn is None:
            assert (view.lsn or 0) >= mark_lsn


def test_first_round_with_a_replica_never_seen_caught_up_asks_for_confirmation() -> None:
    # r2 is a moment behind a WAL record: its only seconds bound is the loose replay age
    first = apply_round(GroupState.initial(S), {"p": PRIMARY, "r1": replica(), "r2": replica(900, age=3600.0)}, S, 1.0)
    assert first.views["r2"].lag_seconds == 3600.0 and not core.replica_ok(first.views["r2"], S, 1.0)
    assert core.needs_confirmation(first)
    second = apply_round(first, {"p": PRIMARY, "r1": replica(), "r2": replica()}, S, 1.1)
    assert not core.needs_confirmation(second)  # only a new monitor's first round is confirmed
    assert second.views["r2"].lag_seconds == 0.0 and core.replica_ok(second.views["r2"], S, 1.1)


def test_first_round_with_caught_up_or_unreachable_replicas_needs_no_confirmation() -> None:
    assert not core.needs_confirmation(healthy())
    down = apply_round(GroupState.initial(S), {"p": PRIMARY, "r1": replica(), "r2": OSError("refused")}, S, 1.0)
    assert not core.needs_confirmation(down)


def test_wait_replicated_waits_for_lagging_replicas_not_for_down_or_banned_ones() -> None:
    from dbscale.routing.bans import BanState
    from dbscale.routing.core import NodeView, replicas_serving

    views = {
        "p": NodeView("p", role="primary", reachable=True),
        "lagging": NodeView("lagging", role="replica", reachable=True, lag_seconds=900.0),
        "down": NodeView("down", role="replica", reachable=False),
        "banned": NodeView("banned", role="replica", reachable=True, ban=BanState(strikes=1, until=200.0)),
        "unchecked": NodeView("unchecked"),
    }
    state = GroupState(views, "p")
    assert replicas_serving(state, now=100.0) == ["lagging"]
    assert replicas_serving(state, now=300.0) == ["lagging", "banned"]


def test_replication_timeout_names_only_the_replicas_short_of_the_position() -> None:
    from dbscale.routing.core import replication_behind

    message = replication_behind("main", 0x3000100, {"r1": 0x3000100, "r2": 0x3000000}, 1.5)
    assert "r2 replayed 0/3000000 (256 bytes short)" in message
    assert "r1" not in message
    assert "0/3000100 within 1.5s" in message
