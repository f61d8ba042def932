"""Lag-aware cache fills: the position an invalidation's markers record, read from the cluster.

``aio.py`` (asyncio) is the source; ``sync.py`` is generated from it by ``scripts/unasync.py``;
the shared part, and the answers to callers of the other flavour, are in ``base.py``.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

from dbscale.causality.base import FAILURES, INSERT_LSN_SQL, CausalityBase
from dbscale.errors import MarkerUnavailable
from dbscale.routing.lsn import Mark, format_token

if TYPE_CHECKING:
    from dbscale.cluster import AsyncCluster

__all__ = ["AsyncClusterCausality"]


class AsyncClusterCausality(CausalityBase):
    """Causality for a given :class:`~dbscale.AsyncCluster` (the cache's :class:`~dbscale.cache.markers.Causality`)."""

    def __init__(self, cluster: AsyncCluster) -> None:
        super().__init__(cluster)
        self._cluster = cluster

    async def ainvalidation_token(self) -> str:
        """The context's own token, else every group's current primary position."""
        own = self._cluster.causal_token()
        if own:
            return own
        marks: dict[str, Mark] = {}
        for name in self._lsn_groups(marks):
            router = self._cluster.router(name)
            try:
                await router.ensure_started()
                # closed by hand: the connection comes back started, and asyncio's would start again when entered
                conn = await router.connect(self._writer(router))
                try:
                    marks[name] = self._mark(router, (await conn.exec_driver_sql(INSERT_LSN_SQL)).scalar_one())
                finally:
                    await asyncio.shield(conn.close())
            except MarkerUnavailable:
                raise
            except FAILURES as exc:
                raise self._failed(router, exc) from exc
        return format_token(marks)
