"""Causal marks of the current context (thread or asyncio task), one set per cluster object.

A ``ContextVar`` holds an immutable ``{group: Mark}`` mapping that is replaced, never mutated, so a
thread starts empty and an asyncio task sees what its parent had written when it was created but
never leaks its own writes back.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping
from contextvars import ContextVar
from types import MappingProxyType

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

    def clear(self) -> None:
        """Forget this context's marks (e.g. at the start of a new web request)."""
        self._var.set(_EMPTY)


__all__ = ["CausalContext"]
