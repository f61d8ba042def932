"""SQL text -> what each query asks of each table -> candidate indexes. Pure: no I/O.

Theory of operation. A statement is parsed with PostgreSQL's own parser (``pglast``, libpg_query). Every
plain table reference (``FROM orders o``, joins included) gets a :class:`TableShape`: the columns its
WHERE and ON clauses compare with values (equality first, ranges after), with other tables (join keys),
the ORDER BY columns with direction and NULLS order when they all belong to it, every column the query
touches (for ``INCLUDE``), and the constant predicates (``status = 'pending'``, ``deleted_at IS NULL``)
that could make an index partial. :func:`candidates` expands a shape into btree indexes: single columns,
equality + range, equality + sort, join + equality, each also covering and partial. Unqualified columns
are resolved with a catalog (table -> column names) the shell reads first (:func:`tables_of` says which).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import pglast
from pglast import ast, enums
from pglast.stream import RawStream

from dbscale.advisor.model import IndexColumn, IndexSpec, TableShape, quote_ident
from dbscale.errors import AdvisorQueryError

MAX_KEY = 4
PARTIAL_MAX_DISTINCT = 20  # an equality constant makes a partial index only on a column with this few values
MAX_WIDTH = 8  # key + INCLUDE columns; wider covering indexes rarely pay for their size
_EQ_OPS = {"="}
_RANGE_OPS = {"<", ">", "<=", ">=", "~~", "~~*"}


def parse_one(sql: str) -> ast.Node:
    """The single statement in ``sql`` (raises :class:`AdvisorQueryError` if it does not parse)."""
    try:
        stmts = pglast.parse_sql(sql)
    except pglast.parser.ParseError as exc:
        raise AdvisorQueryError(f"does not parse: {exc}; fix the SQL or drop it from the workload") from None
    if len(stmts) != 1:
        raise AdvisorQueryError(f"expected one statement, got {len(stmts)}; pass each query separately")
    stmt = stmts[0].stmt
    if stmt is None:
        raise AdvisorQueryError("empty statement; pass a query")
    return stmt


def split_statements(text: str) -> list[str]:
    """The statements of a SQL file, each as written (comments and blank ones dropped)."""
    try:
        return [s.strip() for s in pglast.split(text) if s.strip()]
    except pglast.parser.ParseError:
        return [s.strip() for s in text.split(";") if s.strip() and not s.strip().startswith("--")]


def _walk(node: Any) -> Iterable[Any]:
    if isinstance(node, tuple | list):
        for item in node:
            yield from _walk(item)
    elif isinstance(node, ast.Node):
        yield node
        for name in node:
            yield from _walk(getattr(node, name))


def _relname(rv: ast.RangeVar) -> str:
    return f"{rv.schemaname}.{rv.relname}" if rv.schemaname else str(rv.relname)


def tables_of(sql: str) -> list[str]:
    """Every table the statement references (CTE names excluded), in order of appearance."""
    stmt = parse_one(sql)
    ctes = {c.ctename for c in _walk(stmt) if isinstance(c, ast.CommonTableExpr)}
    seen: list[str] = []
    for node in _walk(stmt):
        if isinstance(node, ast.RangeVar) and node.relname not in ctes and _relname(node) not in seen:
            seen.append(_relname(node))
    return seen


@dataclass
class _Acc:
    table: str
    eq: list[str]
    ranges: list[str]
    joins: list[str]
    order: list[IndexColumn]
    columns: list[str]
    constants: list[tuple[str, str]]

    @staticmethod
    def add(seq: list[Any], item: Any) -> None:
        if item not in seq:
            seq.append(item)


class _Resolver:
    """Maps column references of one SELECT to (alias, column) using its FROM list and the catalog."""

    def __init__(self, ranges: Sequence[ast.RangeVar], catalog: Mapping[str, Sequence[str]]) -> None:
        self.by_alias: dict[str, str] = {}
        for rv in ranges:
            table = _relname(rv)
            alias = rv.alias.aliasname if rv.alias else rv.relname
            self.by_alias[str(alias)] = table
        self.catalog = catalog

    def resolve(self, node: Any) -> tuple[str, str] | None:
        """(alias, column) of a plain column reference, ``None`` for anything else or an ambiguous name."""
        if not isinstance(node, ast.ColumnRef) or not all(isinstance(f, ast.String) for f in node.fields or ()):
            return None
        names = [str(f.sval) for f in node.fields or ()]
        if len(names) >= 2:
            alias = names[-2]
            return (alias, names[-1]) if alias in self.by_alias else None
        owners = [a for a, t in self.by_alias.items() if names[0] in self.catalog.get(t, ())]
        return (owners[0], names[0]) if len(owners) == 1 else None


def _conjuncts(node: Any) -> list[Any]:
    if node is None:
        return []
    if isinstance(node, ast.BoolExpr) and node.boolop == enums.BoolExprType.AND_EXPR:
        return [c for arg in node.args or () for c in _conjuncts(arg)]
    return [node]


def _is_value(node: Any, resolver: _Resolver) -> bool:
    """True when ``node`` mentions no column of this query level (a constant, parameter or expression of them)."""
    return not any(isinstance(n, ast.ColumnRef) and resolver.resolve(n) for n in _walk(node))


def _is_constant(node: Any) -> bool:
    """A literal (possibly cast): usable in a partial index predicate, unlike ``$1`` or ``now()``."""
    if isinstance(node, ast.TypeCast):
        return _is_constant(node.arg)
    return isinstance(node, ast.A_Const)


def _from_ranges(stmt: ast.SelectStmt) -> list[ast.RangeVar]:
    out: list[ast.RangeVar] = []

    def visit(item: Any) -> None:
        if isinstance(item, ast.RangeVar):
            out.append(item)
        elif isinstance(item, ast.JoinExpr):
            visit(item.larg)
            visit(item.rarg)

    for item in stmt.fromClause or ():
        visit(item)
    return out


def _join_quals(stmt: ast.SelectStmt) -> list[Any]:
    quals: list[Any] = []
    for node in _walk(stmt.fromClause or ()):
        if isinstance(node, ast.JoinExpr) and node.quals is not None:
            quals.extend(_conjuncts(node.quals))
    return quals


def _selects(stmt: ast.Node) -> list[ast.SelectStmt]:
    """Every SELECT in the statement (CTEs, subqueries, set operations), outermost first."""
    return [n for n in _walk(stmt) if isinstance(n, ast.SelectStmt) and n.fromClause]


def shapes(sql: str, catalog: Mapping[str, Sequence[str]]) -> list[TableShape]:
    """What ``sql`` asks of each table it reads, given ``catalog`` (table -> its column names)."""
    stmt = parse_one(sql)
    if isinstance(stmt, ast.UpdateStmt | ast.DeleteStmt):
        sel = ast.SelectStmt(fromClause=(stmt.relation,), whereClause=stmt.whereClause)
        return _shapes_of_select(sel, catalog)
    result: list[TableShape] = []
    for sel in _selects(stmt):
        result.extend(_shapes_of_select(sel, catalog))
    return result


def _shapes_of_select(sel: ast.SelectStmt, catalog: Mapping[str, Sequence[str]]) -> list[TableShape]:
    ranges = _from_ranges(sel)
    res = _Resolver(ranges, catalog)
    accs = {alias: _Acc(table, [], [], [], [], [], []) for alias, table in res.by_alias.items()}

    for node in _walk((sel.targetList, sel.whereClause, sel.sortClause, sel.groupClause, sel.fromClause)):
        ref = res.resolve(node)
        if ref:
            _Acc.add(accs[ref[0]].columns, ref[1])
    for node in _walk(sel.targetList or ()):
        fields = node.fields or () if isinstance(node, ast.ColumnRef) else ()
        if fields and isinstance(fields[-1], ast.A_Star):
            owner = fields[0].sval if len(fields) == 2 else None
            for alias, acc in accs.items():
                if owner in (None, alias):
                    for col in catalog.get(acc.table, ()):
                        _Acc.add(acc.columns, col)

    for cond in _conjuncts(sel.whereClause) + _join_quals(sel):
        _classify(cond, res, accs)

    if sel.sortClause:
        refs = [res.resolve(s.node) for s in sel.sortClause]
        if all(refs) and len({r[0] for r in refs if r}) == 1:
            for sort, ref in zip(sel.sortClause, refs, strict=True):
                assert ref is not None
                desc = sort.sortby_dir == enums.SortByDir.SORTBY_DESC
                nulls = {
                    enums.SortByNulls.SORTBY_NULLS_FIRST: True,
                    enums.SortByNulls.SORTBY_NULLS_LAST: False,
                }.get(sort.sortby_nulls)
                _Acc.add(accs[ref[0]].order, IndexColumn(ref[1], desc, nulls))

    return [
        TableShape(
            a.table,
            tuple(a.eq),
            tuple(c for c in a.ranges if c not in a.eq),
            tuple(a.joins),
            tuple(a.order),
            tuple(a.columns),
            tuple(a.constants),
            len(catalog.get(a.table, ())),
        )
        for a in accs.values()
    ]


def _classify(cond: Any, res: _Resolver, accs: dict[str, _Acc]) -> None:
    if isinstance(cond, ast.NullTest):
        ref = res.resolve(cond.arg)
        if ref:
            is_null = cond.nulltesttype == enums.NullTestType.IS_NULL
            _Acc.add(accs[ref[0]].constants, (ref[1], f"{quote_ident(ref[1])} IS {'' if is_null else 'NOT '}NULL"))
            if is_null:
                _Acc.add(accs[ref[0]].eq, ref[1])
        return
    if not isinstance(cond, ast.A_Expr) or not cond.name:
        return
    op = cond.name[-1].sval
    kind = cond.kind
    left, right = res.resolve(cond.lexpr), res.resolve(cond.rexpr)
    if kind == enums.A_Expr_Kind.AEXPR_OP and op in _EQ_OPS and left and right and left[0] != right[0]:
        _Acc.add(accs[left[0]].joins, left[1])
        _Acc.add(accs[right[0]].joins, right[1])
        return
    if left is None and right is not None and kind == enums.A_Expr_Kind.AEXPR_OP:
        flip = {"<": ">", ">": "<", "<=": ">=", ">=": "<="}
        cond = ast.A_Expr(kind=kind, name=(ast.String(sval=flip.get(op, op)),), lexpr=cond.rexpr, rexpr=cond.lexpr)  # type: ignore[arg-type]
        op, left = flip.get(op, op), right
    if left is None or not _is_value(cond.rexpr, res):
        return
    acc = accs[left[0]]
    if kind == enums.A_Expr_Kind.AEXPR_OP and op in _EQ_OPS:
        _Acc.add(acc.eq, left[1])
        if _is_constant(cond.rexpr):
            _Acc.add(acc.constants, (left[1], f"{quote_ident(left[1])} = {RawStream()(cond.rexpr)}"))
    elif kind == enums.A_Expr_Kind.AEXPR_IN and op == "=":
        _Acc.add(acc.eq, left[1])
    elif (kind == enums.A_Expr_Kind.AEXPR_OP and op in _RANGE_OPS) or kind in (
        enums.A_Expr_Kind.AEXPR_BETWEEN,
        enums.A_Expr_Kind.AEXPR_LIKE,
    ):
        _Acc.add(acc.ranges, left[1])


def _cols(names: Iterable[str]) -> tuple[IndexColumn, ...]:
    return tuple(IndexColumn(n) for n in names)


def candidates(shape: TableShape) -> list[IndexSpec]:
    """Candidate btree indexes for one table shape: plain, covering and partial variants, no duplicates."""
    eq = list(shape.eq)
    keys: list[tuple[IndexColumn, ...]] = []

    def key(cols: Sequence[IndexColumn]) -> None:
        seen: list[IndexColumn] = []
        for c in cols:
            if c.name not in [s.name for s in seen]:
                seen.append(c)
        k = tuple(seen[:MAX_KEY])
        if k and k not in keys:
            keys.append(k)

    for name in [*eq, *shape.ranges, *shape.joins]:
        key(_cols([name]))
    if shape.order:
        key(shape.order)
    if eq:
        key(_cols(eq))
        for r in shape.ranges:
            key(_cols([*eq, r]))
        if shape.order:
            key([*_cols(eq), *shape.order])
    for j in shape.joins:
        key(_cols([j, *eq]))
        for r in shape.ranges:
            key(_cols([j, *eq, r]))
        if shape.order:
            key([*_cols([j, *eq]), *shape.order])
    if shape.order and shape.ranges and shape.order[0].name in shape.ranges:
        key([*_cols(eq), *shape.order])

    out: list[IndexSpec] = []

    def emit(spec: IndexSpec) -> None:
        whole_table = shape.table_width and spec.include and spec.width >= shape.table_width
        if spec not in out and spec.columns and not whole_table:
            out.append(spec)

    for k in keys:
        names = {c.name for c in k}
        rest = tuple(c for c in shape.columns if c not in names)
        emit(IndexSpec(shape.table, k))
        if rest and len(k) + len(rest) <= MAX_WIDTH:
            emit(IndexSpec(shape.table, k, rest))
        for col, pred in shape.constants:
            # the predicate fixes ``col``: a partial index needs it neither as a key nor as INCLUDE
            pk = tuple(c for c in k if c.name != col)
            if not pk:
                continue
            prest = tuple(c for c in rest if c != col)
            emit(IndexSpec(shape.table, pk, where=pred))
            if prest and len(pk) + len(prest) <= MAX_WIDTH:
                emit(IndexSpec(shape.table, pk, prest, pred))
    return out


def parse_index_def(definition: str) -> IndexSpec | None:
    """The :class:`IndexSpec` of a ``pg_get_indexdef`` text; ``None`` for non-btree or expression indexes."""
    try:
        stmt = parse_one(definition)
    except AdvisorQueryError:
        return None
    if not isinstance(stmt, ast.IndexStmt) or (stmt.accessMethod or "btree") != "btree":
        return None
    cols: list[IndexColumn] = []
    for elem in stmt.indexParams or ():
        if elem.name is None:
            return None
        nulls = {enums.SortByNulls.SORTBY_NULLS_FIRST: True, enums.SortByNulls.SORTBY_NULLS_LAST: False}.get(
            elem.nulls_ordering
        )
        cols.append(IndexColumn(elem.name, elem.ordering == enums.SortByDir.SORTBY_DESC, nulls))
    include = tuple(e.name for e in stmt.indexIncludingParams or () if e.name)
    where = RawStream()(stmt.whereClause) if stmt.whereClause is not None else None
    table = str(stmt.relation.relname) if stmt.relation else ""
    return IndexSpec(table, tuple(cols), include, where)


def read_only(sql: str) -> bool:
    """Whether running ``sql`` (as ``--apply``'s EXPLAIN ANALYZE does) changes nothing: a plain SELECT, no
    data-modifying CTE, no row locks."""
    try:
        stmt = parse_one(sql)
    except AdvisorQueryError:
        return False
    writes = (ast.InsertStmt, ast.UpdateStmt, ast.DeleteStmt, ast.MergeStmt, ast.LockingClause, ast.IntoClause)
    return isinstance(stmt, ast.SelectStmt) and not any(isinstance(n, writes) for n in _walk(stmt))


def param_slots(sql: str, catalog: Mapping[str, Sequence[str]]) -> dict[int, tuple[str, str] | None]:
    """For each ``$n`` of a normalized statement: the (table, column) it is compared with, or ``None``."""
    stmt = parse_one(sql)
    slots: dict[int, tuple[str, str] | None] = {
        int(n.number or 0): None for n in _walk(stmt) if isinstance(n, ast.ParamRef)
    }
    for sel in _selects(stmt):
        res = _Resolver(_from_ranges(sel), catalog)
        for node in _walk((sel.whereClause, sel.fromClause)):
            if isinstance(node, ast.A_Expr):
                sides = [(node.lexpr, node.rexpr), (node.rexpr, node.lexpr)]
                for col, other in sides:
                    ref = res.resolve(col)
                    values = other if isinstance(other, tuple | list) else (other,)
                    for v in values:
                        if isinstance(v, ast.TypeCast):
                            v = v.arg
                        if ref and isinstance(v, ast.ParamRef):
                            slots[int(v.number or 0)] = (res.by_alias[ref[0]], ref[1])
    return slots


def quote_literal(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


_PARAM = re.compile(r"\$(\d+)\b")


def fill_params(sql: str, values: Mapping[int, str | None]) -> str:
    """``sql`` with each ``$n`` replaced by its value as a quoted literal (``'1'`` when unknown)."""

    def sub(m: re.Match[str]) -> str:
        value = values.get(int(m.group(1)))
        return quote_literal("1" if value is None else value)

    return _PARAM.sub(sub, sql)
