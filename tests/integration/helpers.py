"""Helpers shared by the integration tests."""

from __future__ import annotations

import time

from dbscale import Cluster


def wait_replicated(cluster: Cluster, timeout: float = 10.0) -> None:
    """Until every replica of the default group has replayed everything its primary wrote (router's view)."""
    router = cluster.router()
    deadline = time.monotonic() + timeout
    while True:
        cluster.refresh()
        if all(router.state.views[r].lag_bytes == 0 for r in router.settings.replicas):
            return
        assert time.monotonic() < deadline, "replicas did not catch up"
        time.sleep(0.05)
