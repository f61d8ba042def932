"""CLI conventions on real servers: `status` as a health check, Ctrl-C during `up`, `metrics serve`."""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from dbscale.local import LocalTopology

from .test_cli_topology import cli_state_dir, dbscale, processes_mentioning

pytestmark = pytest.mark.integration
__all__ = ["cli_state_dir"]  # the fixture, shared with test_cli_topology


def _interruptible(*args: str) -> subprocess.Popen[str]:
    """``dbscale ARGS`` with Ctrl-C delivered as in a terminal (SIGINT not ignored, as it is for `&` jobs)."""
    return subprocess.Popen(
        [sys.executable, "-m", "dbscale.cli", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )


def test_status_with_a_stopped_replica_exits_1(restore_topology: LocalTopology) -> None:
    state = str(restore_topology.state_dir)
    assert dbscale("status", "--state-dir", state).returncode == 0
    restore_topology.stop("main-replica2")
    result = dbscale("status", "--state-dir", state)
    assert result.returncode == 1
    assert "main-replica2" in result.stdout  # the table is printed all the same
    assert result.stderr == "dbscale: degraded: 1 node(s) down: main-replica2\n"


def test_unknown_node_is_a_usage_error(local_topology: LocalTopology) -> None:
    result = dbscale("node", "stop", "main-replica9", "--state-dir", str(local_topology.state_dir))
    assert result.returncode == 2
    assert result.stderr.startswith("dbscale: error: unknown node 'main-replica9'; known nodes: main-primary")
    assert result.stderr.count("\n") == 1


def test_ctrl_c_during_up_stops_what_it_started_and_says_so(cli_state_dir: Path) -> None:
    state = str(cli_state_dir)
    up = _interruptible("up", "--replicas", "1", "--state-dir", state)
    primary_pid = cli_state_dir / "nodes" / "main-primary" / "data" / "postmaster.pid"
    deadline = time.monotonic() + 120
    while not primary_pid.exists() and up.poll() is None:  # interrupt once a server runs, before up ends
        assert time.monotonic() < deadline, "the primary never started"
        time.sleep(0.02)
    up.send_signal(signal.SIGINT)
    _, err = up.communicate(timeout=180)
    if up.returncode == 0:
        pytest.skip("`dbscale up` finished before the interrupt arrived")
    assert up.returncode == 130, err
    assert "Traceback" not in err
    assert re.fullmatch(r"dbscale: error: interrupted: stopped \d server\(s\) this `dbscale up` had started .*\n", err)
    assert "main-primary" in err
    assert processes_mentioning(state) == []
    # still recorded: status and down see it, up resumes it
    assert dbscale("status", "--state-dir", state).returncode == 1
    assert dbscale("up", "--state-dir", state).returncode == 0
    assert dbscale("down", "--state-dir", state).returncode == 0


def test_ctrl_c_while_importing_prints_no_traceback() -> None:
    script = Path(sys.executable).parent / "dbscale"
    proc = subprocess.Popen(
        [str(script), "status", "--state-dir", "/nonexistent"],
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    time.sleep(0.3)  # within the imports (about a second here)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert "Traceback" not in err
    assert proc.returncode in (130, 2, -signal.SIGINT), err  # 2: the imports were done and status answered


def test_metrics_serve_exports_the_topology(topology_config_path: Path) -> None:
    server = _interruptible("metrics", "serve", "--port", "0", "--config", str(topology_config_path))
    try:
        assert server.stdout is not None
        line = server.stdout.readline()
        port = int(re.search(r"http://127\.0\.0\.1:(\d+)/metrics", line)[1])  # type: ignore[index]
        deadline = time.monotonic() + 30
        while True:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
                body = response.read().decode()
                assert response.headers["Content-Type"].startswith("text/plain; version=")
            if 'dbscale_node_up{group="main",node="main-replica1"} 1.0' in body or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        assert "_created" not in body
        assert 'node="main-replica1"' in body, body[:2000]
    finally:
        server.send_signal(signal.SIGINT)
        out, err = server.communicate(timeout=30)
    assert server.returncode == 0, err
    assert "stopped" in out
