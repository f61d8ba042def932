"""The fast path's statement preparation and results (no server: SQLAlchemy compiles for psycopg's dialect)."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from sqlalchemy import Integer, Numeric, String, TypeDecorator, bindparam, column, func, select, table, text, update
from sqlalchemy import exc as sa_exc
from sqlalchemy.dialects.postgresql import psycopg as pg_psycopg
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from dbscale.routing import fast

DIALECT = pg_psycopg.dialect()
T = table("t", column("id", Integer), column("payload", String))


class Upper(TypeDecorator[str]):
    impl = String
    cache_ok = True

    def process_result_value(self, value: Any, dialect: Any) -> Any:
        return value.upper() if value is not None else None


class Base(DeclarativeBase):
    pass


class Item(Base):
    __tablename__ = "items"
    id: Mapped[int] = mapped_column(primary_key=True)


NAMES = ("id", "payload")


class PGResult:
    """What :func:`fast.columns` reads of libpq's result."""

    def __init__(self, status: int, names: list[bytes]) -> None:
        self.status = status
        self.nfields = len(names)
        self._names = names

    def fname(self, i: int) -> bytes:
        return self._names[i]


def test_text_takes_the_fast_path_with_its_parameters() -> None:
    sql, params, keys = fast.prepare(text("SELECT payload FROM t WHERE id = :id"), {"id": 5}, DIALECT) or ((), (), ())
    assert sql == "SELECT payload FROM t WHERE id = %(id)s"
    assert params == {"id": 5}
    assert keys is None  # named by the cursor description


def test_a_literal_percent_stays_escaped_for_the_driver() -> None:
    prepared = fast.prepare(text("SELECT 5 % 2"), None, DIALECT)
    assert prepared is not None
    assert prepared[0] == "SELECT 5 %% 2" and prepared[1] == {}  # psycopg unescapes it because parameters are given


@given(st.integers(-(2**31), 2**31 - 1), st.integers(-(2**31), 2**31 - 1))
def test_equal_core_selects_share_a_plan_but_keep_their_own_values(a: int, b: int) -> None:
    first = fast.prepare(select(T.c.payload).where(T.c.id == a), None, DIALECT)
    second = fast.prepare(select(T.c.payload).where(T.c.id == b), None, DIALECT)
    assert first is not None and second is not None
    assert first[0] == second[0]
    assert list(first[1].values()) == [a] and list(second[1].values()) == [b]
    assert first[2] == ("payload",)


def test_a_select_constant_reused_with_new_parameters() -> None:
    stmt = select(T.c.payload).where(T.c.id == bindparam("x"))
    assert [fast.prepare(stmt, {"x": n}, DIALECT)[1] for n in (1, 2)] == [{"x": 1}, {"x": 2}]  # type: ignore[index]
    assert fast.prepare(stmt, None, DIALECT) is None  # a missing value: SQLAlchemy raises its own error


@pytest.mark.parametrize(
    "statement",
    [
        select(T.c.id).where(T.c.id.in_([1, 2])),  # expanding IN: rendered per call by SQLAlchemy
        select(column("n", Numeric)),  # a result processor
        select(column("s", Upper)),  # a TypeDecorator
        select(Item),  # ORM-enabled
        select(T.c.id).execution_options(stream_results=True),
        update(T).values(payload="x"),  # Core DML: its compiled form depends on the parameters' keys
        T.insert(),
        select(func.count()).select_from(T).subquery(),  # not a statement it runs
    ],
    ids=["in", "numeric", "typedecorator", "orm", "options", "update", "insert", "subquery"],
)
def test_statements_that_need_sqlalchemy_stay_on_it(statement: Any) -> None:
    assert fast.prepare(statement, None, DIALECT) is None


def test_executemany_stays_on_sqlalchemy() -> None:
    assert fast.prepare(text("SELECT :x"), [{"x": 1}, {"x": 2}], DIALECT) is None


def test_rows_behave_like_sqlalchemy_rows() -> None:
    rows = [(1, "a"), (2, "b")]
    assert fast.result(NAMES, rows, 2).all()[1].payload == "b"
    assert fast.result(NAMES, rows, 2).mappings().all() == [
        {"id": 1, "payload": "a"},
        {"id": 2, "payload": "b"},
    ]
    assert fast.result(NAMES, rows, 2).scalars().all() == [1, 2]
    assert fast.result(NAMES, rows, 2).first()._mapping["payload"] == "a"  # type: ignore[union-attr]
    assert fast.result(NAMES, rows[:1], 1).one().id == 1
    assert fast.result(NAMES, rows[:1], 1).scalar_one() == 1
    assert fast.result(NAMES, [], 0).scalar() is None
    assert fast.result(NAMES, rows, 2).unique().all() == rows
    partly = fast.result(NAMES, rows, 2)
    assert partly.fetchone() == (1, "a") and partly.all() == [(2, "b")]
    with pytest.raises(sa_exc.MultipleResultsFound):
        fast.result(NAMES, rows, 2).scalar_one()
    with pytest.raises(sa_exc.NoResultFound):
        fast.result(NAMES, [], 0).one()


def test_a_statement_without_rows_reports_rowcount_and_refuses_fetches() -> None:
    done = fast.result(None, (), 3)
    assert done.rowcount == 3 and not done.returns_rows
    with pytest.raises(sa_exc.ResourceClosedError):
        done.scalar_one()


def test_column_names_come_from_the_statement_or_the_result() -> None:
    rows = PGResult(fast.TUPLES_OK, [b"k", "värde".encode()])
    assert fast.columns(rows, "utf-8", None) == ("k", "värde")
    assert fast.columns(rows, "utf-8", ("a", "b")) == ("a", "b")  # a Core select's own keys
    assert fast.columns(rows, "utf-8", ("a",)) == ("k", "värde")  # keys that do not fit: the result's
    assert fast.columns(PGResult(1, []), "utf-8", None) is None  # COMMAND_OK: no rows
    assert fast.columns(None, "utf-8", None) is None
