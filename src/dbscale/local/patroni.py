"""Patroni-managed PostgreSQL nodes for ``dbscale up --ha``: Patroni promotes, dbscale never does.

Theory of operation: each PostgreSQL node of group ``main`` gets one Patroni process (run as the
service user, like PostgreSQL) with a generated ``patroni.yml``; the members share a leader lock in
the topology's etcd (:mod:`dbscale.local.etcd`). The first member bootstraps the cluster (initdb),
the others are cloned by Patroni itself (``pg_basebackup``) and stream from the leader through
Patroni-managed slots. When the leader dies, its lock expires after ``ttl`` seconds and Patroni
promotes the synchronous standby.

* **No acknowledged write is lost**: ``synchronous_mode`` is on, so a commit returns only after the
  synchronous standby has the WAL, and Patroni fails over only to that standby.
* **Failover time**: ``ttl`` (10 s) bounds how long the dead leader's lock lives, ``loop_wait``
  (1 s) how quickly a replica notices; measured ~10-15 s here (see the README's HA section).
* **PgBouncer follows the leader by a Patroni callback**: each member's ``callback.sh`` runs on
  ``on_start`` / ``on_role_change``; when its own member becomes the leader it swaps in the
  pre-rendered ``pgbouncer.ini`` that points at that member and sends PgBouncer SIGHUP (a reload
  drops server connections to the old address). PgBouncer 1.18 has no ``target_session_attrs``, and
  Patroni only knows who leads at the moment of promotion, so the callback is the one place that
  re-points it without a poller of our own.
* **The router needs nothing from Patroni**: it finds the writer by ``pg_is_in_recovery()`` and
  the timeline (:func:`dbscale.routing.core.elect_writer`), so the promoted replica becomes the
  writer on the next health round. ``[groups.main] patroni = [...]`` in ``dbscale.toml`` lists the
  REST APIs so ``dbscale status`` can show Patroni's own view.
"""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from dbscale.engines import patroni_cluster
from dbscale.errors import LocalTopologyError
from dbscale.local import etcd, pgbouncer, postgres, processes
from dbscale.local.binaries import find_binary
from dbscale.local.runtime import Runtime, log_tail, make_private_dir, write_owned
from dbscale.local.service_user import spawn
from dbscale.local.state import HOST, USER, NodeInfo

CONFIG_NAME = "patroni.yml"
CALLBACK_NAME = "callback.sh"
STOP_TIMEOUT = 40.0
#: Leader lock lifetime, Patroni's loop interval and DCS retry timeout (``loop_wait + 2 * retry_timeout <= ttl``).
TTL, LOOP_WAIT, RETRY_TIMEOUT = 10, 1, 4
LEADER_ROLES = ("leader", "master", "primary", "standby_leader")


def scope(group: str) -> str:
    """The Patroni cluster name (``scope``) of a group."""
    return f"dbscale-{group}"


def api_url(node: NodeInfo) -> str:
    """The base URL of the node's Patroni REST API."""
    return f"http://{HOST}:{node.api_port}"


def bouncer_target_file(bouncer: NodeInfo, member: NodeInfo) -> Path:
    """The pre-rendered ``pgbouncer.ini`` that points PgBouncer at ``member`` (the callback swaps it in)."""
    return bouncer.node_dir / f"for-{member.name}.ini"


def render_config(node: NodeInfo, rt: Runtime, etcd_port: int) -> str:
    """The ``patroni.yml`` of ``node`` (JSON, which is YAML too)."""
    assert node.group is not None and node.api_port is not None
    auth = {"username": USER, "password": rt.password}
    doc: dict[str, Any] = {
        "scope": scope(node.group),
        "namespace": "/dbscale/",
        "name": node.name,
        "log": {"level": "INFO"},
        "restapi": {"listen": f"{HOST}:{node.api_port}", "connect_address": f"{HOST}:{node.api_port}"},
        "etcd3": {"hosts": [f"{HOST}:{etcd_port}"]},
        "bootstrap": {
            "dcs": {
                "ttl": TTL,
                "loop_wait": LOOP_WAIT,
                "retry_timeout": RETRY_TIMEOUT,
                "maximum_lag_on_failover": 1 << 20,
                "synchronous_mode": True,
                "postgresql": {
                    "use_pg_rewind": True,
                    "use_slots": True,
                    "parameters": {
                        "max_connections": 200,
                        "max_wal_senders": 10,
                        "max_replication_slots": 10,
                        "wal_level": "replica",
                        "wal_log_hints": "on",
                        "hot_standby": "on",
                        "shared_preload_libraries": "pg_stat_statements",
                    },
                },
            },
            "initdb": [{"encoding": "UTF8"}, {"locale": "C"}, {"auth-host": "scram-sha-256"}, {"auth-local": "trust"}],
        },
        "postgresql": {
            "listen": f"{HOST}:{node.port}",
            "connect_address": f"{HOST}:{node.port}",
            "data_dir": str(node.data_dir),
            "bin_dir": str(rt.binaries.postgres.parent),
            "pgpass": str(node.node_dir / "pgpass"),
            "authentication": {"superuser": auth, "replication": auth},
            "basebackup": [{"checkpoint": "fast"}],  # the default spread checkpoint takes minutes
            "parameters": {
                "unix_socket_directories": "",
                "shared_buffers": "32MB",
                "fsync": "off",
                "hot_standby_feedback": "on",
                "wal_receiver_status_interval": "1s",
                "wal_retrieve_retry_interval": "1s",
                "logging_collector": "on",
                "log_directory": str(node.node_dir),
                "log_filename": node.log_path.name,
                "log_file_mode": "0640",
            },
            "pg_hba": [
                "local all all trust",
                "local replication all trust",
                f"host all all {HOST}/32 scram-sha-256",
                f"host replication all {HOST}/32 scram-sha-256",
            ],
            "callbacks": {action: str(node.node_dir / CALLBACK_NAME) for action in ("on_start", "on_role_change")},
        },
        "watchdog": {"mode": "off"},
    }
    return json.dumps(doc, indent=2) + "\n"


def render_callback(node: NodeInfo, bouncer: NodeInfo | None) -> str:
    """The callback Patroni runs as ``callback.sh ACTION ROLE SCOPE``: re-point PgBouncer at this node when it leads."""
    lines = [
        "#!/bin/sh",
        f"# Written by dbscale.local for {node.name}. Patroni runs it as: {CALLBACK_NAME} ACTION ROLE SCOPE.",
        "# When this member becomes the leader, PgBouncer is pointed at it (config swap, then SIGHUP = reload).",
        'case "$1:$2" in on_start:master|on_start:primary|on_role_change:master|on_role_change:primary) ;; *) exit 0 ;; esac',
    ]
    if bouncer is not None:
        target, ini, pidfile = (
            bouncer_target_file(bouncer, node),
            bouncer.node_dir / "pgbouncer.ini",
            bouncer.node_dir / "pgbouncer.pid",
        )
        lines += [
            f"[ -f '{target}' ] || exit 0",
            f"cp '{target}' '{ini}.new' && mv '{ini}.new' '{ini}' || exit 1",
            f'PID=$(head -n 1 \'{pidfile}\' 2>/dev/null) && [ -n "$PID" ] && kill -HUP "$PID" 2>/dev/null',
        ]
    lines.append("exit 0")
    return "\n".join(lines) + "\n"


def pid(node: NodeInfo) -> int | None:
    """The live Patroni pid of ``node``, or None."""
    return processes.live_pid_running(node.node_dir / "patroni.pid", str(node.node_dir / CONFIG_NAME))


def start(node: NodeInfo, rt: Runtime, etcd_port: int, bouncer: NodeInfo | None) -> None:
    """Write the config and callback and start Patroni (no-op if running); it starts PostgreSQL itself."""
    if pid(node) is not None:
        return
    make_private_dir(node.node_dir, rt.user)
    write_owned(node.node_dir / CONFIG_NAME, render_config(node, rt, etcd_port), rt.user)
    write_owned(node.node_dir / CALLBACK_NAME, render_callback(node, bouncer), rt.user, mode=0o700)
    postgres.clear_leftovers(node, rt)  # a SIGKILLed postmaster's children hold its shared memory
    spawn(
        [find_binary("patroni"), node.node_dir / CONFIG_NAME],
        user=rt.user, cwd=node.node_dir, log_path=node.node_dir / "patroni.log", pidfile=node.node_dir / "patroni.pid",
    )  # fmt: skip


def stop(node: NodeInfo, rt: Runtime, timeout: float = STOP_TIMEOUT) -> None:
    """Stop Patroni (SIGTERM: it shuts PostgreSQL down and hands the lock over), then make sure PostgreSQL is gone."""
    processes.stop_main(f"patroni of {node.name}", pid(node), timeout)
    postgres.stop(node, rt)


def kill(node: NodeInfo, rt: Runtime) -> int | None:
    """A crash of the whole member: SIGKILL Patroni, then the postmaster; return the postmaster's pid."""
    processes.sigkill(pid(node))
    return postgres.kill(node, rt)


def get(node: NodeInfo, path: str, timeout: float = 2.0) -> Any:
    """``GET`` a Patroni REST endpoint of ``node`` and return its JSON (raises OSError when unreachable)."""
    try:
        with urllib.request.urlopen(api_url(node) + path, timeout=timeout) as resp:
            return json.loads(resp.read())
    except urllib.error.HTTPError as exc:  # /primary answers 503 on a replica, with the same JSON body
        return json.loads(exc.read() or b"{}")
    except ValueError as exc:
        raise OSError(f"Patroni on {api_url(node)} answered no JSON: {exc}") from exc


def cluster_view(members: Sequence[NodeInfo], timeout: float = 2.0) -> dict[str, Any]:
    """Patroni's ``GET /cluster`` from the first running member that answers (``{"error": ...}`` if none)."""
    return patroni_cluster([api_url(m) for m in members if pid(m) is not None], timeout)


def leader(view: dict[str, Any]) -> str | None:
    """The member name holding the leader lock in a ``/cluster`` view, if it is running."""
    for m in view.get("members", []):
        if m.get("role") in LEADER_ROLES and m.get("state") == "running":
            return str(m["name"])
    return None


def wait_leader(members: Sequence[NodeInfo], rt: Runtime, timeout: float) -> NodeInfo:
    """Wait until one member leads and its PostgreSQL accepts connections; return it."""
    deadline = time.monotonic() + timeout
    while True:
        name = leader(cluster_view(members))
        if name is not None:
            node = next(m for m in members if m.name == name)
            postgres.wait_accepting(node, rt.password, max(1.0, deadline - time.monotonic()))
            return node
        if time.monotonic() >= deadline:
            logs = "\n".join(log_tail(m.node_dir / "patroni.log", 8) for m in members)
            raise LocalTopologyError(f"Patroni elected no leader for {members[0].group} within {timeout:.0f}s\n{logs}")
        time.sleep(0.2)


def published_state(node: NodeInfo) -> str | None:
    """The state ``node`` has published in the DCS, as ``/cluster`` shows it to everyone (None if absent)."""
    for m in cluster_view([node], 1.0).get("members", []):
        if m.get("name") == node.name:
            return str(m.get("state"))
    return None


def wait_member(node: NodeInfo, rt: Runtime, timeout: float) -> None:
    """Wait until Patroni reports ``node`` running, in the DCS too, and its PostgreSQL accepts connections.

    A member's own ``/patroni`` says running one HA loop before its key in etcd does, and
    ``/cluster`` (what ``dbscale status`` and the other members see) reads the key.
    """
    deadline = time.monotonic() + timeout
    while True:
        try:
            state = get(node, "/patroni", 1.0).get("state")
            if state == "running" and published_state(node) != "running":
                state = "running (not yet published)"
        except OSError:
            state = None
        if state == "running":
            postgres.wait_accepting(node, rt.password, max(1.0, deadline - time.monotonic()))
            return
        if time.monotonic() >= deadline or pid(node) is None:
            raise LocalTopologyError(
                f"Patroni did not bring {node.name} up within {timeout:.0f}s (state: {state})\n"
                f"{log_tail(node.node_dir / 'patroni.log')}"
            )
        time.sleep(0.2)


def converge(
    members: Sequence[NodeInfo], etcd_node: NodeInfo, bouncer: NodeInfo | None, rt: Runtime, timeout: float
) -> NodeInfo:
    """Bring etcd and every member's Patroni up (bootstrapping on first use); return the leader.

    On first use the configured primary bootstraps alone, so it becomes the leader and the node
    names match the roles at the start; afterwards every member starts at once and whoever holds
    the lock leads. The database, extensions and slots are created on the leader.
    """
    etcd.start(etcd_node, rt, timeout)
    if bouncer is not None:  # the files the callbacks swap in, one per possible leader
        make_private_dir(bouncer.node_dir, rt.user)
        for member in members:
            write_owned(bouncer_target_file(bouncer, member), pgbouncer.render_ini(bouncer, member.port), rt.user)
    first = members[0]
    if not any(postgres.is_initialized(m) for m in members):
        start(first, rt, etcd_node.port, bouncer)
        wait_leader([first], rt, timeout)
    for member in members:
        start(member, rt, etcd_node.port, bouncer)
    lead = wait_leader(members, rt, timeout)
    postgres.ensure_database(lead, rt.password)
    for member in members:
        if member is not lead:
            wait_member(member, rt, timeout)
            postgres.wait_streaming(member, rt.password, timeout)
        if not postgres.is_initialized(member):
            postgres.mark_initialized(member, rt)
    wait_sync_standby(members, timeout)
    if bouncer is not None:
        pgbouncer.start(bouncer, rt, lead.port, timeout)
    return lead


def wait_sync_standby(members: Sequence[NodeInfo], timeout: float) -> str:
    """Wait until Patroni names a synchronous standby (from then on no acknowledged write can be lost); return it.

    Patroni picks one on a loop after a replica streams, so a just-started group runs a moment without.
    """
    deadline = time.monotonic() + timeout
    while True:
        view = cluster_view(members)
        sync = [m["name"] for m in view.get("members", []) if m.get("role") == "sync_standby"]
        if sync:
            return str(sync[0])
        if time.monotonic() >= deadline:
            raise LocalTopologyError(
                f"Patroni named no synchronous standby for {members[0].group} within {timeout:.0f}s: "
                f"{view.get('members') or view.get('error')}"
            )
        time.sleep(0.2)
