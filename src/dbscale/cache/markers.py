"""Lag-aware fills: what the cache needs from whoever knows the write positions (the cluster).

The cache never imports the cluster. :class:`~dbscale.Cluster` hands its cache a :class:`Causality`;
a cache without one (``Cache(CacheConfig(...))``) records no markers and loads as before. The
protocol is text-only: a causal token is the string ``cluster.causal_token()`` returns, and
markers found for a key are tokens joined by commas (one token, as far as the cluster is concerned).
"""

from __future__ import annotations

from contextlib import AbstractContextManager
from typing import Protocol

__all__ = ["MARGIN", "Causality", "marker_ttl"]

#: Seconds a marker outlives the largest ``max_lag``: a health interval, a check's timeout, slack.
MARGIN = 5.0


class Causality(Protocol):
    """Write positions for invalidation markers, and a causal scope to load under."""

    def invalidation_token(self) -> str:
        """The position an invalidation issued now must be read at or after: the context's own causal
        token if it wrote, else each group's current primary position. Raises
        :class:`~dbscale.errors.MarkerUnavailable` when it cannot be read."""
        ...

    async def ainvalidation_token(self) -> str:
        """:meth:`invalidation_token` for asyncio callers."""
        ...

    def scope(self, token: str) -> AbstractContextManager[object]:
        """Run a block (a loader) with ``token`` merged into the current context's causal marks."""
        ...

    def max_lag(self) -> float:
        """The largest lag (seconds) at which any replica still serves reads."""
        ...


def marker_ttl(configured: float | None, max_lag: float) -> float:
    """How long a marker lives: ``configured``, else ``max_lag`` plus :data:`MARGIN`.

    After that, every replica that still serves reads is within ``max_lag`` of the primary, so it
    has replayed the write the marker named (up to the accuracy of lag measurement).
    """
    return configured if configured is not None else max_lag + MARGIN
