"""The pure CQRS core: plan_batch against a model of PostgreSQL's transaction ids, ids and snapshots.

The model: transactions begin (taking an xid from a counter) and, at any later point, append events to
aggregates (ids from a sequence taken at insert; the stored tx follows the append rule: the larger
of the own xid and the aggregate's previous tx) and commit or abort, in any interleaving. A reader
at any moment sees the committed rows and the horizon (the lowest xid still running, or the next
xid). The projector applies ``plan_batch`` to what it sees; the "last id" reader does the textbook
thing. Over every interleaving hypothesis tries, the projector applies every committed event
exactly once, each aggregate in version order; the last-id reader is shown to skip.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from dbscale.cqrs.core import (
    Event,
    Position,
    append_sql,
    check_name,
    lease_key,
    plan_batch,
    rebuild_schema,
    search_path_sql,
)
from dbscale.errors import CqrsError


def ev(id: int, tx: int, agg: str = "a", version: int = 1) -> Event:
    return Event(id=id, tx=tx, aggregate_id=agg, version=version, type="t", payload={})


def test_plan_batch_drops_what_the_checkpoint_covers_and_holds_back_at_the_horizon() -> None:
    rows = [ev(5, 10), ev(3, 11, "b"), ev(4, 12, "c"), ev(6, 20, "d")]
    batch = plan_batch(Position(10, 5), rows, horizon=15)
    assert [e.id for e in batch.events] == [3, 4]
    assert batch.position == Position(12, 4)
    assert batch.held_back
    empty = plan_batch(Position(12, 4), [], None)
    assert empty.events == () and empty.position == Position(12, 4) and not empty.held_back


def test_plan_batch_refuses_versions_out_of_order() -> None:
    with pytest.raises(CqrsError, match="version 1 follows version 2"):
        plan_batch(Position(), [ev(1, 10, "a", 2), ev(2, 11, "a", 1)], horizon=100)


def test_sql_builders_and_names() -> None:
    assert "ON CONFLICT (aggregate_id) DO UPDATE" in append_sql(None)
    assert "DO NOTHING" in append_sql(0)
    assert "version = :expected" in append_sql(3)
    assert "greatest(last_tx, pg_current_xact_id())" in append_sql(3)
    with pytest.raises(CqrsError):
        append_sql(-1)
    with pytest.raises(CqrsError):
        check_name("users; drop table x")
    assert rebuild_schema("users_read") == "dbscale_rebuild_users_read"
    assert search_path_sql("s", '"$user", public') == 'SET LOCAL search_path = "s", "$user", public'
    assert lease_key("a") == lease_key("a") != lease_key("b")
    assert -(2**63) <= lease_key("users_read") < 2**63


@dataclass
class Txn:
    xid: int
    events: list[Event] = field(default_factory=list)
    locks: set[str] = field(default_factory=set)


@dataclass
class Model:
    next_xid: int = 100
    next_id: int = 1
    running: dict[int, Txn] = field(default_factory=dict)
    committed: list[Event] = field(default_factory=list)
    streams: dict[str, tuple[int, int]] = field(default_factory=dict)  # aggregate -> (version, last_tx), committed

    def begin(self) -> None:
        self.running[self.next_xid] = Txn(self.next_xid)
        self.next_xid += 1

    def append(self, which: int, agg: str) -> None:
        if not self.running:
            return
        txn = self.running[sorted(self.running)[which % len(self.running)]]
        if any(agg in t.locks for t in self.running.values() if t is not txn):
            return  # the stream row is locked by another open transaction: this appender would wait
        version, last_tx = self.streams.get(agg, (0, 0))
        own = [e for e in txn.events if e.aggregate_id == agg]
        if own:
            version, last_tx = own[-1].version, own[-1].tx
        tx = max(txn.xid, last_tx)  # the append rule
        txn.events.append(ev(self.next_id, tx, agg, version + 1))
        txn.locks.add(agg)
        self.next_id += 1

    def finish(self, which: int, commit: bool) -> None:
        if not self.running:
            return
        txn = self.running.pop(sorted(self.running)[which % len(self.running)])
        if commit:
            self.committed.extend(txn.events)
            for e in txn.events:
                self.streams[e.aggregate_id] = (e.version, e.tx)

    def horizon(self) -> int:
        return min(self.running, default=self.next_xid)


step = st.one_of(
    st.tuples(st.just("begin"), st.integers(0, 0), st.booleans()),
    st.tuples(st.just("append"), st.integers(0, 3), st.sampled_from("abcdef")),
    st.tuples(st.just("finish"), st.integers(0, 3), st.sampled_from([True, True, True, False])),
    st.tuples(st.just("read"), st.integers(1, 4), st.booleans()),
)
#: Two transactions; the younger one commits first and is read before the older one commits.
OUT_OF_ORDER = [
    ("begin", 0, True),
    ("begin", 0, True),
    ("append", 1, "a"),
    ("append", 0, "b"),
    ("finish", 1, True),
    ("read", 4, True),
    ("finish", 0, True),
]


@settings(max_examples=500, deadline=None)
@example(OUT_OF_ORDER)
@given(st.lists(step, max_size=80))
def test_plan_batch_never_skips_and_keeps_aggregate_order(steps: list[tuple[str, int, object]]) -> None:
    model = Model()
    checkpoint = Position()
    applied: list[Event] = []

    def read(limit: int) -> None:
        nonlocal checkpoint
        visible = sorted((e for e in model.committed if e.position > checkpoint), key=lambda e: e.position)
        batch = plan_batch(checkpoint, visible[:limit], model.horizon())
        applied.extend(batch.events)
        checkpoint = batch.position

    for action, n, arg in steps:
        if action == "begin":
            model.begin()
        elif action == "append":
            model.append(n, str(arg))
        elif action == "finish":
            model.finish(n, bool(arg))
        else:
            read(n)
    while model.running:  # everything ends; the projector catches up
        model.finish(0, True)
    for _ in range(len(model.committed) + 1):
        read(4)
    assert sorted(e.id for e in applied) == sorted(e.id for e in model.committed)  # all, each once
    versions: dict[str, int] = {}
    for e in applied:
        assert e.version == versions.get(e.aggregate_id, 0) + 1, "aggregate applied out of version order"
        versions[e.aggregate_id] = e.version


def test_the_last_id_reader_skips_in_the_model() -> None:
    model = Model()
    model.begin()  # xid 100 takes id 1 ...
    model.append(0, "a")
    model.begin()  # ... xid 101 takes id 2 and commits first
    model.append(1, "b")
    model.finish(1, True)
    last_id = max(e.id for e in model.committed)  # the textbook reader saw id 2
    model.finish(0, True)
    assert [e.id for e in model.committed if e.id > last_id] == []  # id 1 is never read: skipped
    batch = plan_batch(Position(), sorted(model.committed, key=lambda e: e.position), model.horizon())
    assert [e.id for e in batch.events] == [1, 2]


def test_append_rule_keeps_versions_in_reading_order_when_xids_invert() -> None:
    model = Model()
    model.begin()  # A: xid 100, appends later
    model.begin()  # B: xid 101
    model.append(1, "a")  # B appends v1 with tx 101
    model.finish(1, True)
    model.append(0, "a")  # A appends v2: tx = max(100, 101) = 101
    model.finish(0, True)
    ordered = sorted(model.committed, key=lambda e: e.position)
    assert [(e.version, e.tx) for e in ordered] == [(1, 101), (2, 101)]
