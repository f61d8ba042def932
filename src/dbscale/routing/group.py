"""What the sync and async group routers share: the state snapshot, counters and bookkeeping.

No I/O happens here. The state is an immutable :class:`~dbscale.routing.core.GroupState` swapped
under a lock, so a read plans from a consistent snapshot without taking the lock.
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any

from dbscale.errors import AuthenticationFailed, NoReplicaAvailable, PrimaryUnavailable
from dbscale.routing import core
from dbscale.routing.balance import choose
from dbscale.routing.core import CheckResult, GroupState, ReadPlan, Settings
from dbscale.routing.events import log_changes
from dbscale.routing.lsn import Mark
from dbscale.routing.metrics import RoutingMetrics


class GroupRouterBase:
    """Routing state of one group, shared by :class:`GroupRouter` and :class:`AsyncGroupRouter`."""

    def __init__(
        self,
        name: str,
        settings: Settings,
        metrics: RoutingMetrics,
        *,
        write_timeout: float,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
        rng: random.Random | None = None,
    ) -> None:
        self.name = name
        self.settings = settings
        self.metrics = metrics
        self.write_timeout = write_timeout
        self.clock = clock
        self.wall_clock = wall_clock
        self._rng = rng or random.Random()
        self._lock = threading.Lock()
        self._state = GroupState.initial(settings)
        self._outstanding: dict[str, int] = dict.fromkeys(settings.nodes, 0)
        self._rr: dict[str, float] = {}
        self._fast: tuple[GroupState, float, list[str], list[ReadPlan], int] | None = None
        # Whether the next write should make one round trip before handing the connection over (so
        # a writer that is not ready yet, e.g. PgBouncer still failing its server login, is waited
        # for within write_timeout instead of failing the caller's first statement). Set when the
        # writer changes or a write failed, cleared by a commit.
        self.write_suspect = True

    @property
    def state(self) -> GroupState:
        """The current snapshot (immutable)."""
        return self._state

    # -- planning -------------------------------------------------------------------------------
    def plan_read(self, mark: Mark | None, exclude: frozenset[str] = frozenset()) -> ReadPlan:
        """Ask the core where a read goes; raise NoReplicaAvailable when it says nowhere."""
        if not exclude:
            # Hot path: reuse the candidate list computed for this snapshot while it holds; a causal
            # mark every candidate is known (from the monitor's view) to have replayed changes nothing.
            state, now = self._state, self.clock()
            fast = self._fast
            if fast is None or fast[0] is not state or now >= fast[1]:
                names, valid_until = core.read_candidates(state, self.settings, now)
                floor = min((state.views[n].lsn or 0 for n in names), default=0)
                fast = self._fast = (state, valid_until, names, [ReadPlan(n) for n in names], floor)
            names = fast[2]
            if mark is not None and not self._covered(mark, fast[4]):
                names = []
            elif len(names) == 1:
                return fast[3][0]
            if names:
                pick, new_rr = choose(
                    self.settings.policy,
                    names,
                    weights=self.settings.weights,
                    outstanding=self._outstanding,
                    rr_state=self._rr,
                    rand=self._rng.random(),
                )
                if new_rr is not None:
                    self._rr = new_rr
                return fast[3][names.index(pick)]
        plan = core.plan_read(
            self._state,
            self.settings,
            now=self.clock(),
            wall_now=self.wall_clock(),
            rand=self._rng.random(),
            mark=mark,
            outstanding=self._outstanding,
            rr_state=self._rr,
            exclude=exclude,
        )
        if plan.rr_state is not None:
            self._rr = plan.rr_state
        if plan.node is None:
            self.metrics.read_errors.inc()
            if plan.refused is not None:
                raise self.refused(plan.refused)
            raise NoReplicaAvailable(f"group {self.name!r}: {plan.reason}; check `dbscale status`")
        return plan

    def _covered(self, mark: Mark, floor: int) -> bool:
        """Whether ``mark`` imposes nothing on replicas that have all replayed up to ``floor``."""
        mode = self.settings.read_your_writes
        if mode == "off":
            return True
        if mark.at is not None and mode == "delay":
            return False
        return mode != "lsn" or mark.lsn is None or mark.lsn <= floor

    def writer(self) -> str | None:
        """The node writes go to now, or None."""
        return core.plan_write(self._state, self.clock())

    def write_target(self, writer: str) -> str:
        """The endpoint (node name) a write to ``writer`` connects to: its PgBouncer unless that is banned."""
        return core.write_target(self._state, self.settings, writer, self.clock())

    def refused(self, which: str) -> AuthenticationFailed:
        """The error for a node that refused the configured credentials (``which``: 'node: reason')."""
        return AuthenticationFailed(
            f"group {self.name!r}: {which} — fix the user, password or database name in the node's URL "
            "(retrying will not help)"
        )

    def check_refused(self, *names: str) -> None:
        """Raise :class:`AuthenticationFailed` if one of ``names`` refused the configured credentials."""
        which = core.refusal(self._state, names)
        if which is not None:
            self.metrics.write_errors.inc()
            raise self.refused(which)

    def no_writer(self, waited: float, last: str | None = None) -> PrimaryUnavailable:
        """The error raised when no writer took the write within the write timeout (one line)."""
        self.metrics.write_errors.inc()
        state = self._state
        if last is not None and state.writer is not None:
            why = f"the writer is not ready ({last})"
        else:
            why = core.primary_down(state, self.settings)
        return PrimaryUnavailable(
            f"group {self.name!r}: no write possible within write_timeout ({waited:.1f}s): {why}; "
            "start the primary or promote a replica, then retry"
        )

    # -- bookkeeping ----------------------------------------------------------------------------
    def acquire(self, node: str) -> None:
        """Count a read in flight on ``node`` (least-outstanding balancing)."""
        with self._lock:
            self._outstanding[node] = self._outstanding.get(node, 0) + 1

    def release(self, node: str) -> None:
        """The read on ``node`` finished."""
        with self._lock:
            self._outstanding[node] -= 1

    def _update(self, change: Callable[[GroupState], GroupState]) -> GroupState:
        with self._lock:
            before = self._state
            self._state = after = change(before)
        if after is not before:
            if after.writer != before.writer:
                self.write_suspect = True
            self._publish(before, after)
            log_changes(self.name, before, after, self.clock())
        return after

    def note_failure(self, node: str, reason: str) -> None:
        """A connection error on ``node``: ban it (and drop it as writer); an endpoint is banned alone."""
        settings = self.settings
        self._update(lambda s: core.note_failure(s, node, settings, self.clock(), reason))

    def note_not_writer(self, node: str) -> None:
        """A write reached ``node`` but it is in recovery: forget it as the writer."""
        self._update(lambda s: GroupState(s.views, None if s.writer == node else s.writer, s.rounds))

    def note_replay(self, node: str, lsn: int) -> None:
        """An inline check saw ``node`` at replay position ``lsn``."""
        self._update(lambda s: core.note_replay(s, node, lsn))

    def note_stalled(self, node: str, lsn: int) -> None:
        """A causal wait on ``node`` saw no progress."""
        self._update(lambda s: core.note_stalled(s, node, lsn))

    def due_checks(self) -> list[str]:
        """Nodes the monitor should probe now."""
        return core.due_checks(self._state, self.clock())

    def apply_round(self, results: Mapping[str, CheckResult]) -> GroupState:
        """Fold one monitor round into the state and publish the gauges."""
        settings = self.settings
        return self._update(lambda s: core.apply_round(s, results, settings, self.clock()))

    def _publish(self, before: GroupState, after: GroupState) -> None:
        m = self.metrics
        now = self.clock()
        # Until the first round every gauge is written; after it, a view that did not change still
        # shows in its gauges (an inline replay check, say, replaces one node's view, not the others').
        keep = before.rounds > 0 and after.writer == before.writer
        for name, view in after.views.items():
            old = before.views[name]
            if keep and view is old:
                continue
            if view.ban.strikes > old.ban.strikes or (view.ban.until or 0) > (old.ban.until or 0):
                m.bans[name].inc()
            m.up[name].set(1 if view.reachable else 0)
            m.banned[name].set(0 if view.ban.usable(now) else 1)
            m.writer[name].set(1 if after.writer == name else 0)
            if view.role == "replica":
                if view.lag_seconds is not None:
                    m.lag_seconds[name].set(view.lag_seconds)
                if view.lag_bytes is not None:
                    m.lag_bytes[name].set(view.lag_bytes)

    def status(self) -> list[dict[str, Any]]:
        """One plain dict per node for ``dbscale status``: role, state, lag, reads, writes, bans."""
        now = self.clock()
        state = self._state
        rows: list[dict[str, Any]] = []
        for name, v in state.views.items():
            phase = v.ban.phase(now)
            health: str
            if v.refused is not None:
                health = "refused"
            elif phase != "ok":
                health = phase
            elif v.reachable is None:
                health = "unchecked"
            elif v.role == "replica" and not core.replica_ok(v, self.settings, now):
                health = "lagging"
            else:
                health = "ok"
            rows.append(
                {
                    "group": self.name,
                    "node": name,
                    "role": "writer" if state.writer == name else v.role,
                    "health": health,
                    "lag_seconds": v.lag_seconds,
                    "lag_bytes": v.lag_bytes,
                    "replay_paused": v.replay_paused,
                    "reads": self.metrics.registry.value("reads_total", group=self.name, node=name),
                    "writes": self.metrics.registry.value("writes_total", group=self.name, node=name),
                    "bans": self.metrics.registry.value("bans_total", group=self.name, node=name),
                    "ban_reason": v.refused or v.ban.reason,
                    "in_flight": self._outstanding.get(name, 0),
                }
            )
        return rows


__all__ = ["GroupRouterBase"]
