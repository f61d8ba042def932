"""Generate the synchronous twins of the asyncio sources (in the manner of httpcore's ``scripts/unasync.py``).

Each hand-written asyncio source in ``FILES`` (``src/dbscale/routing/aio.py``,
``routing/monitor_aio.py``) has a generated blocking twin (``router.py``, ``monitor.py``), produced
by the ordered regex substitutions in ``RULES`` (applied line by line, in order), stamped as
generated and passed through ``ruff format``. What sync and async truly differ in is paired by name
in ``src/dbscale/_compat.py``, so most rules are renames. Where the two APIs differ by more
than a name, the async source is written so a substitution yields exactly the sync code.

    python scripts/unasync.py          # regenerate every twin
    python scripts/unasync.py --check  # exit 1 (with a diff) if a twin is stale

Both modes also exit 1 when a rule matched nothing: a rule that no longer applies means the source
changed under it, and the generated file may be wrong in a way no diff would show.
"""

from __future__ import annotations

import argparse
import difflib
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
FILES = [
    (Path("src/dbscale/routing/aio.py"), Path("src/dbscale/routing/router.py")),
    (Path("src/dbscale/routing/monitor_aio.py"), Path("src/dbscale/routing/monitor.py")),
    (Path("src/dbscale/cluster_aio.py"), Path("src/dbscale/cluster_sync.py")),
    (Path("src/dbscale/advisor/aio.py"), Path("src/dbscale/advisor/shell.py")),
    (Path("src/dbscale/cqrs/log_aio.py"), Path("src/dbscale/cqrs/log.py")),
    (Path("src/dbscale/cqrs/aio.py"), Path("src/dbscale/cqrs/sync.py")),
]
STAMP = "# auto-generated from {name} by scripts/unasync.py — do not edit\n"

# (pattern, replacement), applied in this order to each line (newline included). A pattern is a
# regular expression; names are matched as whole words.
RULES: list[tuple[str, str]] = [
    # imports
    (r"^import asyncio\n", ""),
    (
        r"^from collections\.abc import AsyncIterator, Awaitable, Callable$",
        "from collections.abc import Callable, Iterator",
    ),
    (
        r"^from sqlalchemy import Connection, Executable, event$",
        "from sqlalchemy import Connection, Engine, Executable, event",
    ),
    (r"^from sqlalchemy\.ext\.asyncio import AsyncConnection, AsyncEngine, AsyncSession\n", ""),
    (r"^from sqlalchemy\.util import await_only, greenlet_spawn\n", ""),
    (r"\bdbscale\.routing\.monitor_aio\b", "dbscale.routing.monitor"),
    (r"^from contextlib import AbstractAsyncContextManager$", "from contextlib import AbstractContextManager"),
    (
        r"^from sqlalchemy\.ext\.asyncio import AsyncConnection, AsyncEngine, AsyncSession, create_async_engine$",
        "from sqlalchemy import Connection, Engine, create_engine\nfrom sqlalchemy.orm import Session",
    ),
    (r"^from dbscale\.cache import AsyncCache$", "from dbscale.cache import Cache"),
    (
        r"^from dbscale\.routing\.aio import AsyncGroupRouter, AsyncReadConnection$",
        "from dbscale.routing.router import GroupRouter, ReadConnection",
    ),
    (
        r"\bA cluster for asyncio code \(psycopg's async driver\)\. Use ``async with``, or ``await close\(\)``\.",
        "A cluster for blocking code. Use ``with``, or call :meth:`close`.",
    ),
    (r"\bAbstractAsyncContextManager\b", "AbstractContextManager"),
    (r"\bcreate_async_engine\b", "create_engine"),
    (r"\bsqlalchemy_url\(([\w.]+), async_=True\)", r"sqlalchemy_url(\1)"),
    (r"\.sync_engine\b", ""),
    (r", in the calling thread or task\.", ", in the calling thread."),
    (r"\bAsyncCache\b", "Cache"),
    # dbscale._compat: each asyncio primitive has a blocking namesake
    (r"\bA(Event|Lock|Runner|Workers)\b", r"\1"),
    (r"\ba(acquire|event_wait|join|sleep|spawn|try_acquire)\b", r"\1"),
    # the module docstring's first line
    (r"\bThe asyncio group router\b", "The synchronous group router"),
    (r"\bThe asyncio index advisor\b", "The synchronous index advisor"),
    (r"^from collections\.abc import Awaitable, Callable, Sequence$", "from collections.abc import Callable, Sequence"),
    (
        r"^    from sqlalchemy\.ext\.asyncio import AsyncConnection, AsyncEngine$",
        "    from sqlalchemy import Connection, Engine",
    ),
    (r"^    from sqlalchemy\.ext\.asyncio import AsyncConnection$", "    from sqlalchemy import Connection"),
    (r"\bdbscale\.cqrs\.log_aio\b", "dbscale.cqrs.log"),
    (r"\bThe asyncio (event log|projector)\b", r"The synchronous \1"),
    # async syntax
    (r"\(await ([\w.]+\([^()]*\))\)", r"\1"),  # (await x.f(a)).g -> x.f(a).g
    (r"\bawait_only\((.*)\)$", r"\1"),  # the greenlet bridge in a sync ORM hook: a plain call
    (r"\bgreenlet_spawn\(([\w.]+)(?:, ([^()]*))?\)", r"\1(\2)"),  # SQLAlchemy's bridge into a sync call: the call
    (r"\bAsyncConnection\([\w.]+, (Connection\(.*\))\)", r"\1"),
    (
        r"\bAsyncWriteConnection\((\w+), Connection\(\w+, (connection=\w+)\)\)",
        r"WriteConnection(\1, \2)",
    ),  # an AsyncConnection over a sync one: the sync one
    (r"\bawait asyncio\.shield\((.*)\)$", r"\1"),  # a close that a cancellation must not cut short
    (r"\basync def\b", "def"),
    (r"\basync with\b", "with"),
    (r"\basync for\b", "for"),
    (r"\bawait ", ""),
    (r"\b__aenter__\b", "__enter__"),
    (r"\b__aexit__\b", "__exit__"),
    (r"\basynccontextmanager\b", "contextmanager"),
    (r"\basyncio\.sleep\b", "time.sleep"),
    (r"\bAsyncIterator\b", "Iterator"),
    (r"\bAwaitable\[Any\]", "Any"),
    (r"\bAwaitable\[None\]", "None"),
    # dbscale names
    (r"\bAsyncGroupRouter\b", "GroupRouter"),
    (r"\bAsyncReadConnection\b", "ReadConnection"),
    (r"\bAsyncWriteConnection\b", "WriteConnection"),
    (r"\bAsyncMonitor\b", "SyncMonitor"),
    (r"\bAsyncClusterCausality\b", "ClusterCausality"),
    (r"\bAsyncProber\b", "Prober"),
    (r"\bAsyncCluster\b", "Cluster"),
    (r"\bAsync(EventLog|Projector|Handler|Setup)\b", r"\1"),
    # SQLAlchemy: an AsyncSession wraps a sync Session (of sync_session_class, if given)
    (r"\bAsyncSession\((.*), sync_session_class=(\w+)\)", r"\2(\1)"),
    (r"\bAsyncSession\b", "Session"),
    (r"\.sync_session\b", ""),
    (r"\bAsyncConnection\b", "Connection"),
    (r"\.sync_connection\b", ""),
    (r"\bAsyncEngine\b", "Engine"),
]

COMPILED = [(re.compile(pattern), repl) for pattern, repl in RULES]


def unasync(source: str, used: set[int]) -> str:
    """The sync text of ``source`` (before formatting); adds the index of every rule that matched to ``used``."""
    out = []
    for line in source.splitlines(keepends=True):
        for index, (regex, repl) in enumerate(COMPILED):
            line, count = regex.subn(repl, line)
            if count:
                used.add(index)
        out.append(line)
    return "".join(out)


def ruff_format(text: str, path: Path) -> str:
    """``text`` as ``ruff format`` would write it to ``path`` (the project's settings apply)."""
    result = subprocess.run(
        [sys.executable, "-m", "ruff", "format", "--stdin-filename", str(path), "-"],
        input=text,
        capture_output=True,
        text=True,
        cwd=ROOT,
        check=False,
    )
    if result.returncode != 0:
        raise SystemExit(f"ruff format failed on the generated {path}:\n{result.stderr}")
    return result.stdout


def generate(src: Path, used: set[int]) -> str:
    """The formatted, stamped sync twin of ``src`` (a path relative to the repository root)."""
    return ruff_format(STAMP.format(name=src.name) + unasync((ROOT / src).read_text(), used), src)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--check", action="store_true", help="fail (with a diff) if a generated file is stale")
    args = parser.parse_args(argv)

    used: set[int] = set()
    status = 0
    for src, dst in FILES:
        expected = generate(src, used)
        target = ROOT / dst
        current = target.read_text() if target.exists() else ""
        if current == expected:
            continue
        if args.check:
            sys.stdout.writelines(
                difflib.unified_diff(
                    current.splitlines(keepends=True),
                    expected.splitlines(keepends=True),
                    fromfile=f"{dst} (checked in)",
                    tofile=f"{dst} (generated from {src})",
                )
            )
            print(f"{dst} is stale: run python scripts/unasync.py", file=sys.stderr)
            status = 1
        else:
            target.write_text(expected)
            print(f"wrote {dst}")

    unused = [RULES[i] for i in range(len(RULES)) if i not in used]
    for pattern, repl in unused:
        print(f"unused rule: {pattern!r} -> {repl!r}", file=sys.stderr)
    if unused:
        status = 1
    return status


if __name__ == "__main__":
    sys.exit(main())
