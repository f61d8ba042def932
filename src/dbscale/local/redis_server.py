"""The topology's Redis: daemonized on a loopback port, nothing persisted, pid file in its dir."""

from __future__ import annotations

import socket
import time
from collections.abc import Sequence

from dbscale.errors import LocalTopologyError
from dbscale.local import processes
from dbscale.local.runtime import Runtime, log_tail
from dbscale.local.service_user import run
from dbscale.local.state import HOST, NodeInfo

STOP_TIMEOUT = 10.0


def _pidfile(node: NodeInfo) -> str:
    return str(node.node_dir / "redis.pid")


def pid(node: NodeInfo, rt: Runtime) -> int | None:
    """The live redis-server pid, or None."""
    return processes.live_pid_from_file(node.node_dir / "redis.pid", rt.binaries.redis_server)


def ping(port: int, timeout: float = 0.5) -> bool:
    """Whether a Redis server answers PING on ``port``."""
    try:
        with socket.create_connection((HOST, port), timeout=timeout) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(64).startswith(b"+PONG")
    except OSError:
        return False


def start(node: NodeInfo, rt: Runtime, timeout: float = 30.0, extra_args: Sequence[str] = ()) -> None:
    """Start Redis (no-op if running) and return once it answers PING; ``extra_args`` add to its command line."""
    if pid(node, rt) is not None:
        return
    node.node_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    (node.node_dir / "redis.pid").unlink(missing_ok=True)
    run(
        [rt.binaries.redis_server, "--bind", HOST, "--port", str(node.port), "--daemonize", "yes",
         "--pidfile", _pidfile(node), "--logfile", str(node.log_path), "--dir", str(node.node_dir),
         "--save", "", "--appendonly", "no", "--protected-mode", "yes", *extra_args],
        cwd=node.node_dir, what="starting redis-server",
    )  # fmt: skip
    deadline = time.monotonic() + timeout
    while not ping(node.port):
        if time.monotonic() >= deadline:
            raise LocalTopologyError(
                f"redis did not answer PING on port {node.port} within {timeout:.0f}s\n{log_tail(node.log_path)}"
            )
        time.sleep(0.02)


def stop(node: NodeInfo, rt: Runtime, timeout: float = STOP_TIMEOUT) -> None:
    """SIGTERM (nothing is saved), SIGKILL after ``timeout``; return once the process is gone."""
    processes.stop_main("redis", pid(node, rt), timeout)


def kill(node: NodeInfo, rt: Runtime) -> int | None:
    """SIGKILL redis-server; return its pid."""
    return processes.sigkill(pid(node, rt))
