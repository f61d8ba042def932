"""Transactional invalidation: cache invalidations queued inside ``cluster.write()`` and run after its COMMIT.

An invalidation sent before COMMIT lets a reader re-cache the old row in between; one sent from a
transaction that then rolls back changed the cache for nothing. Queued here, it runs right after
COMMIT, before ``write()`` returns, and is dropped on rollback (:class:`dbscale.routing.context.CommitHooks`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from dbscale.routing.context import on_commit


def queue_invalidation(front: Any, keys: Sequence[str], tags: Sequence[str]) -> None:
    """Queue ``front.invalidate(*keys)`` and ``front.invalidate_tags(*tags)`` on the enclosing write's COMMIT.

    ``front`` is a cache front of either flavour (its methods return a bool or an awaitable of one).
    """
    if keys:
        keys = tuple(keys)
        on_commit(lambda: front.invalidate(*keys))
    if tags:
        tags = tuple(tags)
        on_commit(lambda: front.invalidate_tags(*tags))


__all__ = ["queue_invalidation"]
