"""The driver-level fast path: SQLAlchemy statements run on the pooled psycopg connection directly.

Theory of operation: SQLAlchemy Core's per-statement machinery (execution context, cursor wrapper,
result metadata built from the cursor description, autobegin bookkeeping) costs about as much CPU
as the round trip it sends. For the statements a routed read or write typically runs, all of it
reduces to "this SQL string, these parameters, these column names": :func:`prepare` compiles a
statement once per dialect (cached by the statement object, then by SQLAlchemy's own cache key)
and returns the driver SQL and parameters; the router sends them with psycopg and wraps the rows
with :func:`result`, a SQLAlchemy ``Result`` (``Row`` objects with attribute, index and
``_mapping`` access; ``scalar_one()``, ``mappings()``, ``scalars()``, ``all()`` …) plus
``rowcount`` and ``returns_rows`` as on a ``CursorResult``. Driver errors are raised as the
SQLAlchemy exceptions the slow path raises (:func:`translate`).

Only what needs no SQLAlchemy processing takes the fast path: ``text()`` and Core ``select()``
without execution options, bind or result type processors, expanding (``IN``) or literal-execute
parameters, and ORM-enabled statements stay on SQLAlchemy; so do Core ``insert``/``update``/
``delete`` (their compiled form depends on the parameters' keys), ``executemany`` and calls with
execution options. Whether psycopg prepares the statement is the connection's own setting
(``prepare_threshold``: server-side prepared after five uses on a direct connection, never
through PgBouncer).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import psycopg
from psycopg.pq import ExecStatus
from sqlalchemy import Dialect, Executable, Select, TextClause
from sqlalchemy import exc as sa_exc
from sqlalchemy.engine.cursor import _NO_RESULT_METADATA
from sqlalchemy.engine.result import IteratorResult, ResultMetaData, SimpleResultMetaData
from sqlalchemy.engine.row import Row
from sqlalchemy.sql.compiler import Compiled

#: Statements compiled per (statement id, dialect id); the entry keeps the statement alive, so the id stays its own.
_BY_ID: dict[tuple[int, int], tuple[Executable, _Plan | None]] = {}
#: Statements built per call (a fresh ``text()`` or ``select()`` each time) share a plan by SQLAlchemy's cache key.
_BY_KEY: dict[tuple[Any, int], _Plan | None] = {}
_MAX = 2000  # entries per cache; a cache that fills up is cleared (statements are usually module constants)
_METADATA: dict[tuple[str, ...], SimpleResultMetaData] = {}
TUPLES_OK = ExecStatus.TUPLES_OK


class _Plan:
    __slots__ = ("compiled", "direct", "keys", "sql")

    def __init__(self, compiled: Compiled, keys: tuple[str, ...] | None, direct: frozenset[str] | None = None) -> None:
        self.compiled = compiled
        self.sql = compiled.string
        self.keys = keys
        #: The bind names when the caller's parameters, given with exactly these keys, are the driver's
        #: parameters as they are (``text()`` whose binds all come from the caller, unrenamed).
        self.direct = direct


def _direct(compiled: Any) -> frozenset[str] | None:
    """The bind names of a ``text()`` compiled form that takes the caller's parameters unchanged, else None."""
    if compiled.positional or compiled.escaped_bind_names:
        return None
    names = []
    for bind, name in compiled.bind_names.items():
        if bind.key != name or bind.value is not None or bind.callable is not None or not bind.required:
            return None
        names.append(name)
    return frozenset(names)


def _plan(statement: Executable, dialect: Dialect, cache_key: Any = None) -> _Plan | None:
    """Compile ``statement``; None when it needs SQLAlchemy's processing (see the module docstring).

    With ``cache_key``, the compiled form takes another equal statement's parameter values too.
    """
    compiled: Any = statement._compiler(dialect, cache_key=cache_key)  # type: ignore[attr-defined]
    if compiled._bind_processors or compiled.literal_execute_params or compiled.post_compile_params:
        return None
    keys: tuple[str, ...] | None = None
    if isinstance(statement, Select):
        names = []
        for keyname, name, objects, type_ in compiled._result_columns:
            if keyname != name or any(getattr(o, "key", name) != name for o in objects):
                return None  # a Column whose key differs from its name: SQLAlchemy maps both
            try:
                if type_._cached_result_processor(dialect, None) is not None:
                    return None
            except Exception:  # e.g. a Numeric whose processor depends on the column's type code
                return None
            names.append(keyname)
        keys = tuple(names)
        return _Plan(compiled, keys)
    return _Plan(compiled, keys, _direct(compiled))


def _remember(table: dict[Any, Any], key: Any, value: Any) -> None:
    if len(table) >= _MAX:
        table.clear()
    table[key] = value


def prepare(statement: Executable, parameters: Any, dialect: Dialect) -> tuple[str, Any, tuple[str, ...] | None] | None:
    """``(sql, driver parameters, column keys or None)`` for ``statement``, or None to use SQLAlchemy.

    The column keys are None when the rows are named by the cursor description (``text()``).
    """
    if parameters is not None and not isinstance(parameters, Mapping):
        return None  # executemany, or positional: SQLAlchemy's job
    kind = type(statement)
    if kind is Select:
        if statement._propagate_attrs or statement._execution_options:
            return None  # ORM-enabled, or options that change how it runs
    elif kind is not TextClause:
        return None
    extracted = None
    ident = (id(statement), id(dialect))
    hit = _BY_ID.get(ident)
    if hit is not None and hit[0] is statement:
        plan = hit[1]  # compiled from this very object: its own parameter values are in the plan
    else:  # by SQLAlchemy's cache key: a text() or select built anew per call compiles once, not each time
        cache_key = statement._generate_cache_key()  # type: ignore[attr-defined]
        if cache_key is None:
            return None
        full = (cache_key.key, id(dialect))
        if full in _BY_KEY:
            plan = _BY_KEY[full]
            extracted = cache_key[1]  # compiled from an equal statement: take this one's values
        else:
            plan = _plan(statement, dialect, cache_key)
            _remember(_BY_KEY, full, plan)
            _remember(_BY_ID, ident, (statement, plan))
    if plan is None:
        return None
    if plan.direct is not None and parameters is not None and parameters.keys() == plan.direct:
        return plan.sql, parameters, plan.keys  # what construct_params() would build, without building it
    try:
        if extracted is None:
            params = plan.compiled.construct_params(parameters)
        else:
            params = plan.compiled.construct_params(parameters, extracted_parameters=extracted)
    except sa_exc.SQLAlchemyError:
        return None  # e.g. a missing value: SQLAlchemy raises its own error
    return plan.sql, params, plan.keys


def _no_rows() -> Iterator[Any]:
    """Fetching from a statement that returns no rows raises what a ``CursorResult`` raises."""
    _NO_RESULT_METADATA._we_dont_return_rows()
    yield None


class FastResult(IteratorResult[Any]):
    """A SQLAlchemy ``Result`` over rows fetched by the fast path, with ``rowcount`` and ``returns_rows``.

    The usual one-call consumers (``scalar_one()``, ``scalar()``, ``first()``, ``one()``, ``all()``,
    ``fetchall()``) take a short path while the result is untouched by ``unique()``/``columns()``;
    everything else, and every error case, is SQLAlchemy's own ``Result`` code.
    """

    def __init__(self, metadata: ResultMetaData, rows: Sequence[Any], rowcount: int) -> None:
        returns_rows = metadata is not _NO_RESULT_METADATA
        super().__init__(metadata, iter(rows) if returns_rows else _no_rows())
        self._plain = metadata
        self.rowcount = rowcount
        self.returns_rows = returns_rows

    def _rest(self) -> list[Any] | None:
        """The remaining raw rows (the result is then exhausted), or None when the short path does not apply."""
        if self._metadata is not self._plain or self._unique_filter_state or self._post_creational_filter:
            return None
        if not self.returns_rows or self._hard_closed:
            return None
        rest = list(self.iterator)
        self.iterator = iter(())
        return rest

    def _make(self, data: Any) -> Row[Any]:
        md: Any = self._plain
        return Row(md, None, md._key_to_index, data)

    def _back(self, rest: list[Any]) -> None:
        self.iterator = iter(rest)

    def scalar_one(self) -> Any:
        rest = self._rest()
        if rest is not None and len(rest) == 1:
            return rest[0][0]
        if rest is not None:
            self._back(rest)
        return super().scalar_one()

    def scalar(self) -> Any:
        rest = self._rest()
        if rest is not None:
            return rest[0][0] if rest else None
        return super().scalar()

    def first(self) -> Any:
        rest = self._rest()
        if rest is not None:
            return self._make(rest[0]) if rest else None
        return super().first()

    def one(self) -> Any:
        rest = self._rest()
        if rest is not None and len(rest) == 1:
            return self._make(rest[0])
        if rest is not None:
            self._back(rest)
        return super().one()

    def all(self) -> Any:
        rest = self._rest()
        if rest is not None:
            return [self._make(data) for data in rest]
        return super().all()

    fetchall = all


def columns(pgresult: Any, encoding: str, keys: tuple[str, ...] | None) -> tuple[str, ...] | None:
    """The names of a statement's columns (``keys`` when they fit), or None when it returned no rows.

    Read from libpq's result directly: psycopg's ``cursor.description`` builds an object per column.
    """
    if pgresult is None or pgresult.status != TUPLES_OK:
        return None
    count = pgresult.nfields
    if keys is not None and len(keys) == count:
        return keys
    return tuple(pgresult.fname(i).decode(encoding) for i in range(count))


def columns_of(cursor: Any, keys: tuple[str, ...] | None) -> tuple[str, ...] | None:
    """:func:`columns` of ``cursor``'s current result, looking up the connection's encoding only to decode names."""
    pgresult = cursor.pgresult
    if keys is not None and pgresult is not None and pgresult.status == TUPLES_OK and pgresult.nfields == len(keys):
        return keys
    return columns(pgresult, cursor._encoding, keys)


def result(names: tuple[str, ...] | None, rows: Sequence[Any], rowcount: int) -> FastResult:
    """The rows of one statement as a :class:`FastResult`; ``names`` None: the statement returns no rows."""
    if names is None:
        return FastResult(_NO_RESULT_METADATA, (), rowcount)
    metadata = _METADATA.get(names)
    if metadata is None:
        metadata = SimpleResultMetaData(names)
        _remember(_METADATA, names, metadata)
    return FastResult(metadata, rows, rowcount)


def translate(exc: psycopg.Error, sql: str | None, params: Any, invalidated: bool) -> sa_exc.StatementError:
    """The SQLAlchemy exception the slow path raises for ``exc`` (``IntegrityError``, ``OperationalError`` …)."""
    return sa_exc.DBAPIError.instance(sql, params, exc, psycopg.Error, connection_invalidated=invalidated)


__all__ = ["FastResult", "columns", "columns_of", "prepare", "result", "translate"]
