"""EXPLAIN JSON -> costs, and per-query evaluations -> one index set for the whole workload. Pure: no I/O.

Selection is greedy over the workload (the classic approach of AutoAdmin-style advisors): each round
picks the candidate whose hypothetical use saves the most ``calls × estimated time`` over the queries
it serves, counting for each query only what it saves beyond the indexes already picked, and only
where the query's estimated cost falls by at least ``min_gain`` (from its cost without any
candidate, and again from its cost with the indexes picked so far, by at least ``TIE_TOLERANCE``
of its own cost). Candidates within
``TIE_TOLERANCE`` of the best are treated as equal and the smallest (then narrowest) wins, so a
partial or narrower index is preferred when it is as good. An index on a table whose row writes cost
more (``writes × write_cost`` planner units) than the index saves is not chosen but reported.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from dbscale.advisor.candidates import parse_index_def
from dbscale.advisor.model import Evaluation, ExistingIndex, Finding, IndexSpec, Query, Recommendation

TIE_TOLERANCE = 0.05
WRITE_COST_PER_ROW = 5.0  # planner cost units to maintain one btree entry per written row (~ a random page + CPU)


def plan_of(explain: Any) -> dict[str, Any]:
    """The top plan node of an ``EXPLAIN (FORMAT JSON)`` result (a list holding one object)."""
    doc = explain[0] if isinstance(explain, list) else explain
    plan: dict[str, Any] = doc["Plan"]
    return plan


def total_cost(explain: Any) -> float:
    return float(plan_of(explain)["Total Cost"])


def execution_ms(explain: Any) -> float:
    """``Execution Time`` of an ``EXPLAIN (ANALYZE, FORMAT JSON)`` result, in milliseconds."""
    doc = explain[0] if isinstance(explain, list) else explain
    return float(doc["Execution Time"])


def indexes_used(explain: Any) -> list[str]:
    """Names of the indexes the plan scans, in plan order (hypothetical ones look like ``<1234>btree_t_c``)."""
    found: list[str] = []

    def walk(node: Mapping[str, Any]) -> None:
        name = node.get("Index Name")
        if name and name not in found:
            found.append(name)
        for child in node.get("Plans", ()):
            walk(child)

    walk(plan_of(explain))
    return found


def _same_key(a: Sequence[Any], b: Sequence[Any]) -> bool:
    """Key prefixes equal, or equal with every direction reversed (a backward scan reads the same order)."""
    na = [c.normalized() for c in a]
    nb = [c.normalized() for c in b]
    if na == nb:
        return True
    flipped = [type(c)(c.name, not c.desc, not c.nulls_first) for c in nb]
    return na == flipped


def covers(existing: IndexSpec, wanted: IndexSpec) -> bool:
    """True when ``existing`` already does what ``wanted`` would: same predicate, key starting with its key,
    and every column ``wanted`` carries."""
    if existing.where != wanted.where or existing.table.rsplit(".", 1)[-1] != wanted.table.rsplit(".", 1)[-1]:
        return False
    if len(existing.columns) < len(wanted.columns):
        return False
    if not _same_key(existing.columns[: len(wanted.columns)], wanted.columns):
        return False
    carried = {c.name for c in existing.columns} | set(existing.include)
    return set(wanted.include) <= carried


def redundant(existing: Iterable[ExistingIndex]) -> list[Finding]:
    """Existing non-unique indexes that another index of the same table makes redundant (duplicate or prefix)."""
    parsed = [(e, parse_index_def(e.definition)) for e in existing]
    out: list[Finding] = []
    for e, spec in parsed:
        if spec is None or e.unique:
            continue
        for other, ospec in parsed:
            if other.name == e.name or ospec is None or not covers(ospec, spec):
                continue
            same = len(ospec.columns) == len(spec.columns) and set(ospec.include) == set(spec.include)
            if same and not other.unique and other.name > e.name:
                continue  # of two identical indexes, report only the later name (the first is kept)
            kind = "duplicate of" if same else "prefix of"
            out.append(Finding("duplicate", e.name, f"{kind} {other.name} ({other.definition}); drop it"))
            break
    return out


def unused(existing: Iterable[ExistingIndex]) -> list[Finding]:
    """Existing non-unique indexes never scanned since statistics were last reset."""
    return [
        Finding("unused", e.name, f"idx_scan = 0 ({e.size_bytes // 1024} kB) on {e.table}; consider dropping it")
        for e in existing
        if e.scans == 0 and not e.unique
    ]


def _saving(ev: Evaluation, current: float) -> tuple[float, float]:
    """(ranking saving, saving in planner cost units) of ``ev`` beyond a query's current best cost."""
    if ev.after >= current:
        return 0.0, 0.0
    cost = ev.query.calls * (current - ev.after)
    if ev.query.mean_ms is not None and ev.before > 0:
        return ev.query.calls * ev.query.mean_ms * (current - ev.after) / ev.before, cost
    return cost, cost


def pick(
    evaluations: Mapping[IndexSpec, Sequence[Evaluation]],
    current: Mapping[Query, float],
    *,
    min_gain: float = 0.3,
    sizes: Mapping[IndexSpec, int] | None = None,
) -> Recommendation | None:
    """One greedy round: the candidate saving the most beyond ``current`` (each query's cost with the indexes
    picked so far), with the queries it serves; ``None`` when no candidate gains ``min_gain`` anywhere."""
    size = sizes or {}
    scored: list[tuple[float, IndexSpec, list[Evaluation]]] = []
    for spec, evs in evaluations.items():
        # a query must gain ``min_gain`` from its own cost, and again from its cost with the indexes picked so
        # far, by at least TIE_TOLERANCE of its own cost (not the last few units a near tie would give)
        served = [
            ev
            for ev in evs
            if ev.gain >= min_gain
            and ev.after <= current.get(ev.query, ev.before) * (1 - min_gain)
            and current.get(ev.query, ev.before) - ev.after >= TIE_TOLERANCE * ev.before
        ]
        rank = sum(_saving(ev, current.get(ev.query, ev.before))[0] for ev in served)
        if rank > 0:
            scored.append((rank, spec, served))
    if not scored:
        return None
    best = max(s[0] for s in scored)
    near = [s for s in scored if s[0] >= best * (1 - TIE_TOLERANCE)]
    near.sort(key=lambda s: (size.get(s[1], 0), s[1].width, s[1].where is None, s[1].ddl()))
    rank, spec, served = near[0]
    return Recommendation(spec, served, rank)


def write_heavy(
    rec: Recommendation,
    current: Mapping[Query, float],
    table_writes: Mapping[str, int],
    write_cost: float = WRITE_COST_PER_ROW,
) -> Finding | None:
    """A finding when maintaining ``rec``'s index on every row write costs more than the index saves."""
    table = rec.index.table.rsplit(".", 1)[-1]
    writes = table_writes.get(table, 0)
    saved = sum(_saving(ev, current.get(ev.query, ev.before))[1] for ev in rec.serves)
    maintenance = writes * write_cost
    if maintenance <= saved:
        return None
    return Finding(
        "write-heavy",
        table,
        f"{writes} row writes × {write_cost:g} ≈ {maintenance:.0f} cost units of index maintenance exceed the "
        f"{saved:.0f} saved by {rec.index.ddl()}; not recommended",
    )


def choose(
    evaluations: Mapping[IndexSpec, Sequence[Evaluation]],
    *,
    min_gain: float = 0.3,
    table_writes: Mapping[str, int] | None = None,
    sizes: Mapping[IndexSpec, int] | None = None,
    write_cost: float = WRITE_COST_PER_ROW,
) -> tuple[list[Recommendation], list[Finding]]:
    """Greedy selection over fixed per-candidate evaluations (each measured alone): the ranked index set
    and the write-heavy findings. The shell re-measures between rounds instead (:func:`pick` per round)."""
    current: dict[Query, float] = {}
    for evs in evaluations.values():
        for ev in evs:
            current[ev.query] = ev.before
    pool = dict(evaluations)
    chosen: list[Recommendation] = []
    findings: list[Finding] = []
    while pool:
        rec = pick(pool, current, min_gain=min_gain, sizes=sizes)
        if rec is None:
            break
        del pool[rec.index]
        finding = write_heavy(rec, current, table_writes or {}, write_cost)
        if finding is not None:
            if all(f.subject != finding.subject for f in findings):
                findings.append(finding)
            continue
        for ev in rec.serves:
            current[ev.query] = ev.after
        chosen.append(rec)
    return chosen, findings
