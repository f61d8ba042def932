"""Causal marks of the current context (thread or asyncio task), one set per cluster object.

A ``ContextVar`` holds an immutable ``{group: Mark}`` mapping that is replaced, never mutated, so a
thread starts empty and an asyncio task sees what its parent had written when it was created but
never leaks its own writes back.

:meth:`CausalContext.scope` runs a block under a carried token (a web request's cookie or header,
or a cache fill on behalf of a request): every read in the block honours it, writes in the block
move it forward, and the context's own marks come back when the block ends. The writes made under
a scope in worker threads or child tasks (a sync endpoint that Starlette runs in a thread) are
collected for the scope's token too, so the token a request sends back covers all it wrote.
"""

from __future__ import annotations

import inspect
import itertools
import threading
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from types import MappingProxyType

from dbscale.errors import NotInTransaction
from dbscale.routing.lsn import Mark, format_token, parse_token

_EMPTY: Mapping[str, Mark] = MappingProxyType({})
_ids = itertools.count()


def _merged(marks: Mapping[str, Mark], group: str, mark: Mark) -> Mapping[str, Mark]:
    merged = dict(marks)
    merged[group] = marks[group].merge(mark) if group in marks else mark
    return MappingProxyType(merged)


class _ScopeWrites:
    """The writes made anywhere under one :meth:`CausalContext.scope` — including worker threads.

    A context variable set in a copied context (Starlette runs a sync endpoint in a worker thread
    with a copy of the request's context) never comes back; this object does, since the copy
    holds the same object. The scope's owner reads it for the token it sends back.
    """

    __slots__ = ("lock", "marks")

    def __init__(self, marks: Mapping[str, Mark]) -> None:
        self.lock = threading.Lock()
        self.marks = marks

    def record(self, group: str, mark: Mark) -> None:
        with self.lock:
            self.marks = _merged(self.marks, group, mark)


class CausalContext:
    """The read-your-writes marks a cluster recorded in the current context."""

    def __init__(self) -> None:
        n = next(_ids)
        self._var: ContextVar[Mapping[str, Mark]] = ContextVar(f"dbscale_causal_{n}", default=_EMPTY)
        self._scope: ContextVar[_ScopeWrites | None] = ContextVar(f"dbscale_causal_scope_{n}", default=None)

    def record(self, group: str, mark: Mark) -> None:
        """Remember that this context wrote ``mark`` on ``group`` (marks only move forward)."""
        self._var.set(_merged(self._var.get(), group, mark))
        writes = self._scope.get()
        if writes is not None:
            writes.record(group, mark)

    def token(self, group: str | None = None) -> str | None:
        """This context's marks as a portable string, or None if it has written nothing.

        Inside :meth:`scope`, writes made under the scope in worker threads and tasks started from it
        count too: the token a web request sends back covers everything the request wrote.
        """
        marks = self._var.get()
        writes = self._scope.get()
        if writes is not None:
            for name, mark in writes.marks.items():
                marks = _merged(marks, name, mark)
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
        start: Mapping[str, Mark] = MappingProxyType(marks) if marks else _EMPTY
        reset = self._var.set(start)
        reset_scope = self._scope.set(_ScopeWrites(start))
        try:
            yield self.token()
        finally:
            self._scope.reset(reset_scope)
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
