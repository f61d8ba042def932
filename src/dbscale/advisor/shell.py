# auto-generated from aio.py by scripts/unasync.py — do not edit
"""The synchronous index advisor shell: reads the workload and catalog, asks HypoPG, applies and measures.

Everything it decides comes from the pure modules (:mod:`dbscale.advisor.candidates` and
:mod:`dbscale.advisor.select`); this module only runs SQL. Hypothetical indexes live in one backend,
so the whole evaluation runs on one connection: ``cluster.write(group)`` (the group's primary, one
transaction, rolled back at the end), each query inside a SAVEPOINT so a bad query is reported and the
rest is advised. ``apply`` creates the chosen indexes ``CONCURRENTLY`` on an autocommit connection to
the primary and measures each served query with ``EXPLAIN (ANALYZE, BUFFERS)`` before and after.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from sqlalchemy import text
from sqlalchemy.exc import DBAPIError

from dbscale.advisor import candidates as cand
from dbscale.advisor import select
from dbscale.advisor.model import (
    Advice,
    Evaluation,
    ExistingIndex,
    Finding,
    IndexSpec,
    Measurement,
    Query,
    Recommendation,
    quote_ident,
)
from dbscale.cluster import Cluster
from dbscale.errors import AdvisorQueryError, MissingExtensionError
from dbscale.topology import primary_name

if TYPE_CHECKING:
    from sqlalchemy import Connection

HYPOPG_HELP = (
    "HypoPG is not available in database {db}: install it on the server (Debian/Ubuntu: "
    "`apt-get install postgresql-15-hypopg`, or build it from https://github.com/HypoPG/hypopg), then run "
    "`CREATE EXTENSION hypopg;` in that database (`dbscale up` does both on its local topology)"
)
PGSS_HELP = (
    "pg_stat_statements is not available in database {db}: set `shared_preload_libraries = 'pg_stat_statements'` "
    "in postgresql.conf, restart PostgreSQL, then run `CREATE EXTENSION pg_stat_statements;` in that database "
    "(`dbscale up` does both on its local topology); or pass the queries with --query / --file instead"
)
STATS_SQL = """
SELECT query, calls, mean_exec_time FROM pg_stat_statements
WHERE dbid = (SELECT oid FROM pg_database WHERE datname = current_database())
  AND query ~* '^\\s*(select|with|update|delete)\\M'
  AND query !~* '(pg_catalog|pg_stat|information_schema|hypopg|pg_class|pg_index)'
ORDER BY total_exec_time DESC LIMIT :limit
"""
EXISTING_SQL = """
SELECT i.indexrelid::regclass::text, c.relname, pg_get_indexdef(i.indexrelid), coalesce(s.idx_scan, 0),
       i.indisunique OR i.indisprimary, pg_relation_size(i.indexrelid)
FROM pg_index i JOIN pg_class c ON c.oid = i.indrelid
JOIN pg_namespace n ON n.oid = c.relnamespace
LEFT JOIN pg_stat_user_indexes s ON s.indexrelid = i.indexrelid
WHERE n.nspname NOT IN ('pg_catalog', 'information_schema', 'pg_toast')
ORDER BY 1
"""


def _scalar(conn: Connection, sql: str, **params: Any) -> Any:
    return (conn.execute(text(sql), params)).scalar()


def _explain(conn: Connection, sql: str, options: str = "FORMAT JSON") -> Any:
    plan = _scalar(conn, f"EXPLAIN ({options}) {sql}")
    return json.loads(plan) if isinstance(plan, str) else plan


def _require(conn: Connection, extension: str, help_text: str) -> None:
    if not _scalar(conn, "SELECT 1 FROM pg_extension WHERE extname = :e", e=extension):
        db = _scalar(conn, "SELECT current_database()")
        raise MissingExtensionError(help_text.format(db=db))


def _workload(conn: Connection, stats_limit: int) -> list[Query]:
    _require(conn, "pg_stat_statements", PGSS_HELP)
    rows = (conn.execute(text(STATS_SQL), {"limit": stats_limit})).all()
    return [Query(str(r[0]), int(r[1]), float(r[2]), "pg_stat_statements") for r in rows]


def _catalog(conn: Connection, tables: Sequence[str]) -> dict[str, list[str]]:
    catalog: dict[str, list[str]] = {}
    for table in tables:
        rows = (
            conn.execute(
                text(
                    "SELECT attname FROM pg_attribute WHERE attrelid = to_regclass(:t) AND attnum > 0 "
                    "AND NOT attisdropped ORDER BY attnum"
                ),
                {"t": table},
            )
        ).all()
        if not rows:
            raise AdvisorQueryError(f"table {table} does not exist (or has no columns); check the name and search_path")
        catalog[table] = [str(r[0]) for r in rows]
    return catalog


def _param_value(conn: Connection, table: str, column: str) -> str | None:
    value = _scalar(
        conn,
        "SELECT (most_common_vals::text::text[])[1] FROM pg_stats WHERE attname = :c "
        "AND (tablename = :t OR schemaname || '.' || tablename = :t)",
        t=table,
        c=column,
    )
    if value is None:
        col = quote_ident(column)
        tbl = ".".join(quote_ident(p) for p in table.split("."))
        value = _scalar(conn, f"SELECT {col}::text FROM {tbl} WHERE {col} IS NOT NULL LIMIT 1")
    return None if value is None else str(value)


def _few_values(conn: Connection, table: str, column: str) -> bool:
    """Whether ``column`` has few distinct values (a partial index on one of them is worth considering)."""
    n = _scalar(
        conn,
        "SELECT n_distinct FROM pg_stats WHERE attname = :c AND (tablename = :t OR schemaname || '.' || tablename = :t)",
        t=table,
        c=column,
    )
    return n is not None and 0 < float(n) <= cand.PARTIAL_MAX_DISTINCT


def _prepare(conn: Connection, query: Query) -> tuple[Query, list[IndexSpec], set[str]]:
    """The plannable query (parameters filled), its candidates, and the tables it reads."""
    sql = query.sql
    if "$" in sql:
        try:
            tables = cand.tables_of(sql)
            catalog = _catalog(conn, tables)
            slots = cand.param_slots(sql, catalog)
        except AdvisorQueryError:
            slots = {}  # e.g. ``interval $1`` does not parse until filled
        values = {n: (_param_value(conn, *slot) if slot else None) for n, slot in slots.items()}
        sql = cand.fill_params(sql, values)
    tables = cand.tables_of(sql)
    catalog = _catalog(conn, tables)
    specs: list[IndexSpec] = []
    for shape in cand.shapes(sql, catalog):
        constants = []
        for column, predicate in shape.constants:
            if " IS " in predicate or _few_values(conn, shape.table, column):
                constants.append((column, predicate))
        shape = replace(shape, constants=tuple(constants))
        specs.extend(s for s in cand.candidates(shape) if s not in specs)
    return Query(sql, query.calls, query.mean_ms, query.source), specs, {t.rsplit(".", 1)[-1] for t in tables}


def _evaluate(
    conn: Connection,
    specs: Sequence[IndexSpec],
    chosen: Sequence[IndexSpec],
    prepared: Sequence[tuple[Query, set[str], Any]],
) -> tuple[dict[IndexSpec, list[Evaluation]], dict[IndexSpec, int]]:
    """Each candidate's estimated cost for each query on its table, with the ``chosen`` indexes in place."""
    _scalar(conn, "SELECT hypopg_reset()")
    for spec in chosen:
        _hypothetical(conn, spec)
    evaluations: dict[IndexSpec, list[Evaluation]] = {}
    sizes: dict[IndexSpec, int] = {}
    for spec in specs:
        oid, name, sizes[spec] = _hypothetical(conn, spec)
        for q, tables, base in prepared:
            if spec.table.rsplit(".", 1)[-1] in tables:
                plan = _explain(conn, q.sql)
                if name in select.indexes_used(plan):
                    evaluations.setdefault(spec, []).append(
                        Evaluation(q, select.total_cost(base), select.total_cost(plan))
                    )
        _scalar(conn, "SELECT hypopg_drop_index(:oid)", oid=oid)
    return evaluations, sizes


def _hypothetical(conn: Connection, spec: IndexSpec) -> tuple[int, str, int]:
    row = (
        conn.execute(
            text("SELECT indexrelid, indexname, hypopg_relation_size(indexrelid) FROM hypopg_create_index(:d)"),
            {"d": spec.ddl(concurrently=False, name="")},
        )
    ).one()
    return int(row[0]), str(row[1]), int(row[2])


def _existing(conn: Connection) -> list[ExistingIndex]:
    rows = (conn.execute(text(EXISTING_SQL))).all()
    return [ExistingIndex(str(r[0]), str(r[1]), str(r[2]), int(r[3]), bool(r[4]), int(r[5])) for r in rows]


def _table_writes(conn: Connection) -> dict[str, int]:
    rows = (
        conn.execute(
            text(
                "SELECT relname, n_tup_upd - n_tup_hot_upd + greatest(0, n_tup_ins - n_live_tup) FROM pg_stat_user_tables"
            )
        )
    ).all()
    return {str(r[0]): int(r[1]) for r in rows}


def _as_queries(queries: Iterable[str | tuple[str, int]] | None) -> list[Query]:
    out: list[Query] = []
    for q in queries or ():
        out.append(Query(q) if isinstance(q, str) else Query(q[0], int(q[1])))
    return out


def advise(
    cluster: Cluster,
    queries: Iterable[str | tuple[str, int]] | None = None,
    *,
    from_stats: bool = False,
    group: str | None = None,
    min_gain: float = 0.3,
    apply: bool = False,
    stats_limit: int = 50,
    write_cost: float = select.WRITE_COST_PER_ROW,
) -> Advice:
    """Advise indexes for ``queries`` (SQL text, or ``(sql, calls)``) and/or the ``pg_stat_statements`` workload.

    Runs on the primary of ``group``; needs HypoPG (and pg_stat_statements with ``from_stats``). With
    ``apply`` the chosen indexes are created ``CONCURRENTLY`` and each served query is measured with
    ``EXPLAIN (ANALYZE, BUFFERS)`` before and after (``Advice.measurements``).
    """
    advice = Advice()
    workload = _as_queries(queries)
    with cluster.write(group) as conn:
        _require(conn, "hypopg", HYPOPG_HELP)
        if from_stats:
            stats = _workload(conn, stats_limit)
            workload.extend(stats)
        existing = _existing(conn)
        existing_specs = [s for s in (cand.parse_index_def(e.definition) for e in existing) if s]
        advice.unused = select.unused(existing)
        advice.duplicate = select.redundant(existing)

        prepared: list[tuple[Query, set[str], Any]] = []
        all_specs: list[IndexSpec] = []
        for query in workload:
            try:
                with conn.begin_nested():
                    _scalar(conn, "SELECT hypopg_reset()")
                    q, specs, tables = _prepare(conn, query)
                    base = _explain(conn, q.sql)
            except (AdvisorQueryError, DBAPIError) as exc:
                reason = str(getattr(exc, "orig", None) or exc).strip().splitlines()[0]
                advice.errors.append(Finding("error", query.sql, reason))
                continue
            prepared.append((q, tables, base))
            all_specs.extend(
                s
                for s in specs
                if s not in all_specs and not any(select.covers(e, replace(s, include=())) for e in existing_specs)
            )

        writes = _table_writes(conn)
        current = {q: select.total_cost(base) for q, _tables, base in prepared}
        chosen: list[Recommendation] = []
        remaining = list(all_specs)
        evaluations: dict[IndexSpec, list[Evaluation]] | None = None
        while remaining:
            if evaluations is None:  # re-measure every candidate with the indexes picked so far in place
                evaluations, sizes = _evaluate(conn, remaining, [r.index for r in chosen], prepared)
            rec = select.pick(evaluations, current, min_gain=min_gain, sizes=sizes)
            if rec is None:
                break
            remaining.remove(rec.index)
            del evaluations[rec.index]
            finding = select.write_heavy(rec, current, writes, write_cost)
            if finding is not None:
                if all(f.subject != finding.subject for f in advice.write_heavy):
                    advice.write_heavy.append(finding)
                continue
            for ev in rec.serves:
                current[ev.query] = ev.after
            chosen.append(rec)
            evaluations = None
        _scalar(conn, "SELECT hypopg_reset()")

        # the chosen set together: keep what the planner still uses, with the costs it then estimates
        names = {rec.index: _hypothetical(conn, rec.index)[1] for rec in chosen}
        used: dict[str, float] = {}
        after: dict[str, float] = {}
        for q, _tables, _base in prepared:
            plan = _explain(conn, q.sql)
            after[q.sql] = select.total_cost(plan)
            for n in select.indexes_used(plan):
                used[n] = 1.0
        _scalar(conn, "SELECT hypopg_reset()")
        for rec in chosen:
            if names[rec.index] in used:
                rec.serves = [Evaluation(e.query, e.before, after[e.query.sql]) for e in rec.serves]
                advice.indexes.append(rec)
        served = {e.query.sql for rec in advice.indexes for e in rec.serves}
        for q, _tables, base in prepared:
            idx = select.indexes_used(base)
            if q.sql not in served and idx:
                advice.served.append(Finding("served", q.sql, f"already served by {', '.join(idx)}"))

    if apply and advice.indexes:
        advice.measurements = _apply(cluster, advice, group)
    return advice


def _timed(conn: Connection, sql: str, runs: int = 3) -> tuple[float, str]:
    """Best of ``runs`` executions (after one warm-up) of ``EXPLAIN (ANALYZE, BUFFERS)``, and its text plan."""
    _explain(conn, sql, "ANALYZE, FORMAT JSON")
    times = []
    for _ in range(runs):
        plan = _explain(conn, sql, "ANALYZE, BUFFERS, FORMAT JSON")
        times.append(select.execution_ms(plan))
    best = min(times)
    rows = (conn.execute(text(f"EXPLAIN (ANALYZE, BUFFERS) {sql}"))).all()
    return best, "\n".join(str(r[0]) for r in rows)


def _apply(cluster: Cluster, advice: Advice, group: str | None) -> list[Measurement]:
    engine = cluster.engine(primary_name(group or cluster.default_group()))
    # EXPLAIN ANALYZE runs the statement: measure only those that change nothing
    sqls = [s for s in dict.fromkeys(e.query.sql for rec in advice.indexes for e in rec.serves) if cand.read_only(s)]
    with engine.connect() as raw:
        conn = raw.execution_options(isolation_level="AUTOCOMMIT")
        before = {sql: _timed(conn, sql) for sql in sqls}
        tables: list[str] = []
        for rec in advice.indexes:
            conn.execute(text(rec.index.ddl()))
            if rec.index.table not in tables:
                tables.append(rec.index.table)
        for table in tables:
            conn.execute(text(f"ANALYZE {'.'.join(quote_ident(p) for p in table.split('.'))}"))
        measurements = []
        for sql in sqls:
            after_ms, after_plan = _timed(conn, sql)
            measurements.append(Measurement(sql, before[sql][0], after_ms, before[sql][1], after_plan))
    return measurements
