"""``dbscale init`` and ``dbscale project run | rebuild | status``: the CQRS commands of the CLI.

Registered on the main app by :func:`register`. ``MODULE:ATTR`` names a :class:`~dbscale.cqrs.Projector`
(bound to the ``--config`` cluster if it has none) or a function ``make(cluster) -> Projector``;
the current directory is importable, as with ``python -m``.
"""

from __future__ import annotations

import functools
import importlib
import json
import logging
import os
import signal
import sys
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Annotated, Any

import typer

from dbscale.errors import ConfigError

if TYPE_CHECKING:  # imported where used: the CLI starts without the cluster, CQRS and rich
    from rich.console import Console

    from dbscale.cluster import Cluster
    from dbscale.cqrs import Projector

project_app = typer.Typer(
    help="CQRS projectors: run a worker, rebuild a read model, show positions.", no_args_is_help=True
)


@functools.cache
def console() -> Console:
    """The stdout console (rich is imported on first use: ``dbscale load`` does not pay for it)."""
    from rich.console import Console

    return Console(highlight=False, width=None if sys.stdout.isatty() else 160)


def __getattr__(name: str) -> Any:  # ``from dbscale.cli_project import out`` (cli_writes): the console, made now
    if name == "out":
        return console()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


ConfigOpt = Annotated[Path | None, typer.Option("--config", help="The dbscale.toml (default .dbscale/dbscale.toml).")]
StateDirOpt = Annotated[Path | None, typer.Option("--state-dir", help="Local topology dir (default .dbscale).")]
Target = Annotated[str, typer.Argument(help="MODULE:ATTR of a Projector, or of make(cluster) -> Projector.")]


def _cluster(config: Path | None, state_dir: Path | None) -> Cluster:
    if config is not None and state_dir is not None:
        raise ConfigError("pass either --state-dir or --config, not both")
    path = config or (state_dir or Path(".dbscale")) / "dbscale.toml"
    if not path.exists():
        raise ConfigError(f"no config file {path} (run `dbscale up` first, or pass --config FILE)")
    from dbscale.cluster import Cluster

    return Cluster.from_config(path)


def load_projector(spec: str, cluster: Cluster) -> Projector:
    """The projector named by ``MODULE:ATTR``, bound to ``cluster``."""
    from dbscale.cqrs import Projector

    module_name, _, attr = spec.partition(":")
    if not module_name or not attr:
        raise ConfigError(f"{spec!r}: name a projector as MODULE:ATTR, e.g. myapp.projections:users")
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        obj: Any = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as exc:
        raise ConfigError(f"{spec!r}: cannot load it ({exc})") from exc
    if not isinstance(obj, Projector) and callable(obj):
        obj = obj(cluster)
    if not isinstance(obj, Projector):
        raise ConfigError(
            f"{spec!r} is a {type(obj).__name__}, not a dbscale.cqrs.Projector (nor a function making one)"
        )
    if obj.cluster is None:
        obj.bind(cluster)
    return obj


@project_app.command("run")
def run(
    target: Target,
    config: ConfigOpt = None,
    state_dir: StateDirOpt = None,
    once: Annotated[bool, typer.Option("--once", help="Catch up and exit instead of following the log.")] = False,
) -> None:
    """Run a projector worker: wait for its lease, then follow the log until SIGTERM/SIGINT."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s", stream=sys.stderr)
    with _cluster(config, state_dir) as cluster:
        projector = load_projector(target, cluster)
        if once:
            console().print(f"{projector.name}: applied {projector.run_once()} events")
            return

        def stop(signum: int, frame: FrameType | None) -> None:
            projector.stop()

        signal.signal(signal.SIGTERM, stop)
        signal.signal(signal.SIGINT, stop)
        print(f"{projector.name}: worker {os.getpid()} started", file=sys.stderr, flush=True)
        projector.run()


@project_app.command("rebuild")
def rebuild(target: Target, config: ConfigOpt = None, state_dir: StateDirOpt = None) -> None:
    """Replay the whole log into fresh read-model tables and swap them in atomically."""
    with _cluster(config, state_dir) as cluster:
        projector = load_projector(target, cluster)
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
        with Progress(*columns, console=console()) as progress:
            task = progress.add_task(f"rebuilding {projector.name}", total=None)

            def report(done: int, total: int) -> None:
                progress.update(task, completed=done, total=total)

            done = projector.rebuild(report)
        console().print(f"{projector.name}: rebuilt from {done} events and swapped in")


@project_app.command("status")
def status(
    config: ConfigOpt = None,
    state_dir: StateDirOpt = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print machine-readable JSON.")] = False,
) -> None:
    """Every projector's position and lag (events and seconds behind the log)."""
    with _cluster(config, state_dir) as cluster:
        rows = cluster.events.projections()
    if as_json:
        print(json.dumps({"projectors": [r.as_dict() for r in rows]}, indent=2))
        return
    from rich.table import Table

    table = Table(title="dbscale projectors")
    for column in ("projector", "last event", "applied", "lag events", "lag seconds", "error"):
        table.add_column(column)
    for r in rows:
        error = "" if r.error is None else f"[red]stopped at event {r.failed_event}[/]: {r.error}"
        table.add_row(
            r.name, str(r.position.id), str(r.applied), str(r.lag_events), f"{r.lag_seconds:.3f}", error
        )  # fmt: skip
    console().print(table)


def init(config: ConfigOpt = None, state_dir: StateDirOpt = None) -> None:
    """Create dbscale's tables (CQRS event log, checkpoints, dead letters) on the primary, and with
    \\[sharding] the global-ID function dbscale_next_id() on every shard group. Idempotent."""
    with _cluster(config, state_dir) as cluster:
        cluster.install()
    console().print("dbscale tables installed")


def register(app: typer.Typer) -> None:
    """Add ``init`` and the ``project`` command group to the main app."""
    app.command("init")(init)
    app.add_typer(project_app, name="project")


__all__ = ["load_projector", "project_app", "register"]
