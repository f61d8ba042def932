"""The ``dbscale`` command line: local topology, status, fault injection.

Errors the user can fix print one line on stderr (``dbscale: error: ...``) and exit 2 for bad
configuration or arguments, 1 for anything else dbscale reports; no traceback.
"""

from __future__ import annotations

import enum
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, NoReturn

import typer
from rich.console import Console
from rich.table import Table

from dbscale.cli_advise import advise as advise_command
from dbscale.cli_project import register as register_project_commands
from dbscale.config import load_config
from dbscale.errors import ConfigError, DbscaleError
from dbscale.local.topology import DEFAULT_STATE_DIR as LOCAL_STATE_DIR
from dbscale.probe import NodeStatus, probe_patroni, probe_redis_cluster, probe_topology

app = typer.Typer(
    name="dbscale",
    help="Scale a PostgreSQL-backed application: local topology, status, fault injection.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
node_app = typer.Typer(help="Fault injection on one node of the local topology.", no_args_is_help=True)
app.add_typer(node_app, name="node")

out = Console(highlight=False, width=None if sys.stdout.isatty() else 160)

StateDir = Annotated[Path, typer.Option("--state-dir", help="Where the local topology lives.")]
JsonFlag = Annotated[bool, typer.Option("--json", help="Print machine-readable JSON.")]
DEFAULT_STATE_DIR = Path(LOCAL_STATE_DIR)


def fail(message: str, code: int = 1) -> NoReturn:
    """Print one line on stderr and exit."""
    print(f"dbscale: error: {message}", file=sys.stderr)
    raise typer.Exit(code)


def _local(state_dir: Path) -> Any:
    from dbscale.local import LocalTopology

    return LocalTopology(state_dir=state_dir)


def _fmt_lag(status: NodeStatus) -> str:
    if status.lag_bytes is None and status.lag_seconds is None:
        return "-"
    size = "?" if status.lag_bytes is None else f"{status.lag_bytes} B"
    secs = "?" if status.lag_seconds is None else f"{status.lag_seconds:.2f} s"
    return f"{size} / {secs}"


def _engine_views(state_dir: Path | None, config: Any) -> dict[str, Any]:
    """Patroni's view of each HA group, and the local Redis Cluster's nodes and slots (if any)."""
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
    for group, view in views.get("patroni", {}).items():
        table = Table(title=f"patroni: group {group}")
        for column in ("member", "host:port", "role", "state", "timeline", "lag (bytes)"):
            table.add_column(column)
        for m in view.get("members", []):
            lag = m.get("lag")
            table.add_row(m.get("name", "?"), f"{m.get('host')}:{m.get('port')}", m.get("role", "?"),
                          m.get("state", "?"), str(m.get("timeline", "-")), "-" if lag in (None, "") else str(lag))  # fmt: skip
        out.print(table)
        if view.get("error"):
            out.print(f"[red]patroni of {group} unreachable:[/] {view['error']}")
    cluster = views.get("redis_cluster")
    if isinstance(cluster, dict):
        out.print(f"[red]redis cluster unreachable:[/] {cluster['error']}")
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
        out.print(table)


def _print_status(statuses: list[NodeStatus], as_json: bool, engines: dict[str, Any] | None = None) -> None:
    if as_json:
        doc: dict[str, Any] = {"nodes": [s.as_dict() for s in statuses]}
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
    out.print(table)
    _print_engines(engines or {})


def _config_path(state_dir: Path | None, config: Path | None) -> Path:
    if state_dir is not None and config is not None:
        fail("pass either --state-dir or --config, not both", 2)
    if config is None:
        config = (state_dir or DEFAULT_STATE_DIR) / "dbscale.toml"
        if not config.exists():
            fail(f"no topology in {state_dir or DEFAULT_STATE_DIR} (run `dbscale up` first, or pass --config FILE)")
    return config


@app.command()
def up(
    replicas: Annotated[int | None, typer.Option(help="Streaming replicas of group main (default 2).", min=0)] = None,
    shards: Annotated[
        int | None, typer.Option(help="Extra single-primary groups for sharding (default 0).", min=0)
    ] = None,
    pgbouncer: Annotated[
        bool | None, typer.Option("--pgbouncer/--no-pgbouncer", help="PgBouncer (transaction mode) per primary.")
    ] = None,
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
    topology = _local(state_dir)
    topology.up(
        replicas=replicas, shards=shards, pgbouncer=pgbouncer,
        ha=ha, redis_cluster=redis_cluster, redis_cluster_replicas=redis_cluster_replicas,
    )  # fmt: skip
    if not as_json:
        out.print(f"topology up; config written to [bold]{topology.config_path}[/]")
    config = load_config(topology.config_path)
    _print_status(probe_topology(config), as_json, _engine_views(state_dir, config))


@app.command()
def demo(state_dir: StateDir = DEFAULT_STATE_DIR) -> None:
    """Run the demo on a local topology (started if needed): read-your-writes, routing, caching, metrics."""
    from dbscale.demo import run_demo

    report = run_demo(state_dir, out)
    _print_status(probe_topology(load_config(state_dir / "dbscale.toml")), False)
    if report.failures:
        fail(f"{len(report.failures)} guarantee(s) did not hold: {'; '.join(report.failures)}")
    out.print(
        f"demo finished; the topology keeps running in {state_dir} (`dbscale down --state-dir {state_dir}` stops it)"
    )


@app.command()
def down(
    state_dir: StateDir = DEFAULT_STATE_DIR,
    purge: Annotated[bool, typer.Option("--purge", help="Also delete the state dir (data, configs, logs).")] = False,
) -> None:
    """Stop every process of the local topology (and with --purge delete its state dir)."""
    _local(state_dir).down(purge=purge)
    out.print(f"topology in {state_dir} stopped" + (" and purged" if purge else ""))


@app.command()
def status(
    state_dir: Annotated[
        Path | None, typer.Option("--state-dir", help="Local topology dir (default .dbscale).")
    ] = None,
    config: Annotated[Path | None, typer.Option("--config", help="A dbscale.toml to probe instead.")] = None,
    as_json: JsonFlag = False,
) -> None:
    """Show every node: group, role, port, health, replay lag (bytes and seconds), and the router's verdict.

    Also Patroni's view of each HA group and the local Redis Cluster's nodes and slots.
    """
    loaded = load_config(_config_path(state_dir, config))
    local_dir = None if config is not None else (state_dir or DEFAULT_STATE_DIR)
    _print_status(probe_topology(loaded), as_json, _engine_views(local_dir, loaded))


@app.command("pgbouncer-config")
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
    out.print(f"wrote {output_dir / 'pgbouncer.ini'} and {userlist} (0600)")


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
        topology = _local(state_dir)
        getattr(topology, action.name)(name)
        out.print(f"{action.value}: {name} done")

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

app.command("advise")(advise_command)
register_project_commands(app)  # dbscale init, dbscale project run | rebuild | status


def main() -> None:
    """Console-script entry point: run the app, turning dbscale errors into one line on stderr."""
    try:
        app()
    except ConfigError as exc:
        print(f"dbscale: error: {exc}", file=sys.stderr)
        sys.exit(2)
    except DbscaleError as exc:
        print(f"dbscale: error: {exc}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
