"""The CLI end to end on real servers: `dbscale up` / `status` / `node` / `down`."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from dbscale.config import load_config
from dbscale.local import LocalTopology
from dbscale.probe import probe_topology

from ..conftest import make_state_dir

pytestmark = pytest.mark.integration


def dbscale(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "dbscale.cli", *args], capture_output=True, text=True, timeout=180, check=False
    )


def processes_mentioning(needle: str) -> list[int]:
    """Pids of live processes whose command line or working directory mentions ``needle``."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            cmdline = Path(f"/proc/{entry}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            state = Path(f"/proc/{entry}/stat").read_text().split(") ", 1)[1][0]
            cwd = os.readlink(f"/proc/{entry}/cwd")
        except (OSError, IndexError):
            continue
        if state != "Z" and (needle in cmdline or needle in cwd):
            found.append(int(entry))
    return found


def test_status_json_shows_every_node_healthy_and_replica_lag(local_topology: LocalTopology) -> None:
    result = dbscale("status", "--state-dir", str(local_topology.state_dir), "--json")
    assert result.returncode == 0, result.stderr
    nodes = {n["name"]: n for n in json.loads(result.stdout)["nodes"]}
    assert set(nodes) == {
        "main-primary",
        "main-replica1",
        "main-replica2",
        "pgbouncer-main",
        "shard0-primary",
        "pgbouncer-shard0",
        "shard1-primary",
        "pgbouncer-shard1",
        "redis",
    }
    assert all(n["healthy"] for n in nodes.values()), nodes
    for name in ("main-replica1", "main-replica2"):
        assert nodes[name]["role"] == "replica"
        assert isinstance(nodes[name]["lag_bytes"], int)
        assert isinstance(nodes[name]["lag_seconds"], float)
    assert nodes["main-primary"]["lag_bytes"] is None
    assert nodes["main-primary"]["router"] == "writes"
    assert nodes["main-replica1"]["router"] == nodes["main-replica2"]["router"] == "reads", nodes
    assert {n["port"] for n in nodes.values()} == {node.port for node in local_topology.nodes()}


def test_status_reports_paused_replica_lag_in_bytes(restore_topology: LocalTopology) -> None:
    topology = restore_topology
    topology.pause_replay("main-replica2")
    import psycopg

    with psycopg.connect(topology.url("main-primary"), autocommit=True) as conn:
        conn.execute("CREATE TABLE IF NOT EXISTS cli_lag (x int)")
        conn.execute("INSERT INTO cli_lag SELECT generate_series(1, 20000)")
    result = dbscale("status", "--config", str(topology.config_path), "--json")
    nodes = {n["name"]: n for n in json.loads(result.stdout)["nodes"]}
    assert nodes["main-replica2"]["lag_bytes"] > 100_000
    topology.resume_replay("main-replica2")


@pytest.fixture
def cli_state_dir() -> Iterator[Path]:
    path = make_state_dir("dbscale-cli-")
    yield path
    dbscale("down", "--state-dir", str(path), "--purge")
    shutil.rmtree(path, ignore_errors=True)


def test_up_kill_up_down_through_the_cli(cli_state_dir: Path) -> None:
    state = str(cli_state_dir)
    result = dbscale("up", "--replicas", "1", "--shards", "1", "--pgbouncer", "--state-dir", state, "--json")
    assert result.returncode == 0, result.stderr
    assert all(n["healthy"] for n in json.loads(result.stdout[result.stdout.index("{") :])["nodes"])
    assert (cli_state_dir / "dbscale.toml").stat().st_mode & 0o777 == 0o600
    before = processes_mentioning(state)
    assert len(before) >= 5, "expected postgres, redis and pgbouncer processes of this topology"

    assert dbscale("node", "kill", "main-replica1", "--state-dir", state).returncode == 0
    down = json.loads(dbscale("status", "--state-dir", state, "--json").stdout)["nodes"]
    assert not next(n for n in down if n["name"] == "main-replica1")["healthy"]

    assert dbscale("up", "--state-dir", state).returncode == 0  # restarts only the killed node
    again = json.loads(dbscale("status", "--state-dir", state, "--json").stdout)["nodes"]
    assert all(n["healthy"] for n in again), again

    result = dbscale("down", "--state-dir", state)
    assert result.returncode == 0, result.stderr
    assert processes_mentioning(state) == []
    assert set(before).isdisjoint(processes_mentioning(state))


def _as_postgres_user(action: str, state: str) -> None:
    """In a spawned child: drop root for the ``postgres`` user, then run a LocalTopology action."""
    import codecs
    import pwd

    from dbscale.local import LocalTopology

    codecs.lookup("idna")  # socket looks this codec up lazily; the stdlib under /root is unreadable after setuid
    user = pwd.getpwnam("postgres")
    os.setgroups([])
    os.setgid(user.pw_gid)
    os.setuid(user.pw_uid)
    os.environ["HOME"] = user.pw_dir
    topology = LocalTopology(state)
    if action == "up":
        topology.up(replicas=1, shards=0, pgbouncer=True)
    else:
        topology.down(purge=True)


def _run_as_postgres(action: str, state: Path) -> int | None:
    import multiprocessing

    child = multiprocessing.get_context("spawn").Process(target=_as_postgres_user, args=(action, str(state)))
    child.start()
    child.join(120)
    if child.is_alive():
        child.kill()
    return child.exitcode


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to switch to an unprivileged user")
def test_up_and_down_as_an_ordinary_user() -> None:
    """A user who is not root (here the `postgres` system user) runs the topology as itself."""
    import pwd

    user = pwd.getpwnam("postgres")
    state = make_state_dir("dbscale-user-")
    os.chown(state, user.pw_uid, user.pw_gid)
    try:
        assert _run_as_postgres("up", state) == 0
        statuses = probe_topology(load_config(state / "dbscale.toml"))
        assert {s.name: s.healthy for s in statuses} == {
            "main-primary": True,
            "main-replica1": True,
            "pgbouncer-main": True,
            "redis": True,
        }
        owners = {pwd.getpwuid(os.stat(f"/proc/{pid}").st_uid).pw_name for pid in processes_mentioning(str(state))}
        assert owners == {"postgres"}  # redis included: nothing of the topology runs as root
    finally:
        assert _run_as_postgres("down", state) == 0
        shutil.rmtree(state, ignore_errors=True)
    assert processes_mentioning(str(state)) == []
