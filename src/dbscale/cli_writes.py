"""``dbscale write-behind run | dead-letters | status``: the write-behind commands of the CLI.

Registered on the main app by :func:`register`. A flusher process needs only the topology config
and the table (with its key column): the stream name follows from the cache namespace and the table.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import sys
from types import FrameType
from typing import Annotated

import typer
from rich.table import Table

from dbscale.cache.writes.behind import WriteBehind
from dbscale.cli_project import ConfigOpt, StateDirOpt, _cluster, out
from dbscale.cluster import Cluster

writes_app = typer.Typer(help="Write-behind: run a flusher, list dead letters, show queues.", no_args_is_help=True)

TableOpt = Annotated[str, typer.Option("--table", help="The table written behind (as passed to write_behind).")]
KeyOpt = Annotated[str, typer.Option("--key-column", help="Its key column (the upsert's conflict target).")]


def _behind(cluster: Cluster, table: str, key_column: str) -> WriteBehind:
    return cluster.cache.write_behind(table, key_column=key_column, key="{" + key_column + "}")


@writes_app.command("run")
def run(
    table: TableOpt,
    key_column: KeyOpt,
    config: ConfigOpt = None,
    state_dir: StateDirOpt = None,
    once: Annotated[bool, typer.Option("--once", help="Drain the stream and exit.")] = False,
    batch: Annotated[int, typer.Option("--batch", min=1, help="Stream entries per flush transaction.")] = 1000,
) -> None:
    """Run a flusher: take the table's stream over and flush it into the database until SIGTERM/SIGINT."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s", stream=sys.stderr)
    with _cluster(config, state_dir) as cluster:
        behind = _behind(cluster, table, key_column)
        flusher = behind.flusher(batch=batch)
        if once:
            out.print(f"{table}: flushed {flusher.drain()} stream entries")
            behind.close()
            return

        def stop(signum: int, frame: FrameType | None) -> None:
            flusher.request_stop()

        signal.signal(signal.SIGTERM, stop)
        signal.signal(signal.SIGINT, stop)
        print(f"{table}: flusher {os.getpid()} started", file=sys.stderr, flush=True)
        flusher.run()
        behind.close()


@writes_app.command("dead-letters")
def dead_letters(
    table: TableOpt,
    key_column: KeyOpt,
    config: ConfigOpt = None,
    state_dir: StateDirOpt = None,
    count: Annotated[int, typer.Option("--count", min=1, help="How many (oldest first).")] = 100,
    as_json: Annotated[bool, typer.Option("--json", help="Print machine-readable JSON.")] = False,
) -> None:
    """The changes the database rejected, with its error (oldest first)."""
    with _cluster(config, state_dir) as cluster:
        behind = _behind(cluster, table, key_column)
        letters = behind.dead_letters(count)
        behind.close()
    if as_json:
        print(json.dumps({"dead_letters": letters}, indent=2, default=str))
        return
    view = Table(title=f"dbscale write-behind dead letters: {table}")
    for column in ("change", "key", "op", "data", "error"):
        view.add_column(column)
    for d in letters:
        view.add_row(d["change"], d["key"], d["op"], json.dumps(d["data"], default=str), d["error"])
    out.print(view)


@writes_app.command("status")
def status(
    table: Annotated[list[str], typer.Option("--table", help="A table written behind (repeatable).")],
    config: ConfigOpt = None,
    state_dir: StateDirOpt = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print machine-readable JSON.")] = False,
) -> None:
    """Queue depth, oldest pending age and dead letters of each table's stream."""
    with _cluster(config, state_dir) as cluster:
        rows = []
        for name in table:
            behind = _behind(cluster, name, "id")
            rows.append(behind.status())
            behind.close()
    if as_json:
        print(json.dumps({"write_behind": rows}, indent=2))
        return
    view = Table(title="dbscale write-behind")
    for column in ("table", "queue depth", "oldest pending (s)", "dead letters"):
        view.add_column(column)
    for r in rows:
        view.add_row(r["table"], str(r["queue_depth"]), f"{r['oldest_pending_s']:.3f}", str(r["dead_letters"]))
    out.print(view)


def register(app: typer.Typer) -> None:
    """Add the ``write-behind`` command group to the main app."""
    app.add_typer(writes_app, name="write-behind")


__all__ = ["register", "writes_app"]
