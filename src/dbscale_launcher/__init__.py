"""The ``dbscale`` console script's entry point, outside the ``dbscale`` package on purpose.

Importing the CLI (typer, rich) and then a command's capability (SQLAlchemy, pydantic, psycopg …)
takes a noticeable moment on a loaded machine; a Ctrl-C in that window would print a
``KeyboardInterrupt`` traceback from the middle of an import. Catching it needs code that runs before
``dbscale/__init__.py``, hence this module of a few lines.
"""

from __future__ import annotations

import sys


def main() -> None:
    """Import the CLI and run it; Ctrl-C during the import exits 130 with one line."""
    try:
        from dbscale.cli import main as run
    except KeyboardInterrupt:
        print("dbscale: interrupted", file=sys.stderr)
        sys.exit(130)
    run()
