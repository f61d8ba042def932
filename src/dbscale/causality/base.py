"""What the sync and async clusters' causality providers share (lag-aware cache fills).

An invalidation's marker records the context's own causal token if it wrote; otherwise (another
service, a script, a projector wrote) the current insert position of each group's primary, one
``SELECT pg_current_wal_insert_lsn()`` per group in LSN mode, the wall clock in ``delay`` mode.
Failures raise :class:`~dbscale.errors.MarkerUnavailable`; the cache then invalidates without a
marker (fail open, counted). A loader runs under the key's markers merged with the caller's marks.

One cache core serves both front ends of a cache, so each provider answers both kinds of caller:
its own flavour reads the primaries (``aio.py``, and ``sync.py`` generated from it), and this base
answers the other flavour — an asyncio caller of a blocking cluster in a worker thread, a blocking
caller of an asyncio cluster from the context's own token only (it cannot reach the async engines).
"""

from __future__ import annotations

import asyncio
import logging
import time
from contextlib import AbstractContextManager
from typing import TYPE_CHECKING, Any

from sqlalchemy import exc as sa_exc

from dbscale.errors import DbscaleError, MarkerUnavailable
from dbscale.routing.lsn import Mark, format_token, merge_marker, parse_lsn, record_boundary
from dbscale.units import parse_read_your_writes

if TYPE_CHECKING:
    from dbscale.cluster import ClusterBase
    from dbscale.routing.group import GroupRouterBase

__all__ = ["FAILURES", "INSERT_LSN_SQL", "CausalityBase"]

log = logging.getLogger("dbscale.cache")

INSERT_LSN_SQL = "SELECT pg_current_wal_insert_lsn()::text"
#: What reading a primary's position can raise (besides MarkerUnavailable): turned into MarkerUnavailable.
FAILURES = (DbscaleError, sa_exc.SQLAlchemyError, OSError)


class CausalityBase:
    """The flavour-independent part; subclasses override the token method of their own flavour."""

    def __init__(self, cluster: ClusterBase) -> None:
        self._base = cluster

    def invalidation_token(self) -> str:
        """For a blocking caller of an asyncio cluster: the context's own token, else the groups' marks
        that need no primary (``delay`` mode); MarkerUnavailable when an LSN mode group needs one."""
        own = self._base.causal_token()
        if own:
            return own
        marks: dict[str, Mark] = {}
        if self._lsn_groups(marks):
            raise MarkerUnavailable("the sync twin of an AsyncCluster's cache cannot read the primary's position")
        return format_token(marks)

    async def ainvalidation_token(self) -> str:
        """For an asyncio caller of a blocking cluster: :meth:`invalidation_token` in a worker thread."""
        return await asyncio.to_thread(self.invalidation_token)

    def scope(self, token: str) -> AbstractContextManager[object]:
        """The caller's marks moved forward to ``token`` (malformed parts of the marker are logged and skipped)."""
        causal = self._base._causal
        merged, bad = merge_marker(token, causal.token())
        if bad:
            log.warning("cache: ignoring %d malformed part(s) of a lag-aware marker, e.g. %r", len(bad), bad[0][:80])
        return causal.scope(merged)

    def max_lag(self) -> float:
        """The largest ``max_lag`` of any group."""
        return max(g.max_lag for g in self._base.config.groups.values())

    def _lsn_groups(self, marks: dict[str, Mark]) -> list[str]:
        """Fill ``marks`` for groups in delay mode; return the groups whose primary LSN is needed."""
        wanted: list[str] = []
        for name, group in self._base.config.groups.items():
            mode = parse_read_your_writes(group.read_your_writes)[0]
            if mode == "delay":
                marks[name] = Mark(at=time.time())
            elif mode == "lsn":
                wanted.append(name)
        return wanted

    @staticmethod
    def _writer(router: GroupRouterBase) -> str:
        writer = router.writer()
        if writer is None:
            raise MarkerUnavailable(f"group {router.name!r}: no primary known to read the current WAL position from")
        return router.write_target(writer)

    @staticmethod
    def _mark(router: GroupRouterBase, text: Any) -> Mark:
        return Mark(lsn=record_boundary(parse_lsn(str(text))))

    @staticmethod
    def _failed(router: GroupRouterBase, exc: BaseException) -> MarkerUnavailable:
        return MarkerUnavailable(f"group {router.name!r}: the primary's WAL position could not be read: {exc}")
