"""SQL -> table shapes -> candidate indexes, with PostgreSQL's own parser and no server."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from dbscale.advisor.candidates import (
    candidates,
    fill_params,
    param_slots,
    parse_index_def,
    read_only,
    shapes,
    split_statements,
    tables_of,
)
from dbscale.advisor.model import IndexColumn, IndexSpec, TableShape
from dbscale.errors import AdvisorQueryError

CATALOG = {
    "orders": ["id", "user_id", "status", "created_at", "total", "deleted_at"],
    "users": ["id", "email", "name"],
}
TEXTBOOK = (
    "SELECT id, user_id, total FROM orders WHERE created_at > now() - interval '7 days' AND status = 'pending' "
    "ORDER BY created_at DESC"
)


def test_textbook_shape_has_equality_range_sort_and_a_constant() -> None:
    (shape,) = shapes(TEXTBOOK, CATALOG)
    assert shape.table == "orders"
    assert shape.eq == ("status",)
    assert shape.ranges == ("created_at",)
    assert shape.order == (IndexColumn("created_at", desc=True),)
    assert set(shape.columns) == {"id", "user_id", "total", "created_at", "status"}
    assert shape.constants == (("status", "status = 'pending'"),)


def test_textbook_candidates_include_the_composite_covering_and_partial_forms() -> None:
    (shape,) = shapes(TEXTBOOK, CATALOG)
    ddl = {c.ddl(concurrently=False, name="") for c in candidates(shape)}
    assert "CREATE INDEX ON orders (status, created_at DESC)" in ddl
    assert "CREATE INDEX ON orders (status, created_at DESC) INCLUDE (id, user_id, total)" in ddl
    assert "CREATE INDEX ON orders (created_at DESC) WHERE status = 'pending'" in ddl
    assert "CREATE INDEX ON orders (created_at DESC) INCLUDE (id, user_id, total) WHERE status = 'pending'" in ddl
    assert all(len(c.columns) <= 4 for c in candidates(shape))


def test_join_keys_aliases_and_unqualified_columns_resolve_through_the_catalog() -> None:
    sql = (
        "SELECT o.id, name FROM orders o JOIN users u ON u.id = o.user_id "
        "WHERE email = $1 AND o.deleted_at IS NULL ORDER BY o.created_at DESC NULLS LAST"
    )
    by_table = {s.table: s for s in shapes(sql, CATALOG)}
    assert by_table["users"].eq == ("email",) and by_table["users"].joins == ("id",)
    assert by_table["orders"].joins == ("user_id",)
    assert by_table["orders"].order == (IndexColumn("created_at", desc=True, nulls_first=False),)
    assert by_table["orders"].constants == (("deleted_at", "deleted_at IS NULL"),)
    assert ("deleted_at", "deleted_at IS NULL") not in by_table["users"].constants
    keys = {c.columns for c in candidates(by_table["orders"])}
    assert (IndexColumn("user_id"), IndexColumn("created_at", desc=True, nulls_first=False)) in keys


def test_parameters_are_not_partial_predicates_and_ranges_flip_sides() -> None:
    (shape,) = shapes("SELECT id FROM orders WHERE status = $1 AND 100 < total", CATALOG)
    assert shape.eq == ("status",) and shape.ranges == ("total",) and shape.constants == ()


def test_in_between_like_and_subqueries() -> None:
    sql = (
        "SELECT id FROM orders WHERE status IN ('a', 'b') AND total BETWEEN 1 AND 2 "
        "AND user_id IN (SELECT id FROM users WHERE email LIKE 'x%')"
    )
    by_table = {s.table: s for s in shapes(sql, CATALOG)}
    assert by_table["orders"].eq == ("status",) and by_table["orders"].ranges == ("total",)
    assert by_table["users"].ranges == ("email",)


def test_update_and_delete_use_their_where() -> None:
    (shape,) = shapes("UPDATE orders SET total = 0 WHERE user_id = 3", CATALOG)
    assert shape.eq == ("user_id",)


def test_bad_sql_raises_a_query_error() -> None:
    with pytest.raises(AdvisorQueryError, match="does not parse"):
        tables_of("SELEC 1")
    with pytest.raises(AdvisorQueryError, match="one statement"):
        tables_of("SELECT 1; SELECT 2")


def test_tables_of_skips_ctes() -> None:
    sql = "WITH r AS (SELECT * FROM orders) SELECT * FROM r JOIN public.users u ON true"
    assert sorted(tables_of(sql)) == ["orders", "public.users"]


def test_params_are_filled_from_the_column_they_compare_with() -> None:
    sql = "SELECT id FROM orders o WHERE o.status = $1 AND user_id IN ($2, $3) LIMIT $4"
    slots = param_slots(sql, CATALOG)
    assert slots == {1: ("orders", "status"), 2: ("orders", "user_id"), 3: ("orders", "user_id"), 4: None}
    filled = fill_params(sql, {1: "it's", 2: "7", 3: None, 4: None})
    assert filled == "SELECT id FROM orders o WHERE o.status = 'it''s' AND user_id IN ('7', '1') LIMIT '1'"


def test_index_covering_every_column_is_not_a_candidate() -> None:
    shape = TableShape("t", eq=("a",), columns=("a", "b", "c"), table_width=3)
    assert all(not c.include for c in candidates(shape))


def test_only_plain_selects_are_read_only() -> None:
    assert read_only(TEXTBOOK)
    assert not read_only("UPDATE orders SET total = 0 WHERE id = 1")
    assert not read_only("WITH d AS (DELETE FROM orders RETURNING id) SELECT * FROM d")
    assert not read_only("SELECT * FROM orders FOR UPDATE")
    assert not read_only("SELECT * INTO copy FROM orders")
    assert not read_only("SELEC")


def test_split_statements() -> None:
    assert split_statements("SELECT 1;\n-- note\nSELECT 2;\n") == ["SELECT 1", "SELECT 2"]


def test_parse_index_def_of_pg_get_indexdef_text() -> None:
    spec = parse_index_def(
        "CREATE INDEX i ON public.orders USING btree (status, created_at DESC NULLS LAST) INCLUDE (total) "
        "WHERE (deleted_at IS NULL)"
    )
    assert spec == IndexSpec(
        "orders",
        (IndexColumn("status"), IndexColumn("created_at", desc=True, nulls_first=False)),
        ("total",),
        "deleted_at IS NULL",
    )
    assert parse_index_def("CREATE INDEX i ON t USING gin (doc)") is None
    assert parse_index_def("CREATE INDEX i ON t USING btree (lower(email))") is None


names = st.sampled_from(["a", "b", "c", "Mixed", "with space", "d"])
columns = st.builds(IndexColumn, names, st.booleans(), st.none() | st.booleans())


@given(
    st.lists(columns, min_size=1, max_size=4, unique_by=lambda c: c.name),
    st.lists(st.sampled_from(["x", "y", "Z"]), max_size=2, unique=True),
)
def test_ddl_round_trips_through_the_parser(cols: list[IndexColumn], include: list[str]) -> None:
    spec = IndexSpec("orders", tuple(cols), tuple(include))
    parsed = parse_index_def(spec.ddl())
    assert parsed is not None
    assert [c.normalized() for c in parsed.columns] == [c.normalized() for c in spec.columns]
    assert parsed.include == spec.include
