"""Fork safety: what a forked child must not share with its parent, forgotten right after ``os.fork()``.

Theory of operation: a child made by ``os.fork()`` (gunicorn ``--preload``, Celery prefork,
``multiprocessing``'s fork start method) inherits copies of the parent's sockets, so two processes
would talk on one PostgreSQL or Redis connection and read each other's replies. It also inherits
every lock in the state it was in, while only the forking thread runs on: a lock another thread
held at the fork stays held forever, and the background threads (health monitors, thread pools)
are gone.

Each object holding such state registers in an :class:`AtFork` set with a ``reset`` function,
which one ``os.register_at_fork(after_in_child=...)`` hook calls in the child before anything else
runs there. A reset only assigns: it forgets connections (never closes them: closing would end the
parent's sessions, and psycopg and redis-py send nothing for a connection that another process
opened), swaps in new locks, and leaves what needs I/O or a thread to be made again on first use.
It takes no lock of the parent's and runs no finalizer on the parent's connections: what it drops
is handed to :func:`inherit`, which keeps it referenced for the child's life (a few objects per
fork), so no pool's garbage collection hook ever checks a parent's connection in, or rolls it back,
in the child. A reset costs microseconds; the hot paths check nothing.
"""

from __future__ import annotations

import logging
import os
import weakref
from collections.abc import Callable
from typing import Generic, TypeVar

__all__ = ["AtFork", "inherit"]

T = TypeVar("T")

log = logging.getLogger("dbscale")

#: What a forked child dropped from its parent's objects, kept referenced so no finalizer runs on it.
_inherited: list[object] = []
#: Every :class:`AtFork` set, in creation order (the order their resets run in a child).
_sets: list[AtFork[object]] = []


class AtFork(Generic[T]):
    """A set of objects (held weakly), each passed to ``reset`` in a forked child, right after the fork."""

    def __init__(self, reset: Callable[[T], None]) -> None:
        self._objects: weakref.WeakSet[T] = weakref.WeakSet()
        self._reset = reset
        _sets.append(self)  # type: ignore[arg-type]  # each set only resets objects of its own kind

    def add(self, obj: T) -> None:
        """Reset ``obj`` in every child forked while it lives."""
        self._objects.add(obj)

    def _after_fork(self) -> None:
        for obj in list(self._objects):
            try:
                self._reset(obj)
            except Exception:  # one broken reset must not leave the others sharing their connections
                log.exception("dbscale: resetting %r after fork failed", obj)


def inherit(*objects: object) -> None:
    """Keep what a child dropped from its parent referenced for good (see the module's docstring)."""
    _inherited.extend(objects)


def _after_fork_in_child() -> None:
    for at_fork in list(_sets):
        at_fork._after_fork()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)
