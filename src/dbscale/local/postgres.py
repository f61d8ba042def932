"""PostgreSQL nodes: initdb, configuration, base backups, start/stop, replay control, promotion.

A node's processes are found by executable and working directory (PostgreSQL chdirs to its data
directory), so children orphaned by a SIGKILLed postmaster are waited for before a restart;
otherwise the new postmaster refuses to start because the old shared memory is still attached.
"""

from __future__ import annotations

import os
import shutil
import signal
import time
from typing import Any

import psycopg

from dbscale.errors import LocalTopologyError
from dbscale.local import processes
from dbscale.local.runtime import Runtime, log_tail, make_private_dir, write_owned
from dbscale.local.service_user import run
from dbscale.local.state import DATABASE, HOST, USER, NodeInfo

CONF_NAME = "dbscale.conf"
STOP_TIMEOUT = 30.0

_HBA = """\
# Written by dbscale.local: TCP on loopback only, password (SCRAM) authentication.
local   all             all                             trust
local   replication     all                             trust
host    all             all             127.0.0.1/32    scram-sha-256
host    replication     all             127.0.0.1/32    scram-sha-256
"""


def node_conf(node: NodeInfo) -> str:
    """The settings dbscale adds to every node (included last from ``postgresql.conf``)."""
    return f"""\
# Written by dbscale.local for node {node.name}; a throwaway local server.
listen_addresses = '127.0.0.1'
port = {node.port}
unix_socket_directories = ''
max_connections = 200
shared_buffers = 32MB
fsync = off
wal_level = replica
max_wal_senders = 10
max_replication_slots = 10
hot_standby = on
hot_standby_feedback = on
wal_receiver_status_interval = 1s
wal_retrieve_retry_interval = 1s
shared_preload_libraries = 'pg_stat_statements'
cluster_name = 'dbscale-{node.name}'
logging_collector = off
"""


READY_MARKER = "initialized"


def is_initialized(node: NodeInfo) -> bool:
    """Whether the node's data directory was completely set up (initdb or base backup, then config).

    The marker is written last, so a directory left by an interrupted ``up`` is rebuilt.
    """
    return (node.node_dir / READY_MARKER).is_file() and (node.data_dir / "PG_VERSION").is_file()


def mark_initialized(node: NodeInfo, rt: Runtime) -> None:
    write_owned(node.node_dir / READY_MARKER, "", rt.user)


def _is_postmaster_of(pid: int, node: NodeInfo, rt: Runtime) -> bool:
    if not processes.is_process_of(pid, rt.binaries.postgres):
        return False
    cwd = processes.cwd_of(pid)
    return cwd is None or cwd == os.path.realpath(node.data_dir)


def pid(node: NodeInfo, rt: Runtime) -> int | None:
    """The live postmaster pid of ``node``, or None."""
    candidate = processes.read_pidfile(node.data_dir / "postmaster.pid")
    if candidate is not None and _is_postmaster_of(candidate, node, rt):
        return candidate
    return None


def all_pids(node: NodeInfo, rt: Runtime) -> list[int]:
    """The postmaster and every other live process working in the node's data directory."""
    found = set(processes.pids_in_dir(node.data_dir, rt.binaries.postgres))
    main = pid(node, rt)
    if main is not None:
        found.add(main)
    return sorted(found)


def _write_conf(node: NodeInfo, rt: Runtime) -> None:
    write_owned(node.data_dir / CONF_NAME, node_conf(node), rt.user)
    write_owned(node.data_dir / "pg_hba.conf", _HBA, rt.user)
    main_conf = node.data_dir / "postgresql.conf"
    text = main_conf.read_text()
    include = f"include '{CONF_NAME}'"
    if include not in text:
        write_owned(main_conf, text.rstrip("\n") + f"\n\n{include}\n", rt.user)


def init_primary(node: NodeInfo, rt: Runtime) -> None:
    """initdb a new cluster with superuser ``dbscale`` and the generated password."""
    make_private_dir(node.node_dir, rt.user)
    (node.node_dir / READY_MARKER).unlink(missing_ok=True)
    if node.data_dir.exists():
        shutil.rmtree(node.data_dir)  # a partial initdb from an interrupted run
    pwfile = node.node_dir / "initdb.pw"
    write_owned(pwfile, rt.password + "\n", rt.user)
    try:
        run(
            [rt.binaries.initdb, "-D", node.data_dir, "-U", USER, f"--pwfile={pwfile}",
             "--auth-local=trust", "--auth-host=scram-sha-256", "-E", "UTF8", "--locale=C",
             "--no-sync", "--no-instructions"],
            user=rt.user, cwd=node.node_dir, what=f"initdb for {node.name}",
        )  # fmt: skip
    finally:
        pwfile.unlink(missing_ok=True)
    _write_conf(node, rt)
    mark_initialized(node, rt)


def basebackup(replica: NodeInfo, primary: NodeInfo, rt: Runtime) -> None:
    """Clone ``primary`` into the replica's data directory as a streaming standby on its slot."""
    assert replica.slot is not None
    make_private_dir(replica.node_dir, rt.user)
    (replica.node_dir / READY_MARKER).unlink(missing_ok=True)
    if replica.data_dir.exists():
        shutil.rmtree(replica.data_dir)
    run(
        [rt.binaries.pg_basebackup, "-h", HOST, "-p", str(primary.port), "-U", USER,
         "-D", replica.data_dir, "-R", "-S", replica.slot, "-X", "stream", "-c", "fast", "--no-sync"],
        user=rt.user, cwd=replica.node_dir, env={"PGPASSWORD": rt.password, "PGAPPNAME": replica.name},
        what=f"pg_basebackup for {replica.name}",
    )  # fmt: skip
    _write_conf(replica, rt)
    mark_initialized(replica, rt)


def clear_leftovers(node: NodeInfo, rt: Runtime) -> None:
    """Wait for (then kill) processes left by a killed postmaster, and drop its stale pid file."""
    leftovers = processes.pids_in_dir(node.data_dir, rt.binaries.postgres)
    if leftovers:
        remaining = processes.wait_gone(leftovers, 10.0)
        if remaining:
            processes.terminate(remaining, signal.SIGKILL, 5.0)
    # No process works in the data directory any more, so the pid file is stale for sure.
    (node.data_dir / "postmaster.pid").unlink(missing_ok=True)


def start(node: NodeInfo, rt: Runtime, timeout: float = 60.0) -> None:
    """Start ``node`` (no-op if running) and return once it accepts connections."""
    if pid(node, rt) is not None:
        return
    if not is_initialized(node):
        raise LocalTopologyError(f"{node.name} has no data directory at {node.data_dir}: run `dbscale up`")
    clear_leftovers(node, rt)
    try:
        run(
            [rt.binaries.pg_ctl, "start", "-D", node.data_dir, "-l", node.log_path, "-w",
             "-t", str(int(timeout)), "-s"],
            user=rt.user, cwd=node.node_dir, timeout=timeout + 10, what=f"starting {node.name}",
        )  # fmt: skip
    except LocalTopologyError as exc:
        raise LocalTopologyError(f"{exc}\n{log_tail(node.log_path)}") from None
    wait_accepting(node, rt.password, timeout)


def stop(node: NodeInfo, rt: Runtime, timeout: float = STOP_TIMEOUT) -> None:
    """Fast shutdown (SIGINT), SIGKILL after ``timeout``; return once every process is gone."""
    main = pid(node, rt)
    if main is not None:
        processes.send_signal([main], signal.SIGINT)
        processes.send_signal([main], signal.SIGCONT)  # in case a test froze it with SIGSTOP
        if processes.wait_gone([main], timeout):
            processes.send_signal([main], signal.SIGKILL)
    left = processes.wait_gone(processes.pids_in_dir(node.data_dir, rt.binaries.postgres), 10.0)
    if left:
        left = processes.terminate(left, signal.SIGKILL, 5.0)
    if left:
        raise LocalTopologyError(f"{node.name}: processes {left} did not exit even after SIGKILL")


def kill(node: NodeInfo, rt: Runtime) -> int | None:
    """SIGKILL the postmaster (its children notice and exit on their own); return its pid."""
    return processes.sigkill(pid(node, rt))


def connect(node: NodeInfo, password: str, dbname: str = DATABASE, timeout: int = 3) -> psycopg.Connection[Any]:
    """An autocommit superuser connection to ``node``."""
    try:
        return psycopg.connect(
            host=HOST, port=node.port, user=USER, password=password, dbname=dbname,
            connect_timeout=timeout, autocommit=True, application_name="dbscale-local",
        )  # fmt: skip
    except psycopg.Error as exc:
        raise LocalTopologyError(f"cannot connect to {node.name} on port {node.port}: {exc}") from exc


def query_one(node: NodeInfo, password: str, sql: str, dbname: str = DATABASE) -> Any:
    """Run ``sql`` on ``node`` and return the first column of the first row (or None)."""
    try:
        with connect(node, password, dbname) as conn:
            cur = conn.execute(sql)
            row = cur.fetchone() if cur.description is not None else None
    except psycopg.Error as exc:
        raise LocalTopologyError(f"{node.name}: {sql!r} failed: {exc}") from exc
    return None if row is None else row[0]


def wait_accepting(node: NodeInfo, password: str, timeout: float) -> None:
    """Poll until ``node`` accepts an authenticated connection."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            query_one(node, password, "SELECT 1", dbname="postgres")
            return
        except LocalTopologyError as exc:
            if time.monotonic() >= deadline:
                raise LocalTopologyError(f"{exc}\n{log_tail(node.log_path)}") from None
        time.sleep(0.05)


def ensure_database(primary: NodeInfo, password: str) -> None:
    """Create database ``dbscale`` (with pg_stat_statements and HypoPG) if missing."""
    exists = query_one(primary, password, f"SELECT 1 FROM pg_database WHERE datname = '{DATABASE}'", "postgres")
    if not exists:
        query_one(primary, password, f"CREATE DATABASE {DATABASE}", "postgres")
    query_one(primary, password, "CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
    query_one(primary, password, "CREATE EXTENSION IF NOT EXISTS hypopg")  # `dbscale advise`


def ensure_slot(primary: NodeInfo, password: str, slot: str) -> None:
    """Create the physical replication slot ``slot`` on ``primary`` if missing."""
    with connect(primary, password, "postgres") as conn:
        try:
            row = conn.execute("SELECT 1 FROM pg_replication_slots WHERE slot_name = %s", (slot,)).fetchone()
            if row is None:
                conn.execute("SELECT pg_create_physical_replication_slot(%s, true)", (slot,))  # reserve WAL now
        except psycopg.Error as exc:
            raise LocalTopologyError(f"{primary.name}: cannot create replication slot {slot}: {exc}") from exc


def wal_receiver_status(node: NodeInfo, password: str) -> str | None:
    """``pg_stat_wal_receiver.status`` on a standby (None when no receiver runs)."""
    status = query_one(node, password, "SELECT status FROM pg_stat_wal_receiver")
    return None if status is None else str(status)


def wait_streaming(node: NodeInfo, password: str, timeout: float = 60.0) -> None:
    """Poll until the standby's WAL receiver is streaming."""
    deadline = time.monotonic() + timeout
    status: str | None = None
    while time.monotonic() < deadline:
        status = wal_receiver_status(node, password)
        if status == "streaming":
            return
        time.sleep(0.1)
    raise LocalTopologyError(
        f"{node.name} is not streaming after {timeout:.0f}s (WAL receiver status: {status}); is "
        f"{node.upstream} running?\n{log_tail(node.log_path)}"
    )


def in_recovery(node: NodeInfo, password: str) -> bool:
    """Whether the node is a standby (``pg_is_in_recovery()``)."""
    return bool(query_one(node, password, "SELECT pg_is_in_recovery()"))


def replay_pause_state(node: NodeInfo, password: str) -> str:
    """``pg_get_wal_replay_pause_state()``: not paused, pause requested, or paused."""
    return str(query_one(node, password, "SELECT pg_get_wal_replay_pause_state()"))


def _require_standby(node: NodeInfo, password: str, action: str) -> None:
    if not in_recovery(node, password):
        raise LocalTopologyError(f"cannot {action} {node.name}: it is a primary, not a replica")


def pause_replay(node: NodeInfo, password: str, timeout: float = 30.0) -> None:
    """Pause WAL replay and return once the standby reports ``paused``."""
    _require_standby(node, password, "pause replay on")
    query_one(node, password, "SELECT pg_wal_replay_pause()")
    deadline = time.monotonic() + timeout
    while replay_pause_state(node, password) != "paused":
        if time.monotonic() >= deadline:
            raise LocalTopologyError(f"{node.name}: replay did not pause within {timeout:.0f}s")
        time.sleep(0.02)


def resume_replay(node: NodeInfo, password: str) -> None:
    """Resume WAL replay (no-op when it is not paused)."""
    _require_standby(node, password, "resume replay on")
    query_one(node, password, "SELECT pg_wal_replay_resume()")


def promote(node: NodeInfo, password: str, timeout: float = 60.0) -> None:
    """Promote a standby and return once it is out of recovery."""
    _require_standby(node, password, "promote")
    query_one(node, password, f"SELECT pg_promote(true, {int(timeout)})")
    deadline = time.monotonic() + timeout
    while in_recovery(node, password):
        if time.monotonic() >= deadline:
            raise LocalTopologyError(f"{node.name} still in recovery {timeout:.0f}s after pg_promote()")
        time.sleep(0.05)
