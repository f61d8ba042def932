"""Routing events are logged once per event (logger ``dbscale.routing``), not once per request."""

from __future__ import annotations

import logging
from dataclasses import replace

import pytest

from dbscale.routing.bans import BanPolicy
from dbscale.routing.core import GroupState, NodeView
from dbscale.routing.events import log_changes


def state(writer: str | None, **views: NodeView) -> GroupState:
    base = {"main-primary": NodeView("main-primary"), "main-replica1": NodeView("main-replica1")}
    return GroupState({**base, **views}, writer, rounds=1)


def test_a_ban_a_repeat_failure_and_a_readmission_log_two_lines(caplog: pytest.LogCaptureFixture) -> None:
    policy = BanPolicy(initial=5, maximum=60)
    ok = state("main-primary")
    banned_view = replace(ok.views["main-replica1"], ban=policy.fail(ok.views["main-replica1"].ban, 100.0, "refused"))
    banned = state("main-primary", **{"main-replica1": banned_view})
    again = state("main-primary", **{"main-replica1": replace(banned_view, ban=policy.fail(banned_view.ban, 101.0))})
    back = state("main-primary", **{"main-replica1": replace(banned_view, ban=policy.passed(banned_view.ban, 102.0))})
    with caplog.at_level(logging.INFO, "dbscale.routing"):
        log_changes("main", ok, banned, 100.0)
        log_changes("main", banned, again, 101.0)  # already banned: the same incident
        log_changes("main", again, back, 102.0)
    assert [r.getMessage() for r in caplog.records] == [
        "routing: main-replica1 banned for 5s (ban #1): refused",
        "routing: main-replica1 readmitted after a passing health check",
    ]


def test_writer_changes_and_failover(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, "dbscale.routing"):
        log_changes("main", state("main-primary"), state(None), 0.0)
        log_changes("main", state(None), state("main-replica1"), 0.0)
        log_changes("main", state("main-replica1"), state("main-primary"), 0.0)
    assert [r.getMessage() for r in caplog.records] == [
        "routing: group main has no writer (main-primary is gone); writes fail until one is found",
        "routing: group main writes to main-replica1 again",
        "routing: failover in group main: writes move from main-replica1 to main-primary",
    ]
