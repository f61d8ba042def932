"""The one-member etcd that Patroni keeps its leader lock in (``dbscale up --ha``).

Debian's ``etcd-server`` package does not start its service in a container, and a developer's
machine may run another etcd: dbscale runs its own on two free loopback ports (client and peer),
with its own data directory, as the service user. etcd 3.4 serves only the v3 API by default, so
Patroni is configured with its ``etcd3`` section.
"""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request

from dbscale.errors import LocalTopologyError
from dbscale.local import processes
from dbscale.local.binaries import find_binary
from dbscale.local.runtime import Runtime, log_tail, make_private_dir
from dbscale.local.service_user import spawn
from dbscale.local.state import HOST, NodeInfo

STOP_TIMEOUT = 10.0


def _pidfile(node: NodeInfo) -> str:
    return str(node.node_dir / "etcd.pid")


def pid(node: NodeInfo, rt: Runtime) -> int | None:
    """The live etcd pid, or None."""
    return processes.live_pid_from_file(node.node_dir / "etcd.pid", find_binary("etcd"))


def healthy(node: NodeInfo, timeout: float = 1.0) -> bool:
    """Whether etcd answers ``GET /health`` with ``"health": "true"``."""
    try:
        with urllib.request.urlopen(f"http://{HOST}:{node.port}/health", timeout=timeout) as resp:
            return bool(json.loads(resp.read()).get("health") == "true")
    except (OSError, ValueError, urllib.error.URLError):
        return False


def start(node: NodeInfo, rt: Runtime, timeout: float = 30.0) -> None:
    """Start etcd (no-op if running) and return once it reports healthy."""
    if pid(node, rt) is not None:
        return
    assert node.api_port is not None
    make_private_dir(node.node_dir, rt.user)
    data = node.node_dir / "data"
    make_private_dir(data, rt.user)
    peer, client = f"http://{HOST}:{node.api_port}", f"http://{HOST}:{node.port}"
    spawn(
        [find_binary("etcd"), "--name", node.name, "--data-dir", data,
         "--listen-client-urls", client, "--advertise-client-urls", client,
         "--listen-peer-urls", peer, "--initial-advertise-peer-urls", peer,
         "--initial-cluster", f"{node.name}={peer}", "--initial-cluster-state", "new",
         "--initial-cluster-token", f"dbscale-{node.port}", "--logger", "zap", "--log-outputs", "stderr"],
        user=rt.user, cwd=node.node_dir, log_path=node.log_path, pidfile=node.node_dir / "etcd.pid",
    )  # fmt: skip
    deadline = time.monotonic() + timeout
    while not healthy(node):
        if time.monotonic() >= deadline or pid(node, rt) is None:
            raise LocalTopologyError(
                f"etcd on port {node.port} is not healthy after {timeout:.0f}s\n{log_tail(node.log_path)}"
            )
        time.sleep(0.05)


def stop(node: NodeInfo, rt: Runtime, timeout: float = STOP_TIMEOUT) -> None:
    """SIGTERM, SIGKILL after ``timeout``; return once the process is gone."""
    processes.stop_main(node.name, pid(node, rt), timeout)


def kill(node: NodeInfo, rt: Runtime) -> int | None:
    """SIGKILL etcd; return its pid."""
    return processes.sigkill(pid(node, rt))
