"""The main job (`dbscale demo`) runs on the real topology and every guarantee it shows holds."""

from __future__ import annotations

import io

import pytest
from rich.console import Console

from dbscale.demo import run_demo
from dbscale.local import LocalTopology

pytestmark = pytest.mark.integration


def test_demo_guarantees_hold(restore_topology: LocalTopology) -> None:
    buffer = io.StringIO()
    report = run_demo(restore_topology.state_dir, Console(file=buffer, width=200))
    assert report.failures == []
    assert len(report.rows) == 9
    shown = buffer.getvalue()
    assert "stale" in shown and "1 loader call(s)" in shown
    assert not any(restore_topology.is_replay_paused(name) for name in ("main-replica1", "main-replica2"))
