"""Pure timing decisions: TTL jitter, XFetch early recomputation, and the Redis circuit breaker.

No clocks or random sources are read here: callers pass ``now`` and random numbers in, so every
decision is a plain function of its inputs and is tested without sleeping.
"""

from __future__ import annotations

import math
import threading
from dataclasses import dataclass
from enum import Enum

from dbscale.errors import ConfigError

__all__ = ["BreakerState", "CircuitBreaker", "check_ttl", "jittered_ttl", "xfetch_should_recompute"]


def check_ttl(ttl: float | None, name: str = "ttl") -> float | None:
    """``ttl`` if it is a lifetime an entry can have (a positive, finite number of seconds) or None (the
    configured default); else a :class:`~dbscale.errors.ConfigError` saying so, before anything is cached."""
    if ttl is None:
        return None
    if isinstance(ttl, bool) or not isinstance(ttl, int | float) or not math.isfinite(ttl) or ttl <= 0:
        raise ConfigError(
            f"{name}={ttl!r}: how long an entry lives, in seconds, is a positive finite number (e.g. 300);"
            " None takes [cache] default_ttl"
        )
    return float(ttl)


def jittered_ttl(ttl: float, jitter: float, rand: float) -> float:
    """``ttl`` spread uniformly over ``ttl * (1 ± jitter)``; ``rand`` is uniform in [0, 1).

    Keys filled together then do not expire together. Never returns less than 1 ms for a positive TTL.
    """
    if ttl <= 0 or jitter <= 0:
        return ttl
    return max(0.001, ttl * (1.0 + jitter * (2.0 * rand - 1.0)))


def xfetch_should_recompute(now: float, expires_at: float, delta: float, beta: float, rand: float) -> bool:
    """XFetch (Vattani, Chierichetti, Lowenstein, VLDB 2015): recompute before expiry?

    True when ``now - delta * beta * ln(rand) >= expires_at``, where ``delta`` is how long the last
    recomputation took and ``rand`` is uniform in (0, 1]. The probability rises as expiry nears and is
    higher for slow loaders; ``beta = 0`` disables it. Times are in seconds.
    """
    if beta <= 0 or delta <= 0:
        return False
    if rand <= 0.0:
        rand = 1e-12
    return now - delta * beta * math.log(rand) >= expires_at


class BreakerState(Enum):
    """Circuit breaker states."""

    CLOSED = "closed"  # Redis is used
    OPEN = "open"  # Redis is skipped until the cooldown ends
    HALF_OPEN = "half_open"  # one probe is allowed through


@dataclass
class _BreakerData:
    state: BreakerState = BreakerState.CLOSED
    failures: int = 0
    opened_at: float = 0.0
    probe_started: float = 0.0
    trips: int = 0


class CircuitBreaker:
    """Stops calling Redis for ``cooldown`` seconds after ``threshold`` consecutive failures.

    After the cooldown a single caller is let through as a probe (``allow`` returns True once);
    its success closes the breaker, its failure re-opens it. A probe that never reports back is
    forgotten after another cooldown. Thread-safe; ``now`` is passed in by the caller.
    """

    __slots__ = ("_d", "_lock", "cooldown", "threshold")

    def __init__(self, threshold: int = 3, cooldown: float = 2.0) -> None:
        self.threshold = max(1, threshold)
        self.cooldown = cooldown
        self._d = _BreakerData()
        self._lock = threading.Lock()

    def after_fork(self) -> None:
        """In a forked child: a new lock (a parent's thread may have held this one)."""
        self._lock = threading.Lock()

    @property
    def state(self) -> BreakerState:
        """The current state."""
        return self._d.state

    @property
    def trips(self) -> int:
        """How many times the breaker has opened."""
        return self._d.trips

    def allow(self, now: float) -> bool:
        """May this call go to Redis?"""
        d = self._d
        if d.state is BreakerState.CLOSED:
            return True
        with self._lock:
            if d.state is BreakerState.OPEN:
                if now - d.opened_at < self.cooldown:
                    return False
                d.state = BreakerState.HALF_OPEN
                d.probe_started = now
                return True
            if d.state is BreakerState.HALF_OPEN:
                if now - d.probe_started >= self.cooldown:
                    d.probe_started = now  # the previous probe got lost; let another through
                    return True
                return False
            return True

    def success(self) -> None:
        """Report a successful Redis call."""
        d = self._d
        if d.state is BreakerState.CLOSED and d.failures == 0:
            return
        with self._lock:
            d.state = BreakerState.CLOSED
            d.failures = 0

    def failure(self, now: float) -> bool:
        """Report a failed Redis call; True if this failure opened the breaker."""
        with self._lock:
            d = self._d
            d.failures += 1
            if d.state is BreakerState.HALF_OPEN or (d.state is BreakerState.CLOSED and d.failures >= self.threshold):
                d.state = BreakerState.OPEN
                d.opened_at = now
                d.trips += 1
                return True
            return False
