# auto-generated from router_aio.py by scripts/unasync.py — do not edit
"""The synchronous shard shell: a shard handle over its group's router, and scatter-gather over every group.

``cluster.shard(entity, key)`` returns an :class:`Shard` bound to the group that owns the key
(the pure :class:`~dbscale.sharding.shardmap.ShardMap` decides); its ``write``/``read``/``session``
are the cluster's, on that group's router, so replicas, lag bans and causal tokens apply per
shard group. :func:`fanout` runs one statement on every shard group at once
(in threads; generated from ``sharding/router_aio.py``),
each through a routed read (a replica where one is eligible), and merges the rows with a
:class:`~dbscale.sharding.scatter.FanoutPlan`.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable, Mapping, Sequence
from contextlib import AbstractContextManager
from typing import TYPE_CHECKING, Any

from sqlalchemy import Executable, TextClause, text
from sqlalchemy import exc as sa_exc
from sqlalchemy.sql import Select

from dbscale._compat import Workers
from dbscale.errors import FanoutError, FanoutPlanError, NodeUnavailable
from dbscale.routing.errors import describe, is_connection_error
from dbscale.sharding.fanout import SHARD_ALIAS, FanoutResult, misordered_column, needs_wrapper, shard_sql
from dbscale.sharding.scatter import FanoutPlan

if TYPE_CHECKING:
    from sqlalchemy import Connection
    from sqlalchemy.orm import Session

    from dbscale.cluster import Cluster
    from dbscale.routing.router import ReadConnection


def count_shard_query(cluster: Cluster, group: str, kind: str) -> None:
    """Count one statement context opened on ``group`` (``kind``: write, read, session, fanout)."""
    cluster.metrics.counter("shard_queries", "Contexts opened per shard group", ("group", "kind")).labels(
        group, kind
    ).inc()


class Shard:
    """The shard group owning one key: ``write()``, ``read(after=)``, ``session()`` through its router."""

    __slots__ = ("_cluster", "group")

    def __init__(self, cluster: Cluster, group: str) -> None:
        self._cluster = cluster
        self.group = group

    def write(self) -> AbstractContextManager[Connection]:
        """One transaction on the shard group's primary (see :meth:`dbscale.Cluster.write`)."""
        count_shard_query(self._cluster, self.group, "write")
        return self._cluster.write(self.group)

    def read(self, after: str | None = None, *, snapshot: bool = False) -> AbstractContextManager[ReadConnection]:
        """A routed read on the shard group: a replica that has replayed this context's writes, else the primary."""
        count_shard_query(self._cluster, self.group, "read")
        return self._cluster.read(after, group=self.group, snapshot=snapshot)

    def session(self, write: bool = False, *, after: str | None = None) -> AbstractContextManager[Session]:
        """An ORM session on the shard group (see :meth:`dbscale.Cluster.session`)."""
        count_shard_query(self._cluster, self.group, "session")
        return self._cluster.session(write, after=after, group=self.group)

    def causal_token(self) -> str | None:
        """This context's read-your-writes token for the shard group (None before a write there)."""
        return self._cluster.causal_token(self.group)

    def __repr__(self) -> str:
        return f"Shard(group={self.group!r})"


def shard_statement(statement: str | Executable, plan: FanoutPlan) -> Executable:
    """``statement`` as each shard must run it (ORDER BY and LIMIT added around it when the plan needs them)."""
    if isinstance(statement, str):
        return text(shard_sql(statement, plan))
    if not needs_wrapper(plan):
        return statement
    if isinstance(statement, TextClause):
        return text(shard_sql(statement.text, plan))
    if isinstance(statement, Select):
        query = statement.subquery(SHARD_ALIAS).select()
        if plan.order_by:
            query = query.order_by(text(plan.shard_order_by_sql))
        return query.limit(plan.shard_limit) if plan.shard_limit is not None else query
    raise FanoutPlanError(
        f"fanout cannot order or limit a {type(statement).__name__}: give SQL text, text(...) or select(...)"
    )


_Outcome = tuple[str, list[Any]] | BaseException


def _run_on(reading: AbstractContextManager[ReadConnection], statement: Executable, params: Any) -> _Outcome:
    """Run ``statement`` in a routed read: (node, rows), or the exception it raised."""
    try:
        with reading as conn:
            result = conn.execute(statement, params)
            return conn.node, list(result.mappings().all())
    except (NodeUnavailable, sa_exc.SQLAlchemyError, OSError) as exc:
        return exc


def fanout(
    cluster: Cluster,
    workers: Workers,
    groups: Sequence[str],
    statement: str | Executable,
    params: Mapping[str, Any] | None,
    plan: FanoutPlan,
    *,
    allow_partial: bool,
    timeout: float,
) -> FanoutResult:
    """Run ``statement`` on every group at once, merge by ``plan`` (see :meth:`dbscale.Cluster.fanout`)."""
    query = shard_statement(statement, plan)
    started = time.perf_counter()
    # The reads are made here, in the caller's context, so they carry its causal marks (a pool
    # thread does not inherit the caller's context variables).
    calls: dict[str, Callable[[], _Outcome]] = {
        group: functools.partial(_run_on, cluster.read(group=group), query, params) for group in groups
    }
    outcomes = workers.run(calls, timeout)
    seconds = time.perf_counter() - started
    failures = cluster.metrics.counter("fanout_shard_failures", "Shard groups missing from a fan-out", ("group",))
    missing: dict[str, str] = {}
    answered: dict[str, list[Any]] = {}
    nodes: dict[str, str] = {}
    for group in groups:
        outcome = outcomes.get(group)
        if outcome is None:
            missing[group] = f"no answer within timeout={timeout:g}s"
        elif isinstance(outcome, BaseException):
            if not (isinstance(outcome, NodeUnavailable) or is_connection_error(outcome)):
                raise FanoutError(
                    f"shard group {group!r} failed: {describe(outcome)} (the statement itself is wrong, "
                    "not the shard: fix it)",
                    missing={group: describe(outcome)},
                ) from outcome
            missing[group] = describe(outcome)
        else:
            nodes[group], answered[group] = outcome
            count_shard_query(cluster, group, "fanout")
    for group in missing:
        failures.labels(group).inc()
    if missing and (not allow_partial or not answered):
        listed = "; ".join(f"{g}: {why}" for g, why in missing.items())
        hint = "start it or raise timeout=" if not answered else "start it, raise timeout=, or pass allow_partial=True"
        raise FanoutError(f"fan-out failed on shard group(s) {listed} ({hint})", missing=missing)
    for group, rows in answered.items():
        column = misordered_column(rows, plan)
        if column is not None:
            raise FanoutPlanError(
                f"shard group {group!r} sorted {column!r} in another order than the merge (text sorts by the "
                f'database collation): select `{column} COLLATE "C" AS {column}` or declare the column COLLATE "C"'
            )
    rows = plan.merge(answered[g] for g in groups if g in answered)
    cluster.metrics.histogram(
        "fanout_seconds", "Fan-out latency (all shard groups, merge excluded)", ("shards",)
    ).labels(str(len(groups))).observe(seconds)
    if missing:
        cluster.metrics.counter("fanout_partial", "Fan-outs that returned a partial result").inc()
    return FanoutResult(rows, tuple(answered), nodes, missing, seconds)


def row_estimate(cluster: Cluster, group: str) -> int | None:
    """Estimated live rows in the user tables of ``group`` (``pg_stat_user_tables``); None if it is down.

    Asked on the primary: activity statistics are per server, a replica's count none of the writes.
    """
    try:
        with cluster.write(group) as conn:
            value = conn.scalar(text("SELECT coalesce(sum(n_live_tup), 0) FROM pg_stat_user_tables"))
    except (NodeUnavailable, sa_exc.SQLAlchemyError, OSError):
        return None
    return int(value)


__all__ = ["Shard", "count_shard_query", "fanout", "row_estimate", "shard_statement"]
