"""What one scatter-gather asks each shard and what it returns — pure (the I/O is in :mod:`.router_aio`).

Each shard runs the caller's statement wrapped as
``SELECT * FROM (<statement>) AS dbscale_shard ORDER BY <keys> LIMIT <offset + limit>``, so the
caller writes the per-shard query once, without ORDER BY or LIMIT (PostgreSQL flattens the
subquery, so an index on the sort keys still serves it). Aggregate queries run as written: their
partial aggregates are combined by :class:`~dbscale.sharding.scatter.FanoutPlan`.

Text sort keys: the k-way merge compares text by code point, which is PostgreSQL's order under
``COLLATE "C"`` only. :func:`misordered_column` checks every shard's rows against the merge order
and the shell raises if a shard sorted differently (select ``title COLLATE "C" AS title`` in the
statement, or declare the column ``COLLATE "C"``), instead of returning a silently wrong page.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from itertools import pairwise
from typing import Any

from dbscale.sharding.scatter import FanoutPlan, Row, sort_key

#: The alias of the caller's statement inside the per-shard wrapper.
SHARD_ALIAS = "dbscale_shard"


def needs_wrapper(plan: FanoutPlan) -> bool:
    """Whether the shard statement must be wrapped (rows to order or limit; aggregates run as written)."""
    return not plan.aggregates and (bool(plan.order_by) or plan.shard_limit is not None)


def shard_sql(statement: str, plan: FanoutPlan) -> str:
    """The SQL each shard runs for ``statement`` under ``plan`` (``statement`` unchanged if nothing to add)."""
    if not needs_wrapper(plan):
        return statement
    sql = f"SELECT * FROM ({statement.strip().rstrip(';')}) AS {SHARD_ALIAS}"
    if plan.order_by:
        sql += f" ORDER BY {plan.shard_order_by_sql}"
    if plan.shard_limit is not None:
        sql += f" LIMIT {int(plan.shard_limit)}"
    return sql


def misordered_column(rows: Sequence[Row], plan: FanoutPlan) -> str | None:
    """The first ORDER BY column on which consecutive ``rows`` break the merge order (None: in order)."""
    if plan.aggregates or not plan.order_by:
        return None
    key = sort_key(plan.order_by)
    for a, b in pairwise(rows):
        ka, kb = key(a), key(b)
        if kb < ka:
            for term, x, y in zip(plan.order_by, ka, kb, strict=True):
                if x != y:
                    return term.column
    return None


@dataclass
class FanoutResult:
    """Merged rows of a scatter-gather, and where they came from.

    ``shards`` names the groups whose rows are included (with the node that answered, a replica
    or the primary, in ``nodes``); ``missing`` maps each group left out (``allow_partial=True``)
    to the reason; ``partial`` is True when any group is missing.
    """

    rows: list[dict[str, Any]]
    shards: tuple[str, ...]
    nodes: Mapping[str, str] = field(default_factory=dict)
    missing: Mapping[str, str] = field(default_factory=dict)
    seconds: float = 0.0

    @property
    def partial(self) -> bool:
        """Whether some shard groups are missing from :attr:`rows`."""
        return bool(self.missing)

    def __iter__(self) -> Any:
        return iter(self.rows)

    def __len__(self) -> int:
        return len(self.rows)


__all__ = ["SHARD_ALIAS", "FanoutResult", "misordered_column", "needs_wrapper", "shard_sql"]
