"""Causal marks of the current context (thread or asyncio task), one set per cluster object.

A ``ContextVar`` holds an immutable ``{group: Mark}`` mapping that is replaced, never mutated, so a
thread starts empty and an asyncio task sees what its parent had written when it was created but
never leaks its own writes back.

:meth:`CausalContext.scope` runs a block under a carried token (a web request's cookie or header,
or a cache fill on behalf of a request): every read in the block honours it, writes in the block
move it forward, and the context's own marks come back when the block ends.
"""

from __future__ import annotations

import inspect
import itertools
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from types import MappingProxyType

from dbscale.errors import NotInTransaction
from dbscale.routing.lsn import Mark, format_token, parse_token

_EMPTY: Mapping[str, Mark] = MappingProxyType({})
_ids = itertools.count()


class CausalContext:
    """The read-your-writes marks a cluster recorded in the current context."""

    def __init__(self) -> None:
        self._var: ContextVar[Mapping[str, Mark]] = ContextVar(f"dbscale_causal_{next(_ids)}", default=_EMPTY)

    def record(self, group: str, mark: Mark) -> None:
        """Remember that this context wrote ``mark`` on ``group`` (marks only move forward)."""
        current = self._var.get()
        merged = dict(current)
        merged[group] = current[group].merge(mark) if group in current else mark
        self._var.set(MappingProxyType(merged))

    def token(self, group: str | None = None) -> str | None:
        """This context's marks as a portable string, or None if it has written nothing."""
        marks = self._var.get()
        if group is not None:
            marks = {group: marks[group]} if group in marks else {}
        return format_token(marks) or None

    def mark_for(self, group: str, after: str | None) -> Mark | None:
        """The mark a read on ``group`` must honour: this context's, merged with a carried token's."""
        mine = self._var.get().get(group)
        if after is None:
            return mine
        carried = parse_token(after).get(group)
        if carried is None:
            return mine
        return carried if mine is None else mine.merge(carried)

    @contextmanager
    def scope(self, token: str | None) -> Iterator[str | None]:
        """Within the block, this context's marks are exactly ``token``'s (plus the block's own writes).

        Yields the token in effect; on exit the marks from before the block are restored, so a
        request's marks never leak into the next request served by the same thread. ``None`` or
        ``""`` runs the block with no marks. A malformed token raises ``InvalidCausalToken``.
        """
        marks = parse_token(token) if token else {}
        reset = self._var.set(MappingProxyType(marks) if marks else _EMPTY)
        try:
            yield self.token()
        finally:
            self._var.reset(reset)

    def clear(self) -> None:
        """Forget this context's marks (e.g. at the start of a new web request)."""
        self._var.set(_EMPTY)


#: The after-commit work queued in the current context's innermost ``cluster.write()`` block.
_HOOKS: ContextVar[list[Callable[[], object]] | None] = ContextVar("dbscale_commit_hooks", default=None)


class CommitHooks:
    """The after-commit work of one ``write()`` block: open while the block runs, run once it committed.

    ``write()`` makes one before yielding its connection and closes it when the block ends (commit
    or rollback); it runs :attr:`queued` only after a COMMIT, so a rollback drops them.
    """

    def __init__(self) -> None:
        self.queued: list[Callable[[], object]] = []
        self._reset = _HOOKS.set(self.queued)

    def close(self) -> None:
        """The block ended: later :func:`on_commit` calls go to the enclosing block (if any)."""
        _HOOKS.reset(self._reset)


def on_commit(fn: Callable[[], object]) -> None:
    """Run ``fn()`` right after the enclosing ``cluster.write()`` block commits (never if it rolls back).

    ``fn`` may return an awaitable (awaited by an asyncio ``write()``).
    """
    hooks = _HOOKS.get()
    if hooks is None:
        raise NotInTransaction(
            "on-commit work was queued outside a `with cluster.write()` block: queue it inside the"
            " transaction it depends on, or run it directly"
        )
    hooks.append(fn)


def run_hooks(hooks: list[Callable[[], object]]) -> None:
    """Run a committed block's queued work (blocking ``write()``), in queue order."""
    for fn in hooks:
        result = fn()
        if inspect.isawaitable(result):
            close = getattr(result, "close", None)
            if close is not None:
                close()
            raise NotInTransaction(
                "an asyncio cache queued on-commit work inside a blocking `cluster.write()`: use the"
                " cache of the same flavour (Cluster.cache, or AsyncCluster.cache with AsyncCluster.write())"
            )


async def arun_hooks(hooks: list[Callable[[], object]]) -> None:
    """Run a committed block's queued work (asyncio ``write()``), awaiting what returns an awaitable."""
    for fn in hooks:
        result = fn()
        if inspect.isawaitable(result):
            await result


__all__ = ["CausalContext", "CommitHooks", "arun_hooks", "on_commit", "run_hooks"]
