"""The invalidation listener's PING/PONG liveness rule (pure)."""

from __future__ import annotations

from dbscale.cache.invalidation import PING_INTERVAL, PONG_TIMEOUT, _Liveness


def test_pings_once_per_interval() -> None:
    live = _Liveness(now=0.0)
    assert not live.should_ping(PING_INTERVAL / 2)
    assert live.should_ping(PING_INTERVAL)
    assert not live.should_ping(PING_INTERVAL + 0.1)
    assert live.should_ping(2 * PING_INTERVAL)


def test_dead_only_when_a_pong_is_overdue() -> None:
    live = _Liveness(now=0.0)
    assert not live.dead(100.0)  # nothing asked yet
    assert live.should_ping(1.0)
    assert not live.dead(1.0 + PONG_TIMEOUT)
    assert live.dead(1.0 + PONG_TIMEOUT + 0.01)
    live.pong()
    assert not live.dead(50.0)


def test_outstanding_ping_keeps_its_start_time() -> None:
    live = _Liveness(now=0.0)
    assert live.should_ping(1.0)
    assert live.should_ping(2.0)  # still no PONG: the wait counts from the first unanswered PING
    assert live.dead(1.0 + PONG_TIMEOUT + 0.01)
