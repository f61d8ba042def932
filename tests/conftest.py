"""Shared fixtures: one real local topology for the whole test session."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from dbscale.integrations.pytest_plugin import DbscaleTopology
from dbscale.local import LocalTopology


def make_state_dir(prefix: str = "dbscale-test-") -> Path:
    """A fresh state dir under /tmp that the ``postgres`` user can reach when we run as root.

    pytest's own ``tmp_path`` lives under /tmp/pytest-of-<user> (mode 0700), which the
    ``postgres`` user cannot enter, so topology state goes directly under /tmp.
    """
    path = Path(tempfile.mkdtemp(prefix=prefix, dir="/tmp"))
    os.chmod(path, 0o755)
    return path


@pytest.fixture(scope="session")
def local_topology() -> Iterator[LocalTopology]:
    """One topology for the session: main (primary + 2 replicas), shard0, shard1, Redis, PgBouncer."""
    state_dir = make_state_dir()
    topology = LocalTopology(state_dir)
    try:
        topology.up(replicas=2, shards=2, pgbouncer=True)
        yield topology
    finally:
        topology.down(purge=True)
        shutil.rmtree(state_dir, ignore_errors=True)


@pytest.fixture(scope="session")
def topology_config_path(local_topology: LocalTopology) -> Path:
    """Path of the session topology's generated ``dbscale.toml``."""
    return local_topology.config_path


@pytest.fixture
def restore_topology(local_topology: LocalTopology) -> Iterator[LocalTopology]:
    """The session topology; after the test, restart whatever it broke and resume paused replay."""
    yield local_topology
    local_topology.up()
    for node in local_topology.nodes():
        if node.kind == "postgres" and node.role == "replica" and local_topology.is_replay_paused(node.name):
            local_topology.resume_replay(node.name)


@pytest.fixture
def make_topology() -> Iterator[Callable[[], LocalTopology]]:
    """A factory of extra topologies, each in its own state dir; all are purged after the test."""
    created: list[LocalTopology] = []

    def factory() -> LocalTopology:
        topology = LocalTopology(make_state_dir("dbscale-test-own-"))
        created.append(topology)
        return topology

    yield factory
    for topology in created:
        topology.down(purge=True)
        shutil.rmtree(topology.state_dir, ignore_errors=True)


@pytest.fixture(scope="session")
def dbscale_topology(local_topology: LocalTopology) -> DbscaleTopology:
    """The pytest plugin's topology fixture, pointed at the session topology (no second one is started)."""
    return DbscaleTopology(local_topology.config_path, local_topology)
