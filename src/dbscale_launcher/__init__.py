"""The ``dbscale`` console script's entry point, outside the ``dbscale`` package on purpose.

Importing the CLI (typer, rich) and then a command's capability (SQLAlchemy, pydantic, psycopg …)
takes a noticeable moment on a loaded machine; a Ctrl-C in that window would print a
``KeyboardInterrupt`` traceback from the middle of an import. Catching it needs code that runs before
``dbscale/__init__.py``, hence this module of a few lines.

A command in :data:`QUICK_EXIT` that succeeded ends its process without the interpreter's teardown
(freeing every module and object, OpenSSL's clean-up in psycopg's libpq: 0.07–0.14 s measured here,
psycopg's share alone ~55 ms): ``dbscale load`` is timed against ``psql \\copy``, whose process ends at
once. The exit handlers still run and the output is flushed; a failure exits the usual way.
"""

from __future__ import annotations

import atexit
import contextlib
import gc
import os
import sys

#: Commands that close whatever they open before returning, so nothing is left for the teardown to do.
QUICK_EXIT = frozenset({"load"})

_paused = False  # whether main() paused the garbage collector (resume_collection() turns it back on)


def main() -> None:
    """Import the CLI and run it; Ctrl-C during the import exits 130 with one line."""
    global _paused
    quick = len(sys.argv) > 1 and sys.argv[1] in QUICK_EXIT
    if quick and gc.isenabled():
        gc.disable()  # until the command's imports are done: see resume_collection()
        _paused = True
    try:
        from dbscale.cli import main as run
    except KeyboardInterrupt:
        print("dbscale: interrupted", file=sys.stderr)
        sys.exit(130)
    if not quick:
        run()
        return
    try:
        run()
    except SystemExit as exc:
        if exc.code not in (None, 0):
            raise
    _exit_now()


def resume_collection() -> None:
    """Turn the garbage collector back on, once a :data:`QUICK_EXIT` command has imported what it runs.

    The start-up imports (typer, pydantic, psycopg, the config's models) allocate tens of thousands of
    objects that live as long as the process; collecting while they pile up only walks them again and
    again (~40 ms of `dbscale load`'s start here). They are frozen (left out of every later collection)
    and collection resumes for the command's own work. A no-op unless :func:`main` paused collection.
    """
    global _paused
    if _paused:
        _paused = False
        gc.freeze()
        gc.enable()


def _exit_now() -> None:
    """End the process with status 0 as ``sys.exit(0)`` would, minus the interpreter's teardown."""
    atexit._run_exitfuncs()  # what the normal exit runs: executor thread joins, logging's flush
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(OSError, ValueError):  # a closed pipe or stream: nothing more can reach it
            stream.flush()
    os._exit(0)
