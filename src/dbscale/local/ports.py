"""Free loopback ports and waiting for a port to accept connections."""

from __future__ import annotations

import contextlib
import socket
import time

LOOPBACK = "127.0.0.1"


def free_ports(count: int, host: str = LOOPBACK, avoid: frozenset[int] = frozenset()) -> list[int]:
    """Return ``count`` distinct ports that are free on ``host`` right now.

    All sockets stay bound until every port is chosen, so the kernel never hands out the same
    port twice; ports in ``avoid`` (e.g. already assigned to other nodes) are skipped.
    """
    sockets: list[socket.socket] = []
    ports: list[int] = []
    try:
        while len(ports) < count:
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sockets.append(sock)
            sock.bind((host, 0))
            port = int(sock.getsockname()[1])
            if port not in avoid and port not in ports:
                ports.append(port)
    finally:
        for sock in sockets:
            sock.close()
    return ports


def port_accepts(port: int, host: str = LOOPBACK, timeout: float = 0.5) -> bool:
    """Whether something accepts TCP connections on ``host:port``."""
    with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=timeout):
        return True
    return False


def port_is_free(port: int, host: str = LOOPBACK) -> bool:
    """Whether ``host:port`` can be bound now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def wait_for_port(port: int, timeout: float, host: str = LOOPBACK) -> bool:
    """Poll until ``host:port`` accepts connections; False after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        if port_accepts(port, host):
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.05)
