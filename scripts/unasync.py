"""Generate the synchronous twins of the asyncio sources (in the manner of httpcore's ``scripts/unasync.py``).

Each hand-written asyncio source in ``FILES`` (``src/dbscale/routing/aio.py``, ``cache/tier_async.py``
…) has a generated blocking twin (``router.py``, ``tier.py`` …), produced by the ordered regex
substitutions in ``RULES`` (applied line by line, in order), stamped as generated, its imports and
``__all__`` sorted (a rename can unsort them) and passed through ``ruff format``. What sync and async
truly differ in is paired by name in ``src/dbscale/_compat.py``, so most rules are renames. Where the two APIs differ by more
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
    (Path("src/dbscale/sharding/router_aio.py"), Path("src/dbscale/sharding/router.py")),
    (Path("src/dbscale/cache/l2_async.py"), Path("src/dbscale/cache/l2.py")),
    (Path("src/dbscale/cache/l2_cluster_async.py"), Path("src/dbscale/cache/l2_cluster.py")),
    (Path("src/dbscale/cache/tier_async.py"), Path("src/dbscale/cache/tier.py")),
    (Path("src/dbscale/causality/aio.py"), Path("src/dbscale/causality/sync.py")),
    (Path("src/dbscale/cache/wrap_aio.py"), Path("src/dbscale/cache/wrap.py")),
    (Path("src/dbscale/cache/writes/through_aio.py"), Path("src/dbscale/cache/writes/through.py")),
    (Path("src/dbscale/cache/writes/behind_aio.py"), Path("src/dbscale/cache/writes/behind.py")),
    (Path("src/dbscale/bulk/aio.py"), Path("src/dbscale/bulk/shell.py")),
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
    (r"\bA(Event|Lock|LoopLocal|Runner|Wakeup|Workers)\b", r"\1"),
    (r"\ba(acquire|call_loader|deadline|event_wait|join|run_hooks|sleep|spawn|to_thread|try_acquire)\b", r"\1"),
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
    # the shard shell (sharding/router_aio.py)
    (
        r"^from collections\.abc import Awaitable, Callable, Mapping, Sequence$",
        "from collections.abc import Callable, Mapping, Sequence",
    ),
    (
        r"^    from sqlalchemy\.ext\.asyncio import AsyncConnection, AsyncSession$",
        "    from sqlalchemy import Connection\n    from sqlalchemy.orm import Session",
    ),
    (
        r"^    from dbscale\.routing\.aio import AsyncReadConnection$",
        "    from dbscale.routing.router import ReadConnection",
    ),
    (r"\bThe asyncio shard shell\b", "The synchronous shard shell"),
    (
        r"^\(as asyncio tasks; the generated twin ``sharding/router\.py`` uses threads\),$",
        "(in threads; generated from ``sharding/router_aio.py``),",
    ),
    (r"\bAwaitable\[_Outcome\]", "_Outcome"),
    (r"\bAsyncShard\b", "Shard"),
    (r"\bdbscale\.sharding\.router_aio\b", "dbscale.sharding.router"),
    # the cache: redis.asyncio -> redis-py (its flavour pairs are in cache/l2_base.py)
    (r"^import redis\.asyncio as aredis$", "import redis"),
    (r"\baredis\.", "redis."),
    (r"\bdbscale\.cache\.l2_async\b", "dbscale.cache.l2"),
    (r"\bdbscale\.cache\.l2_cluster_async\b", "dbscale.cache.l2_cluster"),
    (r"\bAConn\b", "Conn"),
    (r"\ba(closed|connected|drop|get_options)\b", r"\1"),
    (r"\.aclose\(\)", ".close()"),
    (r'\bflavour="async"', 'flavour="sync"'),
    (
        r"\bTiered cache for asyncio code \(redis\.asyncio\)\. Safe to share between tasks\.",
        "Tiered cache for blocking code (redis-py). Thread-safe.",
    ),
    # cache.writes
    (r"^from redis\.asyncio import Redis$", "from redis import Redis"),
    (r"\bdbscale\.cache\.writes\.(through|behind)_aio\b", r"dbscale.cache.writes.\1"),
    (r"\bThe asyncio (write-through|write-behind) cache\b", r"The synchronous \1 cache"),
    (r"\bAsync(RedisEntries|WriteThrough|WriteBehind|Flusher)\b", r"\1"),
    (r"\bThe asyncio (event log|projector|bulk loader)\b", r"The synchronous \1"),
    (
        r"^from collections\.abc import AsyncIterator, Awaitable, Callable, Iterable, Iterator$",
        "from collections.abc import Callable, Iterable, Iterator",
    ),
    (r"\bAsyncPrimaries\b", "Primaries"),
    (r"\bpsycopg\.AsyncConnection\b", "psycopg.Connection"),
    (r"\bdbscale\.cluster_aio\b", "dbscale.cluster_sync"),
    (r"\bAsyncBulkLoader\b", "BulkLoader"),
    (r"\bbulk_load_async\b", "bulk_load"),
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
    (r"\bAwaitable\[T\]", "T"),
    # dbscale names
    (r"\bAsyncGroupRouter\b", "GroupRouter"),
    (r"\bAsyncParkingPool\b", "ParkingPool"),
    (r"\bAsyncReadConnection\b", "ReadConnection"),
    (r"\bAsyncWriteConnection\b", "WriteConnection"),
    (r"\bAsyncMonitor\b", "SyncMonitor"),
    (r"\bAsyncClusterCausality\b", "ClusterCausality"),
    (r"\bAsyncProber\b", "Prober"),
    (r"\bAsync(RedisL2|ClusterL2|SingleFlight)\b", r"\1"),
    (r"\bAsyncFront\b", "SyncFront"),
    (r"\bAsyncCachedFunction\b", "CachedFunction"),
    (r"\bainvalidation_token\b", "invalidation_token"),
    (r"\bAsyncCluster\b", "Cluster"),
    (r"\bAsync(EventLog|Projector|Handler|Setup)\b", r"\1"),
    # SQLAlchemy: an AsyncSession wraps a sync Session (of sync_session_class, if given)
    (r"\bAsyncSession\((.*), sync_session_class=(\w+)\)", r"\2(\1)"),
    (r"\bAsyncSession\b", "Session"),
    (r"\.sync_session\b", ""),
    (r"\bAsyncConnection\b", "Connection"),
    (r"\.sync_connection\b", ""),
    (r"\.get_raw_connection\(\)", ".connection"),
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
    """``text`` as ``ruff`` would write it to ``path``: imports and ``__all__`` sorted (a rename can
    unsort them), then formatted (the project's settings apply)."""
    for command in (["check", "--fix", "--exit-zero", "--quiet", "--select", "I001,RUF022"], ["format"]):
        result = subprocess.run(
            [sys.executable, "-m", "ruff", *command, "--stdin-filename", str(path), "-"],
            input=text,
            capture_output=True,
            text=True,
            cwd=ROOT,
            check=False,
        )
        if result.returncode != 0:
            raise SystemExit(f"ruff {command[0]} failed on the generated {path}:\n{result.stderr}")
        text = result.stdout
    return text


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
