"""Scatter-gather plan: merged per-shard results equal the single-table answer."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from decimal import Decimal
from functools import cmp_to_key
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dbscale.errors import FanoutPlanError
from dbscale.sharding import Aggregate, FanoutPlan, OrderKey

Row = dict[str, Any]
Term = tuple[str, bool, bool]  # column, descending, nulls first


def pg_order(terms: Sequence[Term]) -> Callable[[Row], Any]:
    """An independent oracle: PostgreSQL's ORDER BY written as a plain comparison function."""

    def cmp(a: Row, b: Row) -> int:
        for column, descending, nulls_first in terms:
            x, y = a[column], b[column]
            if x is None and y is None:
                continue
            if x is None or y is None:
                x_first = (x is None) == nulls_first
                return -1 if x_first else 1
            if x == y:
                continue
            c = -1 if x < y else 1
            return -c if descending else c
        return 0

    return cmp_to_key(cmp)


def split(rows: list[Row], shards: int, assignment: list[int]) -> list[list[Row]]:
    parts: list[list[Row]] = [[] for _ in range(shards)]
    for row, shard in zip(rows, assignment, strict=False):
        parts[shard % shards].append(row)
    return parts


values = {
    "a": st.one_of(st.none(), st.integers(-3, 3)),
    "b": st.one_of(st.none(), st.text(alphabet="aBz_é", max_size=2)),
    "c": st.one_of(st.none(), st.floats(-2, 2, allow_nan=False)),
}
rows_strategy = st.lists(st.fixed_dictionaries(values), max_size=60).map(
    lambda rows: [{**r, "pk": i} for i, r in enumerate(rows)]
)
terms_strategy = st.lists(
    st.tuples(st.sampled_from(["a", "b", "c", "pk"]), st.booleans(), st.one_of(st.none(), st.booleans())),
    min_size=1,
    max_size=3,
    unique_by=lambda t: t[0],
)


@settings(max_examples=300, deadline=None)
@given(
    rows_strategy,
    terms_strategy,
    st.integers(1, 4),
    st.lists(st.integers(0, 3), min_size=60, max_size=60),
    st.one_of(st.none(), st.integers(0, 25)),
    st.integers(0, 25),
)
def test_merge_with_offset_limit_equals_sorting_the_union(
    rows: list[Row],
    terms: list[tuple[str, bool, bool | None]],
    shards: int,
    assignment: list[int],
    limit: int | None,
    offset: int,
) -> None:
    order = [OrderKey(col, desc, nulls) for col, desc, nulls in terms]
    # PostgreSQL's default, stated here rather than taken from OrderKey: NULLS FIRST only for DESC.
    oracle = pg_order([(col, desc, desc if nulls is None else nulls) for col, desc, nulls in terms])
    plan = FanoutPlan(order_by=order, limit=limit, offset=offset, columns=["pk", "a"])
    assert plan.shard_limit == (None if limit is None else offset + limit)
    per_shard = [sorted(part, key=oracle)[: plan.shard_limit] for part in split(rows, shards, assignment)]
    union = [r for part in split(rows, shards, assignment) for r in part]
    expected = sorted(union, key=oracle)[offset : None if limit is None else offset + limit]
    assert plan.merge(per_shard) == [{"pk": r["pk"], "a": r["a"]} for r in expected]


def test_newest_orders_41_to_60_with_the_sort_column_not_selected_and_nulls() -> None:
    rows = [{"id": i, "title": f"t{i}", "created_at": None if i % 7 == 0 else i % 13} for i in range(200)]
    shards = [[r for r in rows if r["id"] % 3 == s] for s in range(3)]
    plan = FanoutPlan(order_by=[("created_at", "desc"), ("id", "asc")], limit=20, offset=40, columns=["id", "title"])
    assert plan.shard_limit == 60
    assert plan.shard_order_by_sql == "created_at DESC NULLS FIRST, id ASC NULLS LAST"
    oracle = pg_order([("created_at", True, True), ("id", False, False)])
    per_shard = [sorted(s, key=oracle)[:60] for s in shards]
    expected = sorted(rows, key=oracle)[40:60]
    merged = plan.merge(per_shard)
    assert merged == [{"id": r["id"], "title": r["title"]} for r in expected]
    assert all("created_at" not in r for r in merged)


def test_nulls_and_nan_positions_follow_postgresql() -> None:
    nan = float("nan")
    asc = FanoutPlan(order_by=["x"])
    out = asc.merge([[{"x": 1.0}, {"x": nan}, {"x": None}], [{"x": 2.0}, {"x": None}]])
    assert [r["x"] for r in out][:2] == [1.0, 2.0] and math.isnan(out[2]["x"]) and out[3:] == [{"x": None}] * 2
    desc = FanoutPlan(order_by=["x desc"])
    out = desc.merge([[{"x": None}, {"x": nan}, {"x": 1.0}], [{"x": 2.0}]])
    assert out[0] == {"x": None} and math.isnan(out[1]["x"]) and [r["x"] for r in out[2:]] == [2.0, 1.0]
    explicit = FanoutPlan(order_by=[("x", "asc", "nulls first")])
    assert explicit.merge([[{"x": None}, {"x": 1}], [{"x": None}, {"x": 0}]]) == [
        {"x": None},
        {"x": None},
        {"x": 0},
        {"x": 1},
    ]


def test_order_key_parsing() -> None:
    assert OrderKey.parse("created_at") == OrderKey("created_at")
    assert OrderKey.parse("created_at DESC") == OrderKey("created_at", True)
    assert OrderKey.parse(("x", "desc", "nulls last")) == OrderKey("x", True, False)
    assert OrderKey.parse("x nulls first").sql() == "x ASC NULLS FIRST"
    for bad in ("", "x sideways", "x desc nulls", ("x", "desc", "nulls middle")):
        with pytest.raises(FanoutPlanError, match="order_by term"):
            OrderKey.parse(bad)


class FakeRow:
    """Like SQLAlchemy's Row: a tuple with a ``_mapping``."""

    def __init__(self, mapping: dict[str, Any]) -> None:
        self._mapping = mapping


def test_rows_may_be_dicts_or_row_like_with_mapping_but_not_bare_tuples() -> None:
    plan = FanoutPlan(order_by=["k"])
    assert plan.merge([[FakeRow({"k": 2})], [{"k": 1}]]) == [{"k": 1}, {"k": 2}]
    with pytest.raises(FanoutPlanError, match="give mappings"):
        plan.merge([[(1,)]])


def test_missing_sort_column_is_a_clear_error() -> None:
    with pytest.raises(FanoutPlanError, match=r"no column 'created_at'.*select it in the shard query"):
        FanoutPlan(order_by=["created_at"]).merge([[{"id": 1}], [{"id": 2}]])


def test_without_order_by_shards_are_concatenated_then_sliced() -> None:
    plan = FanoutPlan(limit=3, offset=1)
    assert plan.shard_limit == 4
    assert plan.merge([[{"i": 1}, {"i": 2}], [{"i": 3}, {"i": 4}]]) == [{"i": 2}, {"i": 3}, {"i": 4}]


# --- aggregates -------------------------------------------------------------------------------

AGGS = [
    Aggregate.count("n"),
    Aggregate.count("n_v"),
    Aggregate.sum("total"),
    Aggregate.min("lo"),
    Aggregate.max("hi"),
    Aggregate.avg("mean"),
]


def pg_aggregate(rows: list[Row], group_by: Sequence[str]) -> list[Row]:
    """What PostgreSQL computes for COUNT(*), COUNT(v), SUM(v), MIN(v), MAX(v), SUM(v)/COUNT(v) per group."""
    groups: dict[tuple[Any, ...], list[Row]] = {}
    for r in rows:
        groups.setdefault(tuple(r[c] for c in group_by), []).append(r)
    if not group_by and not groups:
        groups[()] = []
    out = []
    for key, members in groups.items():
        vs = [r["v"] for r in members if r["v"] is not None]
        out.append(
            {
                **dict(zip(group_by, key, strict=True)),
                "n": len(members),
                "n_v": len(vs),
                "total": sum(vs) if vs else None,
                "lo": min(vs) if vs else None,
                "hi": max(vs) if vs else None,
                "mean_sum": sum(vs) if vs else None,
                "mean_count": len(vs),
            }
        )
    return out


def single_table(rows: list[Row], group_by: Sequence[str]) -> list[Row]:
    result = []
    for r in pg_aggregate(rows, group_by):
        total, count = r.pop("mean_sum"), r.pop("mean_count")
        r["mean"] = None if count == 0 else Decimal(total) / count
        result.append(r)
    return result


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.fixed_dictionaries(
            {
                "g": st.one_of(st.none(), st.sampled_from(["x", "y", "z"])),
                "v": st.one_of(st.none(), st.integers(-50, 50)),
            }
        ),
        max_size=40,
    ),
    st.integers(1, 4),
    st.lists(st.integers(0, 3), min_size=40, max_size=40),
    st.booleans(),
)
def test_aggregates_equal_the_single_table_computation(
    rows: list[Row], shards: int, assignment: list[int], grouped: bool
) -> None:
    group_by = ["g"] if grouped else []
    plan = FanoutPlan(aggregates=AGGS, group_by=group_by)
    assert plan.shard_limit is None
    parts = split(rows, shards, assignment)
    # Each shard runs the aggregate query itself: an ungrouped one always returns one row.
    per_shard = [pg_aggregate(part, group_by) for part in parts]
    merged = plan.merge(per_shard)
    expected = single_table(rows, group_by)
    key = pg_order([("g", False, False)]) if grouped else None
    assert sorted(merged, key=key) == sorted(expected, key=key)  # type: ignore[arg-type]


def test_avg_is_never_an_average_of_averages() -> None:
    plan = FanoutPlan(aggregates=[Aggregate.avg("mean", sum="s", count="c")])
    merged = plan.merge([[{"s": 3, "c": 3}], [{"s": 10, "c": 1}]])  # shard averages 1 and 10
    assert merged == [{"mean": Decimal("3.25")}]  # (3 + 10) / 4, not (1 + 10) / 2
    assert plan.merge([[{"s": None, "c": 0}], [{"s": None, "c": 0}]]) == [{"mean": None}]
    assert plan.merge([[{"s": 1.5, "c": 2}], [{"s": 0.5, "c": 2}]]) == [{"mean": 0.5}]


def test_grouped_aggregates_ordered_and_limited_after_merging() -> None:
    plan = FanoutPlan(
        aggregates=[Aggregate.count("n"), Aggregate.sum("amount")],
        group_by=["user_id"],
        order_by=[("amount", "desc"), "user_id"],
        limit=2,
        offset=1,
    )
    shard0 = [{"user_id": 1, "n": 2, "amount": 10}, {"user_id": 2, "n": 1, "amount": 50}]
    shard1 = [{"user_id": 1, "n": 1, "amount": 45}, {"user_id": 3, "n": 4, "amount": None}]
    # totals: user 1 -> 55, user 2 -> 50, user 3 -> NULL (first, as DESC puts NULLs first)
    assert plan.merge([shard0, shard1]) == [{"user_id": 1, "n": 3, "amount": 55}, {"user_id": 2, "n": 1, "amount": 50}]


def test_plan_errors() -> None:
    with pytest.raises(FanoutPlanError, match="limit"):
        FanoutPlan(limit=-1)
    with pytest.raises(FanoutPlanError, match="offset"):
        FanoutPlan(offset=-2)
    with pytest.raises(FanoutPlanError, match="group_by without aggregates"):
        FanoutPlan(group_by=["g"])
    with pytest.raises(FanoutPlanError, match="unique"):
        FanoutPlan(aggregates=[Aggregate.count("n"), Aggregate.sum("n")])
    with pytest.raises(FanoutPlanError, match="order by group_by columns or aggregate names"):
        FanoutPlan(aggregates=[Aggregate.count("n")], order_by=["created_at"])
    assert Aggregate.avg("m").shard_columns() == ("m_sum", "m_count")
