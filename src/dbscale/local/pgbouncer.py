"""One PgBouncer per group primary, in transaction pooling mode with SCRAM authentication.

``pgbouncer -d`` exits 0 even when the daemon dies right after (e.g. it cannot open its log), so
a start only counts once a real query has gone through it.
"""

from __future__ import annotations

import time

import psycopg

from dbscale import pgbouncer as pgbouncer_config
from dbscale.errors import LocalTopologyError
from dbscale.local import processes
from dbscale.local.runtime import Runtime, log_tail, make_private_dir, write_owned
from dbscale.local.service_user import run
from dbscale.local.state import DATABASE, HOST, USER, NodeInfo

STOP_TIMEOUT = 10.0


def render_ini(node: NodeInfo, target_port: int) -> str:
    """The ``pgbouncer.ini`` for ``node``, pooling for the primary on ``target_port`` (library renderer)."""
    d = node.node_dir
    return pgbouncer_config.render_ini(
        {DATABASE: f"host={HOST} port={target_port} dbname={DATABASE}", "*": f"host={HOST} port={target_port}"},
        listen_addr=HOST,
        listen_port=node.port,
        auth_file=str(d / "userlist.txt"),
        header=f";; Written by dbscale.local for {node.name}.",
        unix_socket_dir="",
        admin_users=USER,
        min_pool_size=2,
        logfile=str(node.log_path),
        pidfile=str(d / "pgbouncer.pid"),
    )


def render_userlist(password: str) -> str:
    """The auth file: the superuser with its plain password (lets PgBouncer do SCRAM both ways)."""
    return pgbouncer_config.render_userlist({USER: password})


def pid(node: NodeInfo, rt: Runtime) -> int | None:
    """The live pgbouncer pid, or None."""
    assert rt.binaries.pgbouncer is not None
    return processes.live_pid_from_file(node.node_dir / "pgbouncer.pid", rt.binaries.pgbouncer)


def write_config(node: NodeInfo, rt: Runtime, target_port: int) -> None:
    """Write the ini and userlist files, owned by the service user."""
    make_private_dir(node.node_dir, rt.user)
    write_owned(node.node_dir / "userlist.txt", render_userlist(rt.password), rt.user)
    write_owned(node.node_dir / "pgbouncer.ini", render_ini(node, target_port), rt.user)


def _query_through(node: NodeInfo, password: str) -> str | None:
    """Run ``SELECT 1`` through the bouncer; return the error text, or None on success."""
    try:
        with psycopg.connect(
            host=HOST, port=node.port, user=USER, password=password, dbname=DATABASE,
            connect_timeout=2, prepare_threshold=None, autocommit=True,
        ) as conn:  # fmt: skip
            conn.execute("SELECT 1").fetchone()
    except psycopg.Error as exc:
        return str(exc).strip()
    return None


def start(node: NodeInfo, rt: Runtime, target_port: int, timeout: float = 30.0) -> None:
    """Start PgBouncer (no-op if running) and return once a query goes through it."""
    assert rt.binaries.pgbouncer is not None
    if pid(node, rt) is not None:
        return
    write_config(node, rt, target_port)
    (node.node_dir / "pgbouncer.pid").unlink(missing_ok=True)  # stale: no live pgbouncer owns it
    run(
        [rt.binaries.pgbouncer, "-d", node.node_dir / "pgbouncer.ini"],
        user=rt.user, cwd=node.node_dir, what=f"starting {node.name}",
    )  # fmt: skip
    deadline = time.monotonic() + timeout
    while True:
        error = _query_through(node, rt.password) if pid(node, rt) is not None else "process not running"
        if error is None:
            return
        if time.monotonic() >= deadline:
            raise LocalTopologyError(
                f"{node.name} on port {node.port} is not serving queries after {timeout:.0f}s "
                f"({error})\n{log_tail(node.log_path)}"
            )
        time.sleep(0.05)


def stop(node: NodeInfo, rt: Runtime, timeout: float = STOP_TIMEOUT) -> None:
    """SIGTERM (immediate shutdown), SIGKILL after ``timeout``; return once the process is gone."""
    processes.stop_main(node.name, pid(node, rt), timeout)


def kill(node: NodeInfo, rt: Runtime) -> int | None:
    """SIGKILL pgbouncer; return its pid."""
    return processes.sigkill(pid(node, rt))
