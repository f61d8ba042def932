"""``dbscale top`` in a real terminal (tmux): every node on screen, refreshed at least once a second, q quits."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from dbscale.config import load_config
from dbscale.topology import configured_nodes

pytestmark = pytest.mark.integration

_REFRESH = re.compile(r"refresh #(\d+)")


def _tmux(socket: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["tmux", "-L", socket, *args], capture_output=True, text=True, check=False)


def _screen(socket: str, session: str) -> str:
    return _tmux(socket, "capture-pane", "-p", "-t", session).stdout


def _refresh_count(screen: str) -> int | None:
    found = _REFRESH.findall(screen)
    return int(found[-1]) if found else None


def test_top_shows_every_node_and_refreshes_every_second(topology_config_path: Path) -> None:
    if shutil.which("tmux") is None:
        pytest.fail("tmux is needed (scripts/bootstrap.sh installs it)")
    socket, session = f"dbscale-test-{uuid.uuid4().hex[:8]}", "top"
    command = f"{sys.executable} -m dbscale.cli top --config {topology_config_path} --interval 0.5"
    started = _tmux(socket, "new-session", "-d", "-s", session, "-x", "200", "-y", "60", command)
    assert started.returncode == 0, started.stderr
    try:
        deadline = time.monotonic() + 30
        while (first := _refresh_count(_screen(socket, session))) is None or first < 2:
            assert time.monotonic() < deadline, _screen(socket, session)
            time.sleep(0.1)
        t0 = time.monotonic()
        time.sleep(4.0)
        screen = _screen(socket, session)
        elapsed = time.monotonic() - t0
        last = _refresh_count(screen)
        assert last is not None and last - first >= int(elapsed), f"{last - (first or 0)} refreshes in {elapsed:.1f}s"
        for node in configured_nodes(load_config(topology_config_path, environ={})):
            assert node.name in screen, (node.name, screen)
        assert "Redis" in screen and "queries/s" in screen
        _tmux(socket, "send-keys", "-t", session, "q")
        deadline = time.monotonic() + 10
        while _tmux(socket, "has-session", "-t", session).returncode == 0:
            assert time.monotonic() < deadline, "q did not quit dbscale top"
            time.sleep(0.1)
    finally:
        _tmux(socket, "kill-server")
