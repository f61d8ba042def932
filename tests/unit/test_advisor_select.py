"""EXPLAIN JSON -> costs, existing-index reports and greedy workload selection, without a server."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from dbscale.advisor.model import Evaluation, ExistingIndex, IndexColumn, IndexSpec, Query
from dbscale.advisor.select import choose, covers, indexes_used, redundant, total_cost, unused

PLAN = [
    {
        "Plan": {
            "Node Type": "Nested Loop",
            "Total Cost": 42.5,
            "Plans": [
                {"Node Type": "Index Scan", "Index Name": "<123>btree_users_email", "Total Cost": 8.0},
                {"Node Type": "Bitmap Heap Scan", "Plans": [{"Index Name": "orders_user"}]},
            ],
        }
    }
]


def test_plan_cost_and_indexes() -> None:
    assert total_cost(PLAN) == 42.5
    assert indexes_used(PLAN) == ["<123>btree_users_email", "orders_user"]


def spec(table: str, *cols: str, include: tuple[str, ...] = (), where: str | None = None) -> IndexSpec:
    return IndexSpec(table, tuple(IndexColumn(c.split()[0], c.endswith(" DESC")) for c in cols), include, where)


def test_covers_prefix_direction_include_and_predicate() -> None:
    existing = spec("t", "a", "b DESC", include=("c",))
    assert covers(existing, spec("t", "a"))
    assert covers(existing, spec("t", "a", "b DESC", include=("c",)))
    assert covers(existing, spec("t", "a DESC", "b"))  # a backward scan gives the reversed order
    assert not covers(existing, spec("t", "a", "b"))
    assert not covers(existing, spec("t", "b"))
    assert not covers(existing, spec("t", "a", include=("d",)))
    assert not covers(existing, spec("t", "a", where="a IS NULL"))


def test_redundant_and_unused_existing_indexes() -> None:
    rows = [
        ExistingIndex("t_pkey", "t", "CREATE UNIQUE INDEX t_pkey ON public.t USING btree (id)", 5, True),
        ExistingIndex("t_a", "t", "CREATE INDEX t_a ON public.t USING btree (a)", 0),
        ExistingIndex("t_a_b", "t", "CREATE INDEX t_a_b ON public.t USING btree (a, b)", 3),
        ExistingIndex("t_b1", "t", "CREATE INDEX t_b1 ON public.t USING btree (b)", 1),
        ExistingIndex("t_b2", "t", "CREATE INDEX t_b2 ON public.t USING btree (b)", 1),
        ExistingIndex("t_id", "t", "CREATE INDEX t_id ON public.t USING btree (id)", 0),
    ]
    found = {f.subject: f.detail for f in redundant(rows)}
    assert set(found) == {"t_a", "t_b2", "t_id"}
    assert found["t_a"].startswith("prefix of t_a_b")
    assert found["t_b2"].startswith("duplicate of t_b1")
    assert found["t_id"].startswith("duplicate of t_pkey")
    assert [f.subject for f in unused(rows)] == ["t_a", "t_id"]


Q1, Q2, Q3 = Query("q1", calls=10), Query("q2", calls=1), Query("q3", calls=1)


def test_one_index_serving_two_queries_beats_two_narrower_ones() -> None:
    shared, only1 = spec("t", "a"), spec("t", "a", "b")
    chosen, findings = choose(
        {
            shared: [Evaluation(Q1, 100, 10), Evaluation(Q2, 100, 10)],
            only1: [Evaluation(Q1, 100, 9)],
        }
    )
    assert [r.index for r in chosen] == [shared] and findings == []
    assert {e.query for e in chosen[0].serves} == {Q1, Q2}


def test_min_gain_and_the_gain_beyond_picked_indexes() -> None:
    a, b, c = spec("t", "a"), spec("t", "b"), spec("t", "c")
    evs = {a: [Evaluation(Q1, 100, 50)], b: [Evaluation(Q1, 100, 45)], c: [Evaluation(Q3, 100, 80)]}
    chosen, _ = choose(evs, min_gain=0.3)
    assert [r.index for r in chosen] == [b]  # a saves nothing more than 30% beyond b; c gains only 20%
    assert choose(evs, min_gain=0.6) == ([], [])


def test_ranked_by_calls_times_time_saved() -> None:
    slow_rare, fast_frequent = Query("rare", calls=1, mean_ms=100.0), Query("frequent", calls=1000, mean_ms=1.0)
    a, b = spec("t", "a"), spec("u", "b")
    chosen, _ = choose({a: [Evaluation(slow_rare, 100, 1)], b: [Evaluation(fast_frequent, 10, 1)]})
    assert [r.index for r in chosen] == [b, a]


def test_write_heavy_table_is_flagged_not_indexed() -> None:
    a, b = spec("hot", "a"), spec("cold", "b")
    chosen, findings = choose(
        {a: [Evaluation(Q2, 1000, 10)], b: [Evaluation(Q3, 1000, 10)]}, table_writes={"hot": 10_000, "cold": 10}
    )
    assert [r.index for r in chosen] == [b]
    assert [(f.kind, f.subject) for f in findings] == [("write-heavy", "hot")]


def test_near_ties_prefer_the_smaller_index() -> None:
    wide, partial = spec("t", "a", "b", include=("c",)), spec("t", "b", where="a = 1")
    chosen, _ = choose(
        {wide: [Evaluation(Q1, 1000, 5)], partial: [Evaluation(Q1, 1000, 20)]}, sizes={wide: 10**6, partial: 10**4}
    )
    assert [r.index for r in chosen] == [partial]


@given(st.lists(st.tuples(st.integers(0, 5), st.floats(1, 1000), st.floats(0, 1)), max_size=30))
def test_every_chosen_index_gains_min_gain_for_each_query_it_serves(rows: list[tuple[int, float, float]]) -> None:
    queries = [Query(f"q{i}", calls=i + 1) for i in range(6)]
    evs: dict[IndexSpec, list[Evaluation]] = {}
    for n, (qi, before, frac) in enumerate(rows):
        evs.setdefault(spec("t", f"c{n % 7}"), []).append(Evaluation(queries[qi], before, before * frac))
    chosen, _ = choose(evs, min_gain=0.3)
    assert len({r.index for r in chosen}) == len(chosen)
    for rec in chosen:
        assert rec.serves and all(e.gain >= 0.3 for e in rec.serves)
