"""The ``dbscale`` command line: local topology, status, fault injection.

Exit codes, the same for every command (README "CLI"):

* 0 — done; for ``status`` and ``up``: every node healthy;
* 1 — degraded or failed: a node is down (``status``, ``up``), a guarantee did not hold (``demo``),
  an operation dbscale attempted failed (a server did not start, a node is unreachable);
* 2 — usage or configuration: bad arguments or options, an invalid config, no topology where one
  was named, an unknown node, a state dir that is a file;
* 130 — interrupted (Ctrl-C); ``up`` first stops what it had started, and says so.

Errors print one line on stderr (``dbscale: error: ...``); no traceback.
"""

from __future__ import annotations

import enum
import functools
import importlib
import json
import sys
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, NoReturn

import typer
from typer.core import TyperGroup

from dbscale.cli_load import register as register_load_command
from dbscale.errors import ConfigError, DbscaleError

# The CLI starts fast (README "Bulk loading": `dbscale load` against `psql \copy`): this module and
# cli_load import only typer and the errors at the top; each command imports the configuration, the
# cluster, the probes, rich and its capability inside its body, and the command modules of `advise`,
# `init`, `project` and `write-behind` are imported only when one of them runs (or --help lists them).
# tests/unit/test_cli_startup.py holds `import dbscale.cli` and `dbscale load` to that.
if TYPE_CHECKING:
    from rich.console import Console
    from typer import _click

    from dbscale.probe import NodeStatus

#: Commands whose module is imported when the command is named: name → the module (its ``register(app)`` adds them).
LAZY_COMMANDS = {
    "advise": "dbscale.cli_advise",
    "init": "dbscale.cli_project",
    "project": "dbscale.cli_project",
    "write-behind": "dbscale.cli_writes",
}

#: The commands defined in this module, built into click commands only when named (or listed by --help):
#: typer builds a command from its signature and annotations, and building all of them cost every start
#: 20–35 ms here (`dbscale load` is timed against `psql \copy`).
commands = typer.Typer()


def _command_name(info: typer.models.CommandInfo) -> str:
    return info.name or typer.main.get_command_name(getattr(info.callback, "__name__", ""))


def _holder_for(name: str) -> typer.Typer | None:
    """A Typer holding only what ``name`` needs built: its lazy module's commands, or its entry in :data:`commands`."""
    holder = typer.Typer(add_completion=False)  # as the app: no --install-completion on a command
    module = LAZY_COMMANDS.get(name)
    if module is not None:
        importlib.import_module(module).register(holder)  # the module's commands, on a Typer of their own
        return holder
    holder.registered_commands = [info for info in commands.registered_commands if _command_name(info) == name]
    holder.registered_groups = [info for info in commands.registered_groups if info.name == name]
    return holder if holder.registered_commands or holder.registered_groups else None


class _Commands(TyperGroup):
    """The top-level group: each command is built (and a :data:`LAZY_COMMANDS` module imported) when named or listed."""

    def list_commands(self, ctx: _click.Context) -> list[str]:
        names = {*super().list_commands(ctx), *LAZY_COMMANDS, *map(_command_name, commands.registered_commands)}
        return sorted(names | {str(info.name) for info in commands.registered_groups})

    def get_command(self, ctx: _click.Context, cmd_name: str) -> _click.Command | None:
        holder = None if cmd_name in self.commands else _holder_for(cmd_name)
        if holder is not None:
            made = typer.main.get_command(holder)  # a group, or the one command of a holder with one
            built: dict[str, _click.Command] = getattr(made, "commands", None) or {cmd_name: made}
            for name, command in built.items():
                if name == cmd_name or name in LAZY_COMMANDS:
                    self.add_command(command, name)
        return super().get_command(ctx, cmd_name)

    def resolve_command(
        self, ctx: _click.Context, args: list[str]
    ) -> tuple[str | None, _click.Command | None, list[str]]:
        if args and self.get_command(ctx, args[0]) is None:  # a typo: build them all, so the error names the closest
            for name in self.list_commands(ctx):
                self.get_command(ctx, name)
        return super().resolve_command(ctx, args)


app = typer.Typer(
    name="dbscale",
    help="Scale a PostgreSQL-backed application: local topology, status, fault injection.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    cls=_Commands,
)


@app.callback()
def _root() -> None:
    """The group's own callback (no options): the commands are added by name, so typer must build a group."""


node_app = typer.Typer(help="Fault injection on one node of the local topology.", no_args_is_help=True)
commands.add_typer(node_app, name="node")


@functools.cache
def console() -> Console:
    """The stdout console (rich is imported on first use: ``dbscale load`` does not pay for it)."""
    from rich.console import Console

    return Console(highlight=False, width=None if sys.stdout.isatty() else 160)


StateDir = Annotated[Path, typer.Option("--state-dir", help="Where the local topology lives.")]
JsonFlag = Annotated[bool, typer.Option("--json", help="Print machine-readable JSON.")]
DEFAULT_STATE_DIR = Path(".dbscale")  # dbscale.local's default, not imported: it pulls the config and Redis


EXIT_OK, EXIT_DEGRADED, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130


def fail(message: str, code: int = EXIT_DEGRADED) -> NoReturn:
    """Print one line on stderr and exit."""
    print(f"dbscale: error: {message}", file=sys.stderr)
    raise typer.Exit(code)


def _local(state_dir: Path, *, must_exist: bool = False) -> Any:
    from dbscale.local import LocalTopology

    if state_dir.exists() and not state_dir.is_dir():
        fail(f"--state-dir {state_dir} is a file, not a directory; name a directory (it is created if missing)", 2)
    topology = LocalTopology(state_dir=state_dir)
    if must_exist and not topology.exists():
        fail(f"no topology in {state_dir} (run `dbscale up --state-dir {state_dir}` first)", EXIT_USAGE)
    return topology


def _exit_for(statuses: list[NodeStatus]) -> None:
    """Exit 1 (degraded) when a node is down, after the table was printed."""
    down = [s.name for s in statuses if not s.healthy]
    if down:
        print(f"dbscale: degraded: {len(down)} node(s) down: {', '.join(down)}", file=sys.stderr)
        raise typer.Exit(EXIT_DEGRADED)


def _fmt_lag(status: NodeStatus) -> str:
    if status.lag_bytes is None and status.lag_seconds is None:
        return "-"
    size = "?" if status.lag_bytes is None else f"{status.lag_bytes} B"
    secs = "?" if status.lag_seconds is None else f"{status.lag_seconds:.2f} s"
    return f"{size} / {secs}"


def _engine_views(state_dir: Path | None, config: Any) -> dict[str, Any]:
    """Patroni's view of each HA group, and the local Redis Cluster's nodes and slots (if any)."""
    from dbscale.probe import probe_patroni, probe_redis_cluster

    views: dict[str, Any] = {}
    patroni = probe_patroni(config)
    if patroni:
        views["patroni"] = patroni
    if state_dir is not None and (state_dir / "state.json").is_file():
        from dbscale.local import redis_cluster

        nodes = redis_cluster.cluster_nodes(_local(state_dir).state())
        if nodes:
            try:
                view = probe_redis_cluster(redis_cluster.urls(nodes))
            except Exception as exc:  # every node down: say so instead of failing the whole status
                views["redis_cluster"] = {"error": str(exc)}
            else:
                names = {f"127.0.0.1:{n.port}": n.name for n in nodes}
                for entry in view:
                    entry.name = names.get(entry.address, "")
                views["redis_cluster"] = view
    return views


def _print_engines(views: dict[str, Any]) -> None:
    from rich.table import Table

    for group, view in views.get("patroni", {}).items():
        table = Table(title=f"patroni: group {group}")
        for column in ("member", "host:port", "role", "state", "timeline", "lag (bytes)"):
            table.add_column(column)
        for m in view.get("members", []):
            lag = m.get("lag")
            table.add_row(m.get("name", "?"), f"{m.get('host')}:{m.get('port')}", m.get("role", "?"),
                          m.get("state", "?"), str(m.get("timeline", "-")), "-" if lag in (None, "") else str(lag))  # fmt: skip
        console().print(table)
        if view.get("error"):
            console().print(f"[red]patroni of {group} unreachable:[/] {view['error']}")
    cluster = views.get("redis_cluster")
    if isinstance(cluster, dict):
        console().print(f"[red]redis cluster unreachable:[/] {cluster['error']}")
    elif cluster:
        covered = sum(n.slots for n in cluster if n.role == "master" and n.connected)
        table = Table(title=f"redis cluster: {covered} of 16384 slots served")
        for column in ("node", "address", "role", "master", "status", "slots", "ranges"):
            table.add_column(column)
        for n in cluster:
            status = "[green]connected[/]" if n.connected else f"[red]down[/] ({n.flags})"
            table.add_row(
                n.name or "-", n.address, n.role, n.master or "-", status, str(n.slots), " ".join(n.ranges) or "-"
            )
        console().print(table)


def _print_status(
    statuses: list[NodeStatus],
    as_json: bool,
    shards: list[dict[str, Any]] | None = None,
    engines: dict[str, Any] | None = None,
) -> None:
    from rich.table import Table

    if as_json:
        doc: dict[str, Any] = {"nodes": [s.as_dict() for s in statuses]}
        if shards:
            doc["shards"] = shards
        for key, view in (engines or {}).items():
            doc[key] = [n.as_dict() for n in view] if isinstance(view, list) else view
        print(json.dumps(doc, indent=2))
        return
    table = Table(title="dbscale topology")
    for column in ("node", "group", "role", "port", "status", "replay lag", "router"):
        table.add_column(column)
    for s in statuses:
        health = "[green]healthy[/]" if s.healthy else f"[red]down[/] {s.error or ''}".rstrip()
        lag = _fmt_lag(s) + (" (replay paused)" if s.replay_paused else "")
        table.add_row(s.name, s.group, s.role, str(s.port or "-"), health, lag, s.router or "-")
    console().print(table)
    if shards:
        _print_shards(shards)
    _print_engines(engines or {})


def _print_shards(shards: list[dict[str, Any]]) -> None:
    from rich.table import Table

    table = Table(title="shard groups")
    for column in ("group", "rows (estimate)", "skew (rows / mean)"):
        table.add_column(column)
    for row in shards:
        rows = "[red]down[/]" if row["rows"] is None else str(row["rows"])
        table.add_row(row["group"], rows, "-" if row["skew"] is None else f"{row['skew']:.2f}")
    console().print(table)


def _config_path(state_dir: Path | None, config: Path | None) -> Path:
    if state_dir is not None and config is not None:
        fail("pass either --state-dir or --config, not both", 2)
    if config is None:
        config = (state_dir or DEFAULT_STATE_DIR) / "dbscale.toml"
        if not config.exists():
            fail(
                f"no topology in {state_dir or DEFAULT_STATE_DIR} (run `dbscale up` first, or pass --config FILE)",
                EXIT_USAGE,
            )
    return config


@commands.command()
def up(
    replicas: Annotated[int | None, typer.Option(help="Streaming replicas of group main (default 2).", min=0)] = None,
    shards: Annotated[
        int | None, typer.Option(help="Shard groups shard0.. (default 0); writes the \\[sharding] section.", min=0)
    ] = None,
    shard_replicas: Annotated[
        int | None, typer.Option("--shard-replicas", help="Streaming replicas of every shard group (default 0).", min=0)
    ] = None,
    pgbouncer: Annotated[
        bool | None, typer.Option("--pgbouncer/--no-pgbouncer", help="PgBouncer (transaction mode) per primary.")
    ] = None,
    edge: Annotated[
        bool, typer.Option("--edge", help="Also nginx (proxy_cache) in front of a demo app: the HTTP edge tier.")
    ] = False,
    ha: Annotated[
        bool | None, typer.Option("--ha/--no-ha", help="Patroni + etcd run group main and fail over on their own.")
    ] = None,
    redis_cluster: Annotated[
        int | None, typer.Option("--redis-cluster", help="Also start a Redis Cluster of N masters (N >= 3).", min=0)
    ] = None,
    redis_cluster_replicas: Annotated[
        int | None, typer.Option("--redis-cluster-replicas", help="Replicas per Redis Cluster master.", min=0)
    ] = None,
    state_dir: StateDir = DEFAULT_STATE_DIR,
    as_json: JsonFlag = False,
) -> None:
    """Start (or restart what is down in) a local topology: PostgreSQL primary + replicas, shards, Redis, PgBouncer."""
    from dbscale.config import load_config
    from dbscale.probe import probe_shards, probe_topology

    topology = _local(state_dir)
    try:
        topology.up(
            replicas=replicas, shards=shards, pgbouncer=pgbouncer, shard_replicas=shard_replicas,
            ha=ha, redis_cluster=redis_cluster, redis_cluster_replicas=redis_cluster_replicas,
        )  # fmt: skip
    except KeyboardInterrupt as exc:
        fail(f"interrupted: {exc or 'nothing had been started'}", EXIT_INTERRUPTED)
    if not as_json:
        console().print(f"topology up; config written to [bold]{topology.config_path}[/]")
    if edge:
        url = topology.up_edge().url
        if not as_json:
            console().print(f"edge up: nginx at [bold]{url}[/] (try {url}/users/1) in front of the demo app")
    loaded = load_config(topology.config_path)
    statuses = probe_topology(loaded)
    _print_status(statuses, as_json, probe_shards(loaded), _engine_views(state_dir, loaded))
    _exit_for(statuses)


@commands.command()
def demo(
    state_dir: StateDir = DEFAULT_STATE_DIR,
    workload: Annotated[
        bool,
        typer.Option("--workload", help="Then load a shop dataset and measure each layer (YCSB A/B/C, HTML report)."),
    ] = False,
    duration: Annotated[float, typer.Option(help="Measured seconds per workload cell (--workload).", min=0.5)] = 2.0,
) -> None:
    """Run the demo on a local topology (started if needed): read-your-writes, routing, caching, metrics."""
    from dbscale.config import load_config
    from dbscale.demo import run_demo
    from dbscale.probe import probe_topology

    report = run_demo(state_dir, console())
    _print_status(probe_topology(load_config(state_dir / "dbscale.toml")), False)
    failures = list(report.failures)
    if workload:
        from dbscale.demo_workload.run import run_workload_demo

        failures += run_workload_demo(state_dir, console(), duration=duration).failures
    if failures:
        fail(f"{len(failures)} guarantee(s) did not hold: {'; '.join(failures)}")
    console().print(
        f"demo finished; the topology keeps running in {state_dir} (`dbscale down --state-dir {state_dir}` stops it)"
    )


@commands.command()
def down(
    state_dir: StateDir = DEFAULT_STATE_DIR,
    purge: Annotated[bool, typer.Option("--purge", help="Also delete the state dir (data, configs, logs).")] = False,
) -> None:
    """Stop every process of the local topology (and with --purge delete its state dir)."""
    topology = _local(state_dir)
    if not topology.exists():
        if purge and state_dir.exists():
            fail(f"{state_dir} holds no dbscale topology (no state.json); nothing stopped, nothing deleted", EXIT_USAGE)
        console().print(f"no topology in {state_dir}; nothing to stop")
        return
    topology.down(purge=purge)
    console().print(f"topology in {state_dir} stopped" + (" and purged" if purge else ""))


@commands.command()
def status(
    state_dir: Annotated[
        Path | None, typer.Option("--state-dir", help="Local topology dir (default .dbscale).")
    ] = None,
    config: Annotated[Path | None, typer.Option("--config", help="A dbscale.toml to probe instead.")] = None,
    as_json: JsonFlag = False,
) -> None:
    """Show every node: group, role, port, health, replay lag, the router's verdict; with \\[sharding], each shard
    group's estimated rows and skew; Patroni's view of each HA group; the local Redis Cluster's nodes and
    slots. Exit 1 if any node is down."""
    from dbscale.config import load_config
    from dbscale.probe import probe_shards, probe_topology

    if state_dir is not None:
        _local(state_dir)  # a file is a usage error
    topology = load_config(_config_path(state_dir, config))
    statuses = probe_topology(topology)
    local_dir = None if config is not None else (state_dir or DEFAULT_STATE_DIR)
    _print_status(statuses, as_json, probe_shards(topology), _engine_views(local_dir, topology))
    if not as_json:  # each write-behind table's queue depth, oldest pending change and dead letters
        from dbscale.cli_writes import print_status
        from dbscale.cluster import Cluster

        with Cluster(topology) as cluster:
            print_status(cluster)
    _exit_for(statuses)


@commands.command()
def top(
    state_dir: Annotated[
        Path | None, typer.Option("--state-dir", help="Local topology dir (default .dbscale).")
    ] = None,
    config: Annotated[Path | None, typer.Option("--config", help="Any dbscale.toml to watch instead.")] = None,
    interval: Annotated[float, typer.Option(help="Seconds between refreshes.", min=0.1)] = 0.5,
    metrics_url: Annotated[
        list[str] | None, typer.Option("--metrics-url", help="An app's Prometheus endpoint (repeatable).")
    ] = None,
    iterations: Annotated[int, typer.Option(help="Stop after this many refreshes (0: until q).", min=0)] = 0,
) -> None:
    """Live view: per-node queries/s, lag, connections and pool waits, cache hit rates per tier, projectors; q quits."""
    from dbscale.cli_top import run_top

    run_top(_config_path(state_dir, config), interval=interval, metrics_urls=metrics_url, iterations=iterations)


@commands.command("pgbouncer-config")
def pgbouncer_config(
    state_dir: Annotated[
        Path | None, typer.Option("--state-dir", help="Local topology dir (default .dbscale).")
    ] = None,
    config: Annotated[Path | None, typer.Option("--config", help="The dbscale.toml to generate for.")] = None,
    listen_port: Annotated[int, typer.Option(help="Port PgBouncer listens on.", min=1, max=65535)] = 6432,
    output_dir: Annotated[
        Path | None, typer.Option("--output-dir", help="Write pgbouncer.ini and userlist.txt (0600) here.")
    ] = None,
) -> None:
    """Print a pgbouncer.ini (transaction pooling) and userlist for the configured topology."""
    from dbscale.config import load_config
    from dbscale.routing import render_pgbouncer_config

    files = render_pgbouncer_config(load_config(_config_path(state_dir, config)), listen_port=listen_port)
    if output_dir is None:
        print("; ---- pgbouncer.ini ----")
        print(files.ini, end="")
        print("; ---- userlist.txt (keep private: mode 0600) ----")
        print(files.userlist, end="")
        return
    output_dir.mkdir(parents=True, exist_ok=True)
    (output_dir / "pgbouncer.ini").write_text(files.ini)
    userlist = output_dir / "userlist.txt"
    userlist.touch(mode=0o600)
    userlist.chmod(0o600)
    userlist.write_text(files.userlist)
    console().print(f"wrote {output_dir / 'pgbouncer.ini'} and {userlist} (0600)")


class NodeAction(enum.StrEnum):
    """What `dbscale node` can do to a node."""

    stop = "stop"
    kill = "kill"
    start = "start"
    pause_replay = "pause-replay"
    resume_replay = "resume-replay"
    promote = "promote"


def _node_command(action: NodeAction) -> Callable[..., None]:
    def command(
        name: Annotated[str, typer.Argument(help="Node name, e.g. main-replica1 (see `dbscale status`).")],
        state_dir: StateDir = DEFAULT_STATE_DIR,
    ) -> None:
        topology = _local(state_dir, must_exist=True)
        known = [n.name for n in topology.nodes()]
        if name not in known:
            fail(f"unknown node {name!r}; known nodes: {', '.join(known)}", EXIT_USAGE)
        getattr(topology, action.name)(name)
        console().print(f"{action.value}: {name} done")

    command.__doc__ = {
        NodeAction.stop: "Stop a node (fast shutdown).",
        NodeAction.kill: "Kill a node with SIGKILL (a crash).",
        NodeAction.start: "Start a stopped or killed node.",
        NodeAction.pause_replay: "Pause WAL replay on a replica (it falls behind).",
        NodeAction.resume_replay: "Resume WAL replay on a replica.",
        NodeAction.promote: "Promote a replica to primary (refused under --ha: Patroni promotes).",
    }[action]
    return command


for _action in NodeAction:
    node_app.command(_action.value)(_node_command(_action))

metrics_app = typer.Typer(help="Prometheus metrics of a topology.", no_args_is_help=True)
commands.add_typer(metrics_app, name="metrics")


@metrics_app.command("serve")
def metrics_serve(
    port: Annotated[int, typer.Option("--port", help="Port to serve /metrics on.", min=0, max=65535)] = 9187,
    host: Annotated[str, typer.Option("--host", help="Address to listen on.")] = "127.0.0.1",
    state_dir: Annotated[
        Path | None, typer.Option("--state-dir", help="Local topology dir (default .dbscale).")
    ] = None,
    config: Annotated[Path | None, typer.Option("--config", help="A dbscale.toml to monitor instead.")] = None,
) -> None:
    """A standalone exporter: health-check the topology and serve its metrics (Prometheus text) until Ctrl-C."""
    import threading
    from wsgiref.simple_server import WSGIRequestHandler, make_server

    from dbscale.cluster import Cluster
    from dbscale.config import load_config
    from dbscale.metrics import wsgi_app

    class _Quiet(WSGIRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:  # one line per scrape is noise
            pass

    cluster = Cluster(load_config(_config_path(state_dir, config)))
    try:
        cluster.start()
        try:
            server = make_server(host, port, wsgi_app(cluster.metrics), handler_class=_Quiet)
        except OSError as exc:
            fail(f"cannot listen on {host}:{port}: {exc.strerror}; pick another --port", EXIT_USAGE)
        console().print(f"serving metrics on http://{host}:{server.server_port}/metrics (Ctrl-C stops)")
        # Requests are served in a thread: wsgiref swallows a KeyboardInterrupt raised inside a request, so
        # Ctrl-C must land in this (main) thread, which only waits.
        serving = threading.Thread(target=server.serve_forever, name="dbscale-metrics", daemon=True)
        serving.start()
        try:
            while serving.is_alive():
                serving.join(0.2)
        finally:
            server.shutdown()
            server.server_close()
    except KeyboardInterrupt:
        console().print("stopped")
    finally:
        cluster.close()


def _one_line_warning(message: Warning | str, category: type[Warning], *args: Any, **kwargs: Any) -> None:
    print(f"dbscale: warning: {str(message).removeprefix('dbscale: ')}", file=sys.stderr)


register_load_command(commands)  # dbscale load FILE --table T


def main() -> None:
    """Console-script entry point: run the app, turning dbscale errors into one line on stderr."""
    warnings.showwarning = _one_line_warning
    try:
        app()
    except ConfigError as exc:
        print(f"dbscale: error: {exc}", file=sys.stderr)
        sys.exit(EXIT_USAGE)
    except DbscaleError as exc:
        print(f"dbscale: error: {exc}", file=sys.stderr)
        sys.exit(EXIT_DEGRADED)
    except KeyboardInterrupt:
        print("dbscale: interrupted", file=sys.stderr)
        sys.exit(EXIT_INTERRUPTED)


if __name__ == "__main__":
    main()
