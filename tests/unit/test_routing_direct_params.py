"""The fast path hands a ``text()`` statement's parameters to psycopg as given when SQLAlchemy would build the same."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from sqlalchemy import bindparam, text
from sqlalchemy.dialects.postgresql import psycopg as pg_psycopg

from dbscale.routing import fast

DIALECT = pg_psycopg.dialect()


def built(statement: Any, parameters: Any) -> Any:
    """What SQLAlchemy's own compile and construct_params give for ``statement`` and ``parameters``."""
    compiled = statement.compile(dialect=DIALECT)
    return compiled.string, compiled.construct_params(parameters)


def test_callers_parameters_pass_through_only_when_they_are_exactly_the_binds() -> None:
    query = text("SELECT v FROM t WHERE k = :k AND v > :v")
    given_params = {"k": 1, "v": 2}
    prepared = fast.prepare(query, given_params, DIALECT)
    assert prepared is not None and prepared[1] is given_params  # no copy built
    assert prepared[:2] == built(query, given_params)
    extra = {"k": 1, "v": 2, "unused": 3}  # SQLAlchemy drops unknown keys: so does the fast path
    prepared = fast.prepare(query, extra, DIALECT)
    assert prepared is not None and prepared[1] == {"k": 1, "v": 2} and prepared[1] is not extra
    assert fast.prepare(query, {"k": 1}, DIALECT) is None  # a missing value: SQLAlchemy raises its own error
    with_default = text("SELECT :a, :b").bindparams(b=5)
    prepared = fast.prepare(with_default, {"a": 1}, DIALECT)
    assert prepared is not None and prepared[1] == {"a": 1, "b": 5}  # the statement's own value is filled in
    typed = text("SELECT :a").bindparams(bindparam("a", type_=pg_psycopg.sqltypes.Integer))
    prepared = fast.prepare(typed, {"a": 4}, DIALECT)
    assert prepared is not None and prepared[:2] == built(typed, {"a": 4})


@given(st.dictionaries(st.sampled_from(["a", "b", "c", "d"]), st.integers(), min_size=0, max_size=4))
def test_fast_parameters_equal_sqlalchemys(params: dict[str, int]) -> None:
    query = text("SELECT :a, :b, :c")
    prepared = fast.prepare(query, params, DIALECT)
    if not {"a", "b", "c"} <= params.keys():
        assert prepared is None
        return
    assert prepared is not None and prepared[:2] == built(query, params)


@pytest.mark.parametrize("params", [None, {}])
def test_a_statement_without_binds(params: Any) -> None:
    prepared = fast.prepare(text("SELECT 1"), params, DIALECT)
    assert prepared is not None and prepared[0] == "SELECT 1" and prepared[1] == {}


def test_a_text_built_anew_per_call_is_compiled_once_and_keeps_its_own_values(monkeypatch: pytest.MonkeyPatch) -> None:
    """``conn.execute(text("…"), params)`` inline makes a new object each call: it compiles once (by
    SQLAlchemy's cache key), and a later equal text with values bound in it gets its own values."""
    compiles: list[Any] = []
    plan = fast._plan
    monkeypatch.setattr(fast, "_plan", lambda *args, **kwargs: compiles.append(args[0]) or plan(*args, **kwargs))
    sql = "SELECT v FROM inline_t WHERE k = :k AND v > :v"
    for k in range(5):
        prepared = fast.prepare(text(sql), {"k": k, "v": 0}, DIALECT)
        assert prepared is not None and prepared[:2] == built(text(sql), {"k": k, "v": 0})
    assert len(compiles) == 1
    for bound in (7, 8):  # equal statements (one cache key) whose own values differ
        statement = text(sql).bindparams(v=bound)
        prepared = fast.prepare(statement, {"k": 1}, DIALECT)
        assert prepared is not None and prepared[1] == {"k": 1, "v": bound}
    assert len(compiles) == 2
