"""Ban state machine with exponential backoff (pure: every call takes ``now``).

States of one node::

    ok ──failure──► banned(until) ──now ≥ until──► probation ──passing check──► ok
                        │   ▲                          │
                        │   └──────────failure─────────┘  (backoff doubles)
                        └──────────passing check──────────────────────────────► ok

* A ban lasts ``initial`` seconds, doubling with each consecutive ban up to ``maximum``
  (5 s, 10 s, 20 s, 40 s, 60 s, 60 s …).
* Only a passing health check readmits a node: an expired ban leaves it in *probation* until one
  passes (pgcat PR #184: no forced check after an unban sent traffic to a dead node).
* A passing check readmits it at once, however long the ban grew: the monitor keeps checking
  banned nodes, so a primary back after a 40 s outage takes writes at the next check, not when a
  60 s ban runs out. The backoff bounds how long a node stays out when no check runs at all.
* The backoff resets once the node has stayed healthy for ``maximum`` seconds after readmission.
* A failure while already banned does not extend the ban (many in-flight queries fail at once
  when a node dies; that is one incident, not many).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Literal

BanPhase = Literal["ok", "banned", "probation"]


@dataclass(frozen=True, slots=True)
class BanState:
    """The ban record of one node; immutable, transitions return a new value."""

    strikes: int = 0
    until: float | None = None
    probation: bool = False
    healthy_since: float | None = None
    reason: str = ""

    def phase(self, now: float) -> BanPhase:
        """``ok``, ``banned`` (until :attr:`until`) or ``probation`` (ban over, awaiting a check)."""
        if self.until is not None and now < self.until:
            return "banned"
        if self.probation:
            return "probation"
        return "ok"

    def usable(self, now: float) -> bool:
        """Whether the node may receive traffic."""
        return self.phase(now) == "ok"


@dataclass(frozen=True, slots=True)
class BanPolicy:
    """Backoff settings: first ban ``initial`` seconds, doubling up to ``maximum``."""

    initial: float = 5.0
    maximum: float = 60.0

    def duration(self, strikes: int) -> float:
        """Length of the ban numbered ``strikes`` (0-based)."""
        return float(min(self.maximum, self.initial * (2 ** min(strikes, 32))))

    def fail(self, state: BanState, now: float, reason: str = "") -> BanState:
        """Record a failed check or a connection error at ``now``."""
        if state.phase(now) == "banned":
            return state
        strikes = state.strikes
        if state.healthy_since is not None and now - state.healthy_since >= self.maximum:
            strikes = 0
        until = now + self.duration(strikes)
        return BanState(strikes=strikes + 1, until=until, probation=True, healthy_since=None, reason=reason)

    def passed(self, state: BanState, now: float) -> BanState:
        """Record a passing health check at ``now``: a banned or probation node is readmitted at once."""
        if state.phase(now) != "ok":
            return replace(state, until=None, probation=False, healthy_since=now, reason="")
        if state.healthy_since is None:
            return replace(state, healthy_since=now)
        return state


__all__ = ["BanPhase", "BanPolicy", "BanState"]
