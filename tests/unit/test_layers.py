"""The layers contract of ``src/dbscale``, checked on every ``make test`` (theory in the README's Architecture).

Every module's imports are read with ``ast`` (imports under ``if TYPE_CHECKING:`` are left out: they
never run) and checked against three rules:

1. **Rooms.** Each module belongs to a room (the longest matching prefix in ``ROOMS``); a room may
   import only the rooms it lists. The rooms of the plan (``sharding``, ``cache.writes``, ``cqrs``,
   ``bulk``, ``advisor``) are in the table before they exist, so the first module written there is
   already held to it. Nothing in the library imports ``cli``, ``demo`` or ``local``; nothing inside
   the package imports the package root (``dbscale/__init__.py`` is for users).
2. **Pure modules** (``PURE``) import no I/O client (``FORBIDDEN_IN_PURE``) and, inside dbscale,
   only other pure modules, so no client can arrive indirectly.
3. **No import circle**, lazy (function-level) imports included.

:func:`violations` is the checker; the tests at the bottom run it on the real tree and on synthetic
sources that break each rule, so the contract is shown to fail on a bad import.
"""

from __future__ import annotations

import ast
import fnmatch
from collections.abc import Iterable, Mapping
from pathlib import Path

import dbscale

SRC = Path(dbscale.__file__).resolve().parent

#: Modules every room may import: the vocabulary, configuration and plumbing at the bottom.
FOUNDATION = (
    "dbscale.errors",
    "dbscale.names",
    "dbscale.units",
    "dbscale.config",
    "dbscale.metrics",
    "dbscale.topology",
    "dbscale.pgbouncer",
    "dbscale.engines",
    "dbscale._compat",
    "dbscale._flow",
    "dbscale.forks",
    "dbscale.readiness",
)

#: room prefix -> the rooms (prefixes) its modules may import, besides itself and FOUNDATION.
ROOMS: dict[str, tuple[str, ...]] = {
    "dbscale.errors": (),
    "dbscale.names": (),
    "dbscale.units": (),
    "dbscale._compat": (),
    "dbscale._flow": (),
    "dbscale.forks": (),  # what a forked child forgets: every room holding connections registers there
    "dbscale.config": (),
    "dbscale.metrics": (),
    "dbscale.topology": (),
    "dbscale.pgbouncer": (),
    "dbscale.readiness": (),  # whether a driver error means "not ready yet" (no SQLAlchemy: dbscale load uses it)
    "dbscale.engines": (),  # read-only views of Patroni and Redis Cluster (status, local topology)
    "dbscale.routing": (),
    "dbscale.cache": (),
    # the capabilities on top: each may take the Cluster it runs against (the cycle check keeps the
    # cluster from importing them back at run time)
    "dbscale.cache.writes": ("dbscale.cache", "dbscale.routing", "dbscale.cluster"),
    "dbscale.sharding": ("dbscale.routing",),
    "dbscale.cqrs": ("dbscale.sharding", "dbscale.routing", "dbscale.cluster"),
    "dbscale.bulk": ("dbscale.sharding", "dbscale.routing", "dbscale.cluster"),
    "dbscale.advisor": ("dbscale.routing", "dbscale.cluster"),
    # web frameworks and the HTTP edge: they take the cache (and the Cluster) they front
    "dbscale.integrations": ("dbscale.cache", "dbscale.routing", "dbscale.cluster"),
    # the wiring on top of the rooms
    "dbscale.cluster": (
        "dbscale.cluster_aio",
        "dbscale.cluster_base",
        "dbscale.cluster_sync",
        "dbscale.routing",
        "dbscale.cache",
        "dbscale.sharding",
        "dbscale.cqrs",
        "dbscale.bulk",
        "dbscale.advisor",
    ),
    # the cache's view of routing's causal tokens (lag-aware fills), wired in by the cluster
    "dbscale.causality": ("dbscale.routing",),
    "dbscale.cluster_base": ("dbscale.routing", "dbscale.sharding"),
    "dbscale.cluster_aio": (
        "dbscale.cluster_base",
        "dbscale.routing",
        "dbscale.cache",
        "dbscale.causality",
        "dbscale.cqrs",
        "dbscale.sharding",
    ),
    "dbscale.cluster_sync": (
        "dbscale.cluster_base",
        "dbscale.routing",
        "dbscale.cache",
        "dbscale.causality",
        "dbscale.cqrs",
        "dbscale.sharding",
    ),
    "dbscale.probe": ("dbscale.cluster",),
    "dbscale.cli_project": ("dbscale",),
    "dbscale.cli_advise": ("dbscale",),
    "dbscale.cli_writes": ("dbscale",),
    "dbscale.cli_load": ("dbscale",),
    # the development tools: they may use the library; the library never uses them
    "dbscale.local": (),
    "dbscale.demo": ("dbscale",),
    "dbscale.cli": ("dbscale",),
    "dbscale.integrations.pytest_plugin": ("dbscale",),
    "dbscale.cli_top": ("dbscale",),
    "dbscale.demo_workload": ("dbscale",),
}
#: Rooms nothing outside them (and the tools) may import.
TOOLS = (
    "dbscale.cli",
    "dbscale.cli_advise",
    "dbscale.cli_project",
    "dbscale.demo",
    "dbscale.local",
    "dbscale.integrations.pytest_plugin",
    "dbscale.cli_top",
    "dbscale.demo_workload",
    "dbscale.cli_writes",
    "dbscale.cli_load",
)

#: Pure modules: decisions without I/O (globs over module names). The sharding room is pure except
#: its planned shells (``router``, ``reshard``); each planned room names its pure core.
PURE = (
    "dbscale.errors",
    "dbscale.names",
    "dbscale.units",
    "dbscale._flow",
    "dbscale.routing.core",
    "dbscale.routing.lsn",
    "dbscale.routing.balance",
    "dbscale.routing.bans",
    "dbscale.cache.keys",
    "dbscale.cache.leases",
    "dbscale.cache.miss",
    "dbscale.cache.policy",
    "dbscale.cache.writes.policy",
    "dbscale.sharding",
    "dbscale.sharding.*",
    "dbscale.cqrs.core",
    "dbscale.bulk.plan",
    "dbscale.advisor.model",
    "dbscale.advisor.candidates",
    "dbscale.advisor.select",
    "dbscale.demo_workload.ycsb",
)
PURE_EXCEPT = ("dbscale.sharding.router", "dbscale.sharding.router_aio", "dbscale.sharding.reshard")
#: I/O clients (module prefixes) a pure module must not import.
FORBIDDEN_IN_PURE = (
    "redis",
    "psycopg",
    "psycopg_pool",
    "sqlalchemy.engine",
    "sqlalchemy.ext.asyncio",
    "sqlalchemy.orm",
    "sqlalchemy.pool",
    "asyncio",
    "socket",
    "subprocess",
    "http",
    "urllib.request",
    "prometheus_client",
)


def _within(name: str, prefix: str) -> bool:
    return name == prefix or name.startswith(prefix + ".")


def room_of(module: str) -> str | None:
    """The room ``module`` belongs to: the longest prefix in ``ROOMS`` (None: not in the contract)."""
    matches = [room for room in ROOMS if _within(module, room)]
    return max(matches, key=len) if matches else None


def is_pure(module: str) -> bool:
    """Whether ``module`` is held to the pure rule."""
    if any(fnmatch.fnmatchcase(module, pattern) for pattern in PURE_EXCEPT):
        return False
    return any(fnmatch.fnmatchcase(module, pattern) for pattern in PURE)


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def imports(module: str, source: str, is_package: bool, known: Iterable[str] = ()) -> list[tuple[int, str]]:
    """``(line, imported module)`` for every import that runs (``TYPE_CHECKING`` blocks skipped).

    ``from a import b`` names ``a.b`` when that is a known module, else ``a``; relative imports are
    resolved against ``module``.
    """
    known = set(known)
    found: list[tuple[int, str]] = []
    package = module if is_package else module.rpartition(".")[0]

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, ast.Import):
            found.extend((node.lineno, alias.name) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                parts = parts[: len(parts) - (node.level - 1)]
                base = ".".join([*parts, base] if base else parts)
            for alias in node.names:
                candidate = f"{base}.{alias.name}"
                found.append((node.lineno, candidate if candidate in known else base))
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(ast.parse(source))
    return found


def violations(module: str, source: str, is_package: bool = False, known: Iterable[str] = ()) -> list[str]:
    """What in ``source`` (the text of ``module``) breaks rules 1 and 2; empty when it keeps the contract."""
    problems: list[str] = []
    root = module == "dbscale"  # the public API: re-exports anything but the tools
    room = "dbscale" if root else room_of(module)
    if room is None:
        return [f"{module}: in no room of the layers contract (add it to ROOMS in tests/unit/test_layers.py)"]
    allowed = ("dbscale",) if root else (room, *FOUNDATION, *ROOMS[room])
    pure = is_pure(module)
    is_tool = any(_within(module, tool) for tool in TOOLS)
    for line, target in imports(module, source, is_package, known):
        where = f"{module}:{line} imports {target}"
        if pure and any(_within(target, client) for client in FORBIDDEN_IN_PURE):
            problems.append(f"{where}: a pure module imports no I/O client")
        if not _within(target, "dbscale"):
            continue
        if target == "dbscale":
            if not root:
                problems.append(f"{where}: nothing inside the package imports the package root")
            continue
        if pure and not is_pure(target):
            problems.append(f"{where}: a pure module imports only pure modules")
        if any(_within(target, tool) for tool in TOOLS) and not is_tool:
            problems.append(f"{where}: the library never imports the tools (cli, demo, local)")
            continue
        target_room = room_of(target)
        if target_room is not None and not any(_within(target_room, ok) for ok in allowed):
            problems.append(f"{where}: room {room} may import only {', '.join(sorted(set(allowed)))}")
    return problems


def cycles(graph: Mapping[str, set[str]]) -> list[list[str]]:
    """The import circles of ``graph`` (strongly connected components of more than one module, or a self-loop)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def strongconnect(v: str) -> None:  # Tarjan's algorithm
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                strongconnect(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1 or v in graph.get(v, ()):
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            strongconnect(v)
    return found


def _modules() -> dict[str, tuple[Path, bool]]:
    found = {}
    for path in sorted(SRC.rglob("*.py")):
        parts = ("dbscale", *path.relative_to(SRC).with_suffix("").parts)
        is_package = parts[-1] == "__init__"
        name = ".".join(parts[:-1] if is_package else parts)
        found[name] = (path, is_package)
    return found


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    graph: dict[str, set[str]] = {}
    for name, (path, is_package) in modules.items():
        targets = {t for _, t in imports(name, path.read_text(), is_package, modules) if t in modules and t != name}
        # importing a submodule runs its parents' __init__ first, but they are already importing: no edge
        graph[name] = {t for t in targets if not _within(name, t)}
    return graph


# --- the contract on the real tree ---------------------------------------------------------------


def test_every_module_keeps_the_layers_contract() -> None:
    modules = _modules()
    problems = [p for name, (path, pkg) in modules.items() for p in violations(name, path.read_text(), pkg, modules)]
    assert problems == []


def test_no_import_circle() -> None:
    assert cycles(_graph()) == []


# --- the contract catches violations ---------------------------------------------------------------


def test_a_library_module_importing_the_cli_is_a_violation() -> None:
    problems = violations("dbscale.routing.group", "from dbscale.cli import app\n")
    assert problems and "never imports the tools" in problems[0]


def test_a_lazy_import_of_the_local_topology_is_a_violation_too() -> None:
    source = "def f():\n    from dbscale.local import LocalTopology\n    return LocalTopology\n"
    assert violations("dbscale.cache.tier", source)


def test_a_pure_module_importing_an_io_client_is_a_violation() -> None:
    for bad in ("import redis\n", "from psycopg import connect\n", "from sqlalchemy.ext.asyncio import AsyncEngine\n"):
        problems = violations("dbscale.cache.miss", bad)
        assert problems and "no I/O client" in problems[0], bad


def test_a_pure_module_importing_an_io_shell_of_dbscale_is_a_violation() -> None:
    problems = violations("dbscale.cache.leases", "from dbscale.cache.l2 import RedisL2\n")
    assert any("only pure modules" in p for p in problems)


def test_type_checking_imports_do_not_count() -> None:
    source = "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    import redis\n"
    assert violations("dbscale.cache.miss", source) == []


def test_planned_rooms_are_held_to_the_contract_before_they_exist() -> None:
    assert violations("dbscale.cqrs.core", "import psycopg\n")  # pure core of a future room
    assert violations("dbscale.sharding.router", "from dbscale.cache.tier import Cache\n")  # sharding uses routing only
    assert violations("dbscale.routing.group", "from dbscale.sharding.ring import Ring\n")  # routing is below sharding
    assert violations("dbscale.advisor.select", "from dbscale.cqrs.core import fold\n")
    assert violations("dbscale.cache.writes.behind", "from dbscale.routing.aio import AsyncGroupRouter\n") == []
    assert violations("dbscale.sharding.router", "from dbscale.routing.aio import AsyncGroupRouter\n") == []


def test_a_module_outside_every_room_is_reported() -> None:
    assert violations("dbscale.newthing", "") != []


def test_importing_the_package_root_from_inside_is_a_violation() -> None:
    assert violations("dbscale.local.pgbouncer", "from dbscale import Cluster\n")


def test_an_import_circle_is_found() -> None:
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert cycles(graph) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []
