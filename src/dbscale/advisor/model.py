"""Values the advisor passes around: index specs, per-query shapes, findings and the final advice."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

_PLAIN = re.compile(r"^[a-z_][a-z0-9_$]*$")


def quote_ident(name: str) -> str:
    """``name`` as a PostgreSQL identifier: bare when lowercase and plain, double-quoted otherwise."""
    return name if _PLAIN.match(name) else '"' + name.replace('"', '""') + '"'


@dataclass(frozen=True, order=True)
class IndexColumn:
    """One key column of a btree index, with its sort direction and NULLS order (``None``: the default)."""

    name: str
    desc: bool = False
    nulls_first: bool | None = None

    def sql(self) -> str:
        text = quote_ident(self.name) + (" DESC" if self.desc else "")
        if self.nulls_first is not None and self.nulls_first != self.desc:
            text += " NULLS FIRST" if self.nulls_first else " NULLS LAST"
        return text

    def normalized(self) -> IndexColumn:
        """The same column with the default NULLS order spelled out (``DESC`` implies ``NULLS FIRST``)."""
        return IndexColumn(self.name, self.desc, self.desc if self.nulls_first is None else self.nulls_first)


@dataclass(frozen=True, order=True)
class IndexSpec:
    """A btree index: key columns (up to 4), ``INCLUDE`` columns and an optional partial predicate."""

    table: str
    columns: tuple[IndexColumn, ...]
    include: tuple[str, ...] = ()
    where: str | None = None

    @property
    def name(self) -> str:
        parts = [self.table.rsplit(".", 1)[-1], *(c.name + ("_desc" if c.desc else "") for c in self.columns)]
        if self.include:
            parts.append("incl")
        if self.where:
            parts.append("part")
        base = "idx_" + "_".join(re.sub(r"\W", "", p) for p in parts)
        return base[:63]

    def ddl(self, *, concurrently: bool = True, name: str | None = None) -> str:
        """The ``CREATE INDEX`` statement (``CONCURRENTLY`` unless told otherwise)."""
        head = "CREATE INDEX CONCURRENTLY" if concurrently else "CREATE INDEX"
        idx = f" {quote_ident(name or self.name)}" if name != "" else ""
        table = ".".join(quote_ident(p) for p in self.table.split("."))
        text = f"{head}{idx} ON {table} ({', '.join(c.sql() for c in self.columns)})"
        if self.include:
            text += f" INCLUDE ({', '.join(quote_ident(c) for c in self.include)})"
        if self.where:
            text += f" WHERE {self.where}"
        return text

    @property
    def width(self) -> int:
        return len(self.columns) + len(self.include)

    def as_dict(self) -> dict[str, Any]:
        return {
            "table": self.table,
            "columns": [{"name": c.name, "desc": c.desc, "nulls_first": c.nulls_first} for c in self.columns],
            "include": list(self.include),
            "where": self.where,
            "sql": self.ddl(),
        }


@dataclass(frozen=True)
class TableShape:
    """What one query asks of one table: the raw material of its candidate indexes."""

    table: str
    eq: tuple[str, ...] = ()
    ranges: tuple[str, ...] = ()
    joins: tuple[str, ...] = ()
    order: tuple[IndexColumn, ...] = ()
    columns: tuple[str, ...] = ()
    constants: tuple[tuple[str, str], ...] = ()  # (column, predicate SQL) usable as a partial index's WHERE
    table_width: int = 0  # columns the table has (0: unknown); an index carrying them all is a copy of the table


@dataclass(frozen=True)
class Query:
    """One workload statement: its text, how often it ran, and its mean execution time when known."""

    sql: str
    calls: int = 1
    mean_ms: float | None = None
    source: str = "query"


@dataclass
class Evaluation:
    """Estimated plan cost of one query without and with one candidate index."""

    query: Query
    before: float
    after: float

    @property
    def gain(self) -> float:
        return 0.0 if self.before <= 0 else 1.0 - self.after / self.before

    @property
    def saved(self) -> float:
        """calls × estimated time saved (ms when the mean time is known, else planner cost units)."""
        per_call = self.query.mean_ms * self.gain if self.query.mean_ms is not None else self.before - self.after
        return self.query.calls * max(0.0, per_call)


@dataclass
class Recommendation:
    """A chosen index with the queries it serves and their estimated costs before and after."""

    index: IndexSpec
    serves: list[Evaluation]
    saved: float

    def as_dict(self) -> dict[str, Any]:
        return {
            **self.index.as_dict(),
            "saved": self.saved,
            "queries": [
                {"sql": e.query.sql, "calls": e.query.calls, "cost_before": e.before, "cost_after": e.after}
                for e in self.serves
            ],
        }


@dataclass(frozen=True)
class ExistingIndex:
    """An index already in the database, as ``pg_get_indexdef`` spells it, with its usage counter."""

    name: str
    table: str
    definition: str
    scans: int = 0
    unique: bool = False
    size_bytes: int = 0


@dataclass
class Finding:
    """Something about an existing index or a table worth a line in the report."""

    kind: str  # "unused" | "duplicate" | "write-heavy" | "error" | "served"
    subject: str
    detail: str

    def as_dict(self) -> dict[str, str]:
        return {"kind": self.kind, "subject": self.subject, "detail": self.detail}


@dataclass
class Measurement:
    """``EXPLAIN (ANALYZE, BUFFERS)`` of one query before and after ``--apply`` created its indexes."""

    sql: str
    before_ms: float
    after_ms: float
    before_plan: str
    after_plan: str

    @property
    def speedup(self) -> float:
        return self.before_ms / self.after_ms if self.after_ms > 0 else float("inf")


@dataclass
class Advice:
    """The advisor's answer for one workload."""

    indexes: list[Recommendation] = field(default_factory=list)
    unused: list[Finding] = field(default_factory=list)
    duplicate: list[Finding] = field(default_factory=list)
    write_heavy: list[Finding] = field(default_factory=list)
    errors: list[Finding] = field(default_factory=list)
    served: list[Finding] = field(default_factory=list)
    measurements: list[Measurement] = field(default_factory=list)

    def sql(self) -> str:
        """A SQL file creating every recommended index."""
        lines = ["-- dbscale advise: recommended indexes (run outside a transaction)"]
        for rec in self.indexes:
            lines.extend(f"-- serves: {' '.join(e.query.sql.split())[:150]}" for e in rec.serves)
            lines.append(rec.index.ddl() + ";")
        return "\n".join(lines) + "\n"

    def as_dict(self) -> dict[str, Any]:
        return {
            "indexes": [r.as_dict() for r in self.indexes],
            "unused": [f.as_dict() for f in self.unused],
            "duplicate": [f.as_dict() for f in self.duplicate],
            "write_heavy": [f.as_dict() for f in self.write_heavy],
            "errors": [f.as_dict() for f in self.errors],
            "served": [f.as_dict() for f in self.served],
            "measurements": [
                {"sql": m.sql, "before_ms": m.before_ms, "after_ms": m.after_ms, "speedup": m.speedup}
                for m in self.measurements
            ],
        }
