"""Scatter-gather plan: merge per-shard results into the answer one table would give — pure.

Theory of operation
-------------------
A :class:`FanoutPlan` describes what the I/O shell must ask every shard for and how to combine the
answers. Rows are mappings from column name to value (``dict``, SQLAlchemy's ``RowMapping`` from
``result.mappings()``, or any object with a ``_mapping`` such as a ``Row``); merged rows are
``dict``.

* **ORDER BY** (``order_by``): each shard returns its rows sorted by the same keys; :meth:`merge`
  does a k-way merge (``heapq.merge``) in PostgreSQL's order: ``NULLS LAST`` for ``ASC`` and
  ``NULLS FIRST`` for ``DESC`` unless stated, ``NaN`` above every other number. Text compares by
  code point, which is PostgreSQL's order under ``COLLATE "C"`` only: sort text keys with
  ``COLLATE "C"`` in the shard query (or the merge and the shards disagree).
* **LIMIT / OFFSET**: every shard runs ``LIMIT offset + limit`` and no OFFSET
  (:attr:`FanoutPlan.shard_limit`); the merge skips ``offset`` rows and keeps ``limit``.
* **Aggregates** (``aggregates``, optionally ``group_by``): every shard computes partial aggregates
  under the output names, which the merge combines: COUNT adds counts; SUM adds non-NULL sums (NULL
  if all are NULL); MIN/MAX take the extreme non-NULL value; AVG is ``sum(sums) / sum(counts)`` from
  two shard columns (never an average of averages), NULL when the count is 0. Groups are then
  ordered and sliced like rows; LIMIT cannot be pushed down past a GROUP BY, so
  :attr:`~FanoutPlan.shard_limit` is None then.
* **Sort columns not in the select list**: select them in the shard query anyway and name the
  output ``columns``; the merge drops every other column.

Example: the newest orders 41-60 across shards::

    plan = FanoutPlan(order_by=[("created_at", "desc"), ("id", "asc")], limit=20, offset=40,
                      columns=["id", "title"])
    # each shard: SELECT id, title, created_at FROM orders ORDER BY created_at DESC, id LIMIT 60
    rows = plan.merge([rows_of_shard0, rows_of_shard1, rows_of_shard2])
"""

from __future__ import annotations

import heapq
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal
from itertools import islice
from typing import Any, Literal

from dbscale.errors import FanoutPlanError

Row = Mapping[str, Any]
AggregateFunc = Literal["count", "sum", "min", "max", "avg"]


@dataclass(frozen=True, slots=True)
class OrderKey:
    """One ORDER BY term; ``nulls_first=None`` means PostgreSQL's default for the direction."""

    column: str
    descending: bool = False
    nulls_first: bool | None = None

    @property
    def nulls_go_first(self) -> bool:
        """Whether NULLs sort before values (``NULLS FIRST``)."""
        return self.descending if self.nulls_first is None else self.nulls_first

    def sql(self) -> str:
        """This term as SQL (``created_at DESC NULLS LAST``); the column name is not quoted."""
        direction = "DESC" if self.descending else "ASC"
        return f"{self.column} {direction} NULLS {'FIRST' if self.nulls_go_first else 'LAST'}"

    @classmethod
    def parse(cls, spec: OrderKey | str | Sequence[str]) -> OrderKey:
        """``"col"``, ``"col desc"``, ``"col desc nulls last"``, ``("col", "desc")``, ``("col", "asc", "nulls first")``."""
        if isinstance(spec, OrderKey):
            return spec
        words = spec.split() if isinstance(spec, str) else [w for part in spec for w in str(part).split()]
        if not words:
            raise FanoutPlanError(f"order_by term {spec!r} is empty: name a column")
        column, rest = words[0], [w.lower() for w in words[1:]]
        descending = False
        if rest and rest[0] in ("asc", "desc"):
            descending = rest.pop(0) == "desc"
        nulls_first: bool | None = None
        if rest[:1] == ["nulls"] and len(rest) == 2 and rest[1] in ("first", "last"):
            nulls_first = rest[1] == "first"
            rest = []
        if rest:
            raise FanoutPlanError(f"order_by term {spec!r}: expected 'column [asc|desc] [nulls first|nulls last]'")
        return cls(column, descending, nulls_first)


class _Reversed:
    """Inverts the order of a value (DESC keys of any comparable type)."""

    __slots__ = ("value",)

    def __init__(self, value: Any) -> None:
        self.value = value

    def __lt__(self, other: _Reversed) -> bool:
        return bool(other.value < self.value)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, _Reversed) and bool(self.value == other.value)

    def __hash__(self) -> int:
        return hash(self.value)


def sort_key(order_by: Sequence[OrderKey]) -> Callable[[Row], tuple[Any, ...]]:
    """A key function ordering rows as PostgreSQL's ``ORDER BY`` with these terms does."""
    # Per term a (rank, value) pair: NULL gets rank 0 (NULLS FIRST) or 3 (LAST); NaN, which
    # PostgreSQL puts above every number, gets 2 for ASC and 1 for DESC; other values rank between.
    terms = [(k.column, k.descending, 0 if k.nulls_go_first else 3) for k in order_by]

    def key(row: Row) -> tuple[Any, ...]:
        parts: list[Any] = []
        for column, descending, null_rank in terms:
            v = row[column]
            if v is None:
                parts.append((null_rank, None))
            elif v != v:  # NaN
                parts.append((1 if descending else 2, None))
            elif descending:
                parts.append((2, _Reversed(v)))
            else:
                parts.append((1, v))
        return tuple(parts)

    return key


@dataclass(frozen=True, slots=True)
class Aggregate:
    """One output aggregate and the shard columns it is combined from (see the module docstring)."""

    func: AggregateFunc
    name: str
    sum_column: str | None = None
    count_column: str | None = None

    @classmethod
    def count(cls, name: str) -> Aggregate:
        """``name`` is ``COUNT(...)`` on every shard; merged by adding."""
        return cls("count", name)

    @classmethod
    def sum(cls, name: str) -> Aggregate:
        """``name`` is ``SUM(...)`` on every shard; merged by adding the non-NULL sums."""
        return cls("sum", name)

    @classmethod
    def min(cls, name: str) -> Aggregate:
        """``name`` is ``MIN(...)`` on every shard; merged by taking the least non-NULL one."""
        return cls("min", name)

    @classmethod
    def max(cls, name: str) -> Aggregate:
        """``name`` is ``MAX(...)`` on every shard; merged by taking the greatest non-NULL one."""
        return cls("max", name)

    @classmethod
    def avg(cls, name: str, *, sum: str | None = None, count: str | None = None) -> Aggregate:
        """``AVG(x)`` as ``name``: shards return ``SUM(x)`` as ``sum`` and ``COUNT(x)`` as ``count``
        (default ``{name}_sum`` and ``{name}_count``); merged as total sum / total count."""
        return cls("avg", name, sum or f"{name}_sum", count or f"{name}_count")

    def shard_columns(self) -> tuple[str, ...]:
        """The columns each shard must return for this aggregate."""
        if self.func == "avg":
            assert self.sum_column is not None and self.count_column is not None
            return (self.sum_column, self.count_column)
        return (self.name,)


def _add(values: Iterable[Any]) -> Any:
    present = [v for v in values if v is not None]
    return sum(present[1:], present[0]) if present else None


def _extreme(values: Iterable[Any], pick: Callable[..., Any]) -> Any:
    present = [v for v in values if v is not None]
    return pick(present) if present else None


def _combine(agg: Aggregate, rows: Sequence[Row]) -> Any:
    if agg.func == "count":
        return sum(int(r[agg.name]) for r in rows)
    if agg.func == "sum":
        return _add(r[agg.name] for r in rows)
    if agg.func == "min":
        return _extreme((r[agg.name] for r in rows), min)
    if agg.func == "max":
        return _extreme((r[agg.name] for r in rows), max)
    sum_column, count_column = agg.shard_columns()
    total = _add(r[sum_column] for r in rows)
    count = sum(int(r[count_column]) for r in rows)
    if count == 0 or total is None:
        return None
    if isinstance(total, int):  # PostgreSQL: AVG of integers is numeric
        return Decimal(total) / count
    return total / count


def _mapping(row: Any) -> Row:
    mapping = getattr(row, "_mapping", None)
    if mapping is not None:
        return mapping  # type: ignore[no-any-return]
    if isinstance(row, Mapping):
        return row
    raise FanoutPlanError(
        f"row {row!r} is a {type(row).__name__}: give mappings (dicts, result.mappings()) or rows with ._mapping"
    )


class FanoutPlan:
    """How to merge one query's per-shard results: ORDER BY, LIMIT/OFFSET, aggregates, GROUP BY, output columns."""

    __slots__ = ("_key", "aggregates", "columns", "group_by", "limit", "offset", "order_by")

    def __init__(
        self,
        *,
        order_by: Sequence[OrderKey | str | Sequence[str]] = (),
        limit: int | None = None,
        offset: int = 0,
        aggregates: Sequence[Aggregate] = (),
        group_by: Sequence[str] = (),
        columns: Sequence[str] | None = None,
    ) -> None:
        if isinstance(order_by, str):
            order_by = [order_by]
        self.order_by: tuple[OrderKey, ...] = tuple(OrderKey.parse(t) for t in order_by)
        if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 0):
            raise FanoutPlanError(f"limit={limit!r}: give a non-negative int or None")
        if isinstance(offset, bool) or not isinstance(offset, int) or offset < 0:
            raise FanoutPlanError(f"offset={offset!r}: give a non-negative int")
        self.limit = limit
        self.offset = offset
        self.aggregates: tuple[Aggregate, ...] = tuple(aggregates)
        self.group_by: tuple[str, ...] = (group_by,) if isinstance(group_by, str) else tuple(group_by)
        if self.group_by and not self.aggregates:
            raise FanoutPlanError("group_by without aggregates: name the aggregates, or use DISTINCT-free rows instead")
        names = [a.name for a in self.aggregates]
        if len(set(names)) != len(names) or set(names) & set(self.group_by):
            raise FanoutPlanError(
                f"aggregate names {names} must be unique and differ from group_by {list(self.group_by)}"
            )
        if self.aggregates:
            known = set(names) | set(self.group_by)
            unknown = [k.column for k in self.order_by if k.column not in known]
            if unknown:
                raise FanoutPlanError(
                    f"order_by {unknown} with aggregates: order by group_by columns or aggregate names only"
                )
        self.columns: tuple[str, ...] | None = None if columns is None else tuple(columns)
        self._key = sort_key(self.order_by) if self.order_by else None

    @property
    def shard_limit(self) -> int | None:
        """The LIMIT each shard must apply (with no OFFSET): ``offset + limit``, or None for all rows."""
        if self.limit is None or self.aggregates:
            return None
        return self.offset + self.limit

    @property
    def shard_order_by_sql(self) -> str:
        """The ORDER BY list each shard must use, e.g. ``created_at DESC NULLS FIRST, id ASC NULLS LAST``."""
        return ", ".join(k.sql() for k in self.order_by)

    def merge(self, shard_rows: Iterable[Iterable[Any]]) -> list[dict[str, Any]]:
        """Combine every shard's rows (each already ordered by :attr:`order_by`, limited to :attr:`shard_limit`)."""
        per_shard = [[_mapping(r) for r in rows] for rows in shard_rows]
        try:
            if self.aggregates:
                merged: Iterator[Row] = iter(self._aggregate(per_shard))
            elif self._key is not None:
                merged = heapq.merge(*per_shard, key=self._key)
            else:
                merged = (r for rows in per_shard for r in rows)
            stop = None if self.limit is None else self.offset + self.limit
            window = islice(merged, self.offset, stop)
            if self.columns is None:
                return [dict(r) for r in window]
            return [{c: r[c] for c in self.columns} for r in window]
        except KeyError as exc:
            raise FanoutPlanError(
                f"a shard row has no column {exc.args[0]!r}: select it in the shard query (it can be dropped with columns=)"
            ) from exc

    def _aggregate(self, per_shard: list[list[Row]]) -> list[Row]:
        groups: dict[tuple[Any, ...], list[Row]] = {}
        for rows in per_shard:
            for row in rows:
                groups.setdefault(tuple(row[c] for c in self.group_by), []).append(row)
        if not self.group_by and not groups:
            groups[()] = []
        result: list[Row] = []
        for group, rows in groups.items():
            out: dict[str, Any] = dict(zip(self.group_by, group, strict=True))
            for agg in self.aggregates:
                out[agg.name] = _combine(agg, rows)
            result.append(out)
        if self._key is not None:
            result.sort(key=self._key)
        return result

    def __repr__(self) -> str:
        return (
            f"FanoutPlan(order_by={[k.sql() for k in self.order_by]}, limit={self.limit}, offset={self.offset}, "
            f"aggregates={list(self.aggregates)}, group_by={list(self.group_by)}, columns={self.columns})"
        )


__all__ = ["Aggregate", "AggregateFunc", "FanoutPlan", "OrderKey", "Row", "sort_key"]
