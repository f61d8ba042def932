"""The group router's decision core — pure: snapshots and ``now`` in, decisions out.

Theory of operation
-------------------
A :class:`GroupState` is an immutable snapshot of what the router knows about one group: for every
node its discovered role, ban record, last health check, replay position and lag. Nothing in this
module performs I/O or reads a clock; the I/O shells (:mod:`dbscale.routing.router`,
:mod:`dbscale.routing.monitor`) feed it facts and act on what it returns.

* The **health monitor** runs :data:`CHECK_SQL` on every node each interval (banned ones too: a
  passing check readmits a node at once) and hands the rows (or the errors) to :func:`apply_round`,
  which updates roles, bans (:mod:`.bans`), elects the writer (a reachable, unbanned node not in
  recovery, highest timeline first, so a promoted replica wins over a stale old primary) and
  computes each replica's lag against the writer's WAL position — or, while no writer is known,
  against the WAL the replica itself received, so replicas keep serving reads when the primary dies.
* A node that refuses the configured credentials or database (:class:`Refused`) is not banned:
  that is permanent until the configuration changes, so reads and writes fail fast naming it.
* The PgBouncer in front of the primary (``Settings.endpoint``) is an *endpoint*, with a view and
  a ban of its own: its failures never ban the PostgreSQL node behind it, and while it is banned
  writes go straight to the primary (:func:`write_target`).
* A **read** asks :func:`plan_read`: replicas that are reachable, unbanned, checked recently and
  within ``max_lag`` are candidates; under a causal mark only those whose replay LSN has reached it
  qualify. If none has reached it yet but one could, the plan says "verify inline" (one
  ``pg_last_wal_replay_lsn()`` on the connection about to be used, optionally waiting a bounded
  time); otherwise the read falls back to the writer (``fallback = "primary"``) or fails
  (``"error"``). The balancer (:mod:`.balance`) picks among candidates.
* A **write** asks :func:`plan_write` for the writer; none known means ``PrimaryUnavailable``.
* Query-time facts (a connection error, an LSN seen inline, a wait that saw no progress) are folded
  back with :func:`note_failure`, :func:`note_replay` and :func:`note_stalled`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace

from dbscale.names import Fallback, ObservedRole
from dbscale.routing.balance import Policy, choose
from dbscale.routing.bans import BanPolicy, BanState
from dbscale.routing.lsn import WAL_PAGE, Mark, format_lsn, parse_lsn, record_boundary
from dbscale.units import ReadYourWrites

Role = ObservedRole

#: One round trip that tells a node's role, WAL position, lag inputs, timeline and (on a replica)
#: whether its WAL receiver is streaming.
CHECK_SQL = """\
SELECT r,
       CASE WHEN r THEN pg_last_wal_replay_lsn() ELSE pg_current_wal_insert_lsn() END::text,
       CASE WHEN r THEN pg_last_wal_receive_lsn() END::text,
       CASE WHEN r THEN extract(epoch FROM now() - pg_last_xact_replay_timestamp())::float8 END,
       CASE WHEN r THEN pg_is_wal_replay_paused() ELSE false END,
       CASE WHEN r THEN NULL
            ELSE ('x' || substr(pg_walfile_name(pg_current_wal_insert_lsn()), 1, 8))::bit(32)::int END,
       CASE WHEN r THEN EXISTS (SELECT 1 FROM pg_stat_wal_receiver WHERE status = 'streaming') ELSE false END
FROM (SELECT pg_is_in_recovery() AS r) AS s"""


@dataclass(frozen=True, slots=True)
class NodeCheck:
    """What one passing health check reported."""

    in_recovery: bool
    lsn: int | None
    receive_lsn: int | None = None
    replay_age: float | None = None
    replay_paused: bool = False
    timeline: int | None = None
    streaming: bool = False


@dataclass(frozen=True, slots=True)
class Refused:
    """A check the node answered by refusing the configured user, password or database (permanent)."""

    reason: str


CheckResult = NodeCheck | Refused | BaseException


def parse_check_row(row: Sequence[object]) -> NodeCheck:
    """Turn a row of :data:`CHECK_SQL` into a :class:`NodeCheck`."""
    in_recovery, lsn, receive, age, paused, timeline, *rest = row
    return NodeCheck(
        in_recovery=bool(in_recovery),
        lsn=parse_lsn(str(lsn)) if lsn is not None else None,
        receive_lsn=parse_lsn(str(receive)) if receive is not None else None,
        replay_age=max(0.0, float(age)) if isinstance(age, int | float) else None,
        replay_paused=bool(paused),
        timeline=int(timeline) if isinstance(timeline, int) else None,
        streaming=bool(rest[0]) if rest else False,
    )


@dataclass(frozen=True, slots=True)
class Settings:
    """Routing settings of one group, in seconds and bytes (built from ``GroupConfig``)."""

    primary: str
    replicas: tuple[str, ...]
    policy: Policy = "least_outstanding"
    weights: Mapping[str, float] = field(default_factory=dict)
    max_lag: float = 10.0
    max_lag_bytes: int | None = None
    fallback: Fallback = "primary"
    read_your_writes: ReadYourWrites = "lsn"
    delay: float = 2.0
    causal_wait: float = 0.05
    health_interval: float = 1.0
    bans: BanPolicy = field(default_factory=BanPolicy)
    endpoint: str | None = None

    @property
    def stale_after(self) -> float:
        """A view older than this is not trusted for replica eligibility (the monitor may be stuck)."""
        return max(3 * self.health_interval, 3.0)

    @property
    def nodes(self) -> tuple[str, ...]:
        """Every PostgreSQL node of the group, the configured primary first."""
        return (self.primary, *self.replicas)

    @property
    def checked(self) -> tuple[str, ...]:
        """Everything the monitor checks: the PostgreSQL nodes and the write endpoint, if any."""
        return self.nodes + ((self.endpoint,) if self.endpoint else ())


@dataclass(frozen=True, slots=True)
class NodeView:
    """The router's knowledge of one node."""

    name: str
    role: Role = "unknown"
    reachable: bool | None = None
    lsn: int | None = None
    receive_lsn: int | None = None
    lag_bytes: int | None = None
    lag_seconds: float | None = None
    caught_up_at: float | None = None
    checked_at: float | None = None
    timeline: int | None = None
    replay_paused: bool = False
    stalled_at: int | None = None
    ban: BanState = field(default_factory=BanState)
    refused: str | None = None


@dataclass(frozen=True, slots=True)
class GroupState:
    """Snapshot of one group: node views and the elected writer (None: no writer known)."""

    views: Mapping[str, NodeView]
    writer: str | None
    rounds: int = 0

    @classmethod
    def initial(cls, settings: Settings) -> GroupState:
        """Before any check: the configured primary is assumed to be the writer, replicas unknown."""
        views = {n: NodeView(n) for n in settings.nodes}
        if settings.endpoint:
            views[settings.endpoint] = NodeView(settings.endpoint, role="pgbouncer")
        return cls(views=views, writer=settings.primary)


def _with_view(state: GroupState, view: NodeView) -> GroupState:
    views = dict(state.views)
    views[view.name] = view
    return replace(state, views=views)


def replica_lag(
    check: NodeCheck, writer_lsn: int | None, caught_up_at: float | None, now: float
) -> tuple[int | None, float | None, float | None]:
    """Lag of a replica as ``(bytes, seconds, caught_up_at)``.

    Bytes behind is ``writer_lsn - replay_lsn`` (never negative; the sign matters, PgDog #1122).
    ``now() - pg_last_xact_replay_timestamp()`` grows while the primary is idle, so a replica that
    has replayed everything the writer has is 0 s behind, and otherwise it is behind by at most the
    time since it was last seen caught up.

    Seconds are judged against the last WAL received, not wall-clock idleness: a replica with
    nothing left to replay (replay LSN == receive LSN) is 0 s behind, however long ago the last
    write was — while it is streaming (what the writer has beyond that is in flight, or inserted but
    not yet flushed), and whenever no writer is known (``writer_lsn`` None: the primary is down;
    bytes behind is then what it received but has not replayed). A replica whose WAL receiver is not
    streaming while a writer is known is judged against the writer, as above.
    """
    if check.lsn is None:
        return None, None, caught_up_at
    replayed_all = replayed_everything_received(check)
    if writer_lsn is not None:
        lag_bytes: int | None = max(0, writer_lsn - check.lsn)
        caught_up = check.lsn >= writer_lsn or (replayed_all and check.streaming)
    elif check.receive_lsn is not None:
        lag_bytes = max(0, check.receive_lsn - check.lsn)
        caught_up = replayed_all
    else:
        lag_bytes = None
        caught_up = False
    if caught_up:
        return lag_bytes, 0.0, now
    bounds = [b for b in (check.replay_age, None if caught_up_at is None else now - caught_up_at) if b is not None]
    return lag_bytes, (min(bounds) if bounds else None), caught_up_at


def replayed_everything_received(check: NodeCheck) -> bool:
    """Whether a replica has replayed every complete WAL record it received.

    The receive LSN can sit on a page boundary inside a record whose rest has not arrived yet (the
    primary had not flushed it); replay then stops at the end of the last complete record, less than
    a page before — that replica has nothing it could replay either.
    """
    receive, replay = check.receive_lsn, check.lsn
    if receive is None or replay is None:
        return False
    return replay >= receive or (receive % WAL_PAGE == 0 and receive - replay < WAL_PAGE)


def elect_writer(views: Mapping[str, NodeView], settings: Settings, now: float) -> str | None:
    """The reachable, usable node not in recovery with the highest timeline (configured primary wins ties)."""
    best: str | None = None
    best_key: tuple[int, int] = (-1, -1)
    for name in settings.nodes:
        view = views[name]
        if view.role != "primary" or not view.reachable or not view.ban.usable(now):
            continue
        key = (view.timeline or 0, 1 if name == settings.primary else 0)
        if key > best_key:
            best, best_key = name, key
    return best


def apply_round(state: GroupState, results: Mapping[str, CheckResult], settings: Settings, now: float) -> GroupState:
    """Fold one monitor round (a check result or an error per probed node) into the state."""
    views = dict(state.views)
    for name, result in results.items():
        view = views[name]
        if isinstance(result, Refused):  # permanent: no ban (nothing to back off from), no writer
            views[name] = replace(view, reachable=False, checked_at=now, refused=result.reason)
            continue
        if isinstance(result, BaseException):
            reason = " ".join(f"{type(result).__name__}: {result}".split())[:200]  # one line
            views[name] = replace(
                view, reachable=False, checked_at=now, refused=None, ban=settings.bans.fail(view.ban, now, reason)
            )
            continue
        if name == settings.endpoint:
            views[name] = replace(
                view, reachable=True, checked_at=now, refused=None, ban=settings.bans.passed(view.ban, now)
            )
            continue
        stalled = view.stalled_at
        if stalled is not None and result.lsn is not None and result.lsn > stalled:
            stalled = None
        views[name] = replace(
            view,
            role="replica" if result.in_recovery else "primary",
            reachable=True,
            lsn=result.lsn,
            receive_lsn=result.receive_lsn,
            checked_at=now,
            timeline=result.timeline,
            replay_paused=result.replay_paused,
            stalled_at=stalled,
            ban=settings.bans.passed(view.ban, now),
            refused=None,
        )
    writer = elect_writer(views, settings, now)
    writer_lsn = views[writer].lsn if writer is not None else None
    if writer_lsn is not None:
        writer_lsn = record_boundary(writer_lsn)
    for name, result in results.items():
        if isinstance(result, NodeCheck) and result.in_recovery and name != settings.endpoint:
            view = views[name]
            lag_bytes, lag_seconds, caught = replica_lag(result, writer_lsn, view.caught_up_at, now)
            views[name] = replace(view, lag_bytes=lag_bytes, lag_seconds=lag_seconds, caught_up_at=caught)
    return GroupState(views=views, writer=writer, rounds=state.rounds + 1)


#: Delay before the confirming second round of a new monitor (see :func:`needs_confirmation`).
CONFIRM_DELAY = 0.1


def needs_confirmation(state: GroupState) -> bool:
    """After a monitor's first round: is some replica behind without ever having been seen caught up?

    Its seconds lag is then only the loose bound ``now() - pg_last_xact_replay_timestamp()`` (which
    grows while the primary is idle), or unknown; a replica caught a moment behind a WAL record would
    be judged lagging. A second round shortly after tells a real lag from a momentary one.
    """
    return state.rounds == 1 and any(
        v.role == "replica" and v.reachable and v.caught_up_at is None and v.lag_bytes is not None
        for v in state.views.values()
    )


def note_failure(state: GroupState, name: str, settings: Settings, now: float, reason: str) -> GroupState:
    """A query on ``name`` failed with a connection error: ban it; a banned writer is no longer the writer.

    ``name`` may be the write endpoint (PgBouncer): then only the endpoint is banned.
    """
    view = state.views[name]
    state = _with_view(state, replace(view, reachable=False, ban=settings.bans.fail(view.ban, now, reason)))
    if state.writer == name:
        state = replace(state, writer=None)
    return state


def note_replay(state: GroupState, name: str, lsn: int) -> GroupState:
    """An inline check saw ``name`` replayed up to ``lsn`` (positions only move forward)."""
    view = state.views[name]
    if view.lsn is not None and view.lsn >= lsn:
        return state
    stalled = view.stalled_at if view.stalled_at is not None and lsn <= view.stalled_at else None
    return _with_view(state, replace(view, lsn=lsn, stalled_at=stalled))


def note_stalled(state: GroupState, name: str, lsn: int) -> GroupState:
    """A causal wait on ``name`` saw no replay progress past ``lsn``: do not wait on it again until it moves."""
    return _with_view(state, replace(state.views[name], stalled_at=lsn))


@dataclass(frozen=True, slots=True)
class ReadPlan:
    """Where a read goes. ``verify_lsn``: check the replica's replay LSN inline before using it."""

    node: str | None
    fallback: bool = False
    verify_lsn: int | None = None
    wait: float = 0.0
    reason: str = ""
    rr_state: dict[str, float] | None = None
    refused: str | None = None


def replica_ok(view: NodeView, settings: Settings, now: float) -> bool:
    """Whether a replica may serve reads at all: reachable, unbanned, freshly checked, within max_lag."""
    if view.role != "replica" or not view.reachable or not view.ban.usable(now):
        return False
    if view.checked_at is None or now - view.checked_at > settings.stale_after:
        return False
    if view.lag_seconds is not None and view.lag_seconds > settings.max_lag:
        return False
    return not (
        settings.max_lag_bytes is not None and view.lag_bytes is not None and view.lag_bytes > settings.max_lag_bytes
    )


def read_candidates(state: GroupState, settings: Settings, now: float) -> tuple[list[str], float]:
    """Replicas that may serve an unmarked read, and until when that list holds for this snapshot.

    The list can only change with a new snapshot or when a view turns stale, so a shell may reuse
    it for the same ``state`` object until ``valid_until``.
    """
    names = [n for n, v in state.views.items() if replica_ok(v, settings, now)]
    checked = [state.views[n].checked_at for n in names]
    valid_until = min((c + settings.stale_after for c in checked if c is not None), default=float("inf"))
    return names, valid_until


def plan_read(
    state: GroupState,
    settings: Settings,
    *,
    now: float,
    wall_now: float,
    rand: float,
    mark: Mark | None = None,
    outstanding: Mapping[str, int] | None = None,
    rr_state: Mapping[str, float] | None = None,
    exclude: frozenset[str] = frozenset(),
) -> ReadPlan:
    """Decide where one read goes (see the module docstring)."""
    out = outstanding or {}
    rr = rr_state or {}
    in_delay = mark is not None and mark.at is not None and wall_now - mark.at < settings.delay
    if in_delay and settings.read_your_writes == "delay":
        return _fallback(state, settings, now, exclude, "written within the read-your-writes delay")
    wanted = mark.lsn if mark is not None and settings.read_your_writes == "lsn" else None
    usable = [n for n, v in state.views.items() if n not in exclude and replica_ok(v, settings, now)]
    if not usable:
        return _fallback(state, settings, now, exclude, "no replica is healthy and within max_lag")
    if wanted is None:
        pick, new_rr = choose(
            settings.policy, usable, weights=settings.weights, outstanding=out, rr_state=rr, rand=rand
        )
        return ReadPlan(pick, rr_state=new_rr)
    fresh = [n for n in usable if (state.views[n].lsn or 0) >= wanted]
    if fresh:
        pick, new_rr = choose(settings.policy, fresh, weights=settings.weights, outstanding=out, rr_state=rr, rand=rand)
        return ReadPlan(pick, rr_state=new_rr)
    pick, new_rr = choose(settings.policy, usable, weights=settings.weights, outstanding=out, rr_state=rr, rand=rand)
    view = state.views[pick]
    waitable = view.stalled_at is None or (view.lsn is not None and view.lsn > view.stalled_at)
    return ReadPlan(pick, verify_lsn=wanted, wait=settings.causal_wait if waitable else 0.0, rr_state=new_rr)


def _fallback(state: GroupState, settings: Settings, now: float, exclude: frozenset[str], why: str) -> ReadPlan:
    refused = refusal(state, settings.nodes)
    if settings.fallback == "error":
        if refused is not None:
            return ReadPlan(None, reason=why, refused=refused)
        return ReadPlan(None, reason=why + " and fallback = 'error'; set fallback = 'primary' to read from the primary")
    writer = plan_write(state, now)
    if writer is None or writer in exclude:
        if refused is not None:
            return ReadPlan(None, reason=why, refused=refused)
        return ReadPlan(None, reason=why + " and " + primary_down(state, settings))
    return ReadPlan(writer, fallback=True, reason=why)


def refusal(state: GroupState, names: Sequence[str]) -> str | None:
    """``"node: reason"`` for the first of ``names`` that refused the configured credentials, if any."""
    for name in names:
        reason = state.views[name].refused
        if reason is not None:
            return f"{name}: {reason}"
    return None


def replicas_serving(state: GroupState, now: float) -> list[str]:
    """The replicas ``wait_replicated`` waits for: every one that can serve reads now or soon, lagging or not.

    A replica that is unreachable or banned serves nothing until a health check readmits it (and its
    lag is checked then, as for any replica); one beyond ``max_lag`` is waited for, since the wait is
    what brings it back within.
    """
    return [n for n, v in state.views.items() if v.role == "replica" and v.reachable and v.ban.usable(now)]


def replication_behind(group: str, wanted: int, replayed: Mapping[str, int], timeout: float) -> str:
    """The ``ReplicationTimeout`` message: which replicas are short of ``wanted``, by how much."""
    behind = ", ".join(
        f"{name} replayed {format_lsn(lsn)} ({wanted - lsn:,} bytes short)"
        for name, lsn in replayed.items()
        if lsn < wanted
    )
    return (
        f"group {group!r}: not every replica replayed the writer's {format_lsn(wanted)} within {timeout:g}s: {behind};"
        " is its replay paused (pg_is_wal_replay_paused()) or slow (dbscale status)? Wait longer, or read with a"
        " causal token (cluster.read(after=...)) instead"
    )


def primary_down(state: GroupState, settings: Settings) -> str:
    """Why no writer is known, for error messages: 'the primary is down (main-primary: ...)'."""
    view = state.views[settings.primary]
    why = view.ban.reason or ("not checked yet" if view.reachable is None else view.role)
    return f"the primary is down ({settings.primary}: {why})"


def write_target(state: GroupState, settings: Settings, writer: str, now: float) -> str:
    """Where a write to ``writer`` connects: the endpoint in front of the primary, unless it is banned."""
    endpoint = settings.endpoint
    if endpoint is None or writer != settings.primary or not state.views[endpoint].ban.usable(now):
        return writer
    return endpoint


def plan_write(state: GroupState, now: float) -> str | None:
    """The node writes go to, or None while no writer is known."""
    writer = state.writer
    if writer is None or not state.views[writer].ban.usable(now):
        return None
    return writer


def due_checks(state: GroupState, now: float) -> list[str]:
    """Nodes the monitor should probe this round: all of them (a passing check readmits a banned node).

    The endpoint is skipped while no writer is known: through PgBouncer a check would only wait for
    the missing primary, and the PostgreSQL checks already tell when it is back.
    """
    return [n for n, v in state.views.items() if v.role != "pgbouncer" or state.writer is not None]


__all__ = [
    "CHECK_SQL",
    "CONFIRM_DELAY",
    "CheckResult",
    "GroupState",
    "NodeCheck",
    "NodeView",
    "ReadPlan",
    "Refused",
    "Settings",
    "apply_round",
    "due_checks",
    "elect_writer",
    "needs_confirmation",
    "note_failure",
    "note_replay",
    "note_stalled",
    "parse_check_row",
    "plan_read",
    "plan_write",
    "primary_down",
    "read_candidates",
    "refusal",
    "replayed_everything_received",
    "replica_lag",
    "replica_ok",
    "replicas_serving",
    "replication_behind",
    "write_target",
]
