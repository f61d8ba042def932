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
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.table import Table

from dbscale.cli_project import ConfigOpt, StateDirOpt, _cluster, out

if TYPE_CHECKING:  # imported where used: the CLI starts without the cache and the cluster
    from dbscale.cache.writes.behind import WriteBehind
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
    batch: Annotated[int, typer.Option("--batch", min=1, help="Stream entries per flush transaction.")] = 5000,
    interval: Annotated[
        float, typer.Option("--interval", min=0.0, help="Seconds to wait after a round that was not a full batch.")
    ] = 0.2,
) -> None:
    """Run a flusher: take the table's stream over and flush it into the database until SIGTERM/SIGINT."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s", stream=sys.stderr)
    with _cluster(config, state_dir) as cluster:
        behind = _behind(cluster, table, key_column)
        flusher = behind.flusher(batch=batch, interval=interval)
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


def discover(cluster: Cluster) -> list[str]:
    """The tables that have a write-behind stream in the cluster's Redis (SCAN, never KEYS)."""
    import redis

    from dbscale.cache.l2_base import client_options
    from dbscale.config import is_cluster_url

    cache = cluster.config.cache
    if cache.redis_url is None or is_cluster_url(str(cache.redis_url)):  # write-behind runs on one Redis only
        return []
    prefix = f"{cache.namespace}:wb:{{"
    client = redis.Redis.from_url(str(cache.redis_url), **client_options(2.0))  # no retries: status stays quick
    try:
        names = [k.decode() for k in client.scan_iter(match=prefix + "*}", _type="stream", count=1000)]
    except redis.RedisError:
        return []
    finally:
        client.close()
    return sorted(n[len(prefix) : -1] for n in names)


def _status_rows(cluster: Cluster, tables: list[str]) -> list[dict[str, Any]]:
    rows = []
    for name in tables:
        behind = _behind(cluster, name, "id")
        rows.append(behind.status())
        behind.close()
    return rows


def print_status(cluster: Cluster) -> None:
    """The write-behind lines of ``dbscale status`` (nothing when no table is written behind)."""
    rows = _status_rows(cluster, discover(cluster))
    if rows:
        _print_rows(rows)


def _print_rows(rows: list[dict[str, Any]]) -> None:
    view = Table(title="dbscale write-behind")
    for column in ("table", "queue depth", "oldest pending (s)", "dead letters"):
        view.add_column(column)
    for r in rows:
        view.add_row(r["table"], str(r["queue_depth"]), f"{r['oldest_pending_s']:.3f}", str(r["dead_letters"]))
    out.print(view)


@writes_app.command("status")
def status(
    table: Annotated[
        list[str] | None, typer.Option("--table", help="A table written behind (repeatable; default: all found).")
    ] = None,
    config: ConfigOpt = None,
    state_dir: StateDirOpt = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print machine-readable JSON.")] = False,
) -> None:
    """Queue depth, oldest pending age and dead letters of each table's stream."""
    with _cluster(config, state_dir) as cluster:
        rows = _status_rows(cluster, table or discover(cluster))
    if as_json:
        print(json.dumps({"write_behind": rows}, indent=2))
        return
    _print_rows(rows)


def register(app: typer.Typer) -> None:
    """Add the ``write-behind`` command group to the main app."""
    app.add_typer(writes_app, name="write-behind")


__all__ = ["discover", "print_status", "register", "writes_app"]
