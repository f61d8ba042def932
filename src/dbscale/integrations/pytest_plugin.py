"""pytest plugin (entry point ``pytest11``): dbscale's real local topology in your own test suite.

Fixtures (nothing starts unless a test asks for one):

* ``dbscale_topology`` (session) — a :class:`DbscaleTopology`: a real local topology started once
  per session in a temp dir (PostgreSQL primary + ``dbscale_replicas`` streaming replicas, Redis,
  optionally PgBouncer) and purged at the end; or an existing one, named by ``--dbscale-config
  FILE`` or ``DBSCALE_TEST_CONFIG=FILE`` (a ``dbscale.toml``, e.g. ``.dbscale/dbscale.toml`` after
  ``dbscale up``), which is neither started nor stopped.
* ``dbscale_cluster`` — a :class:`~dbscale.Cluster` on it, closed after the test;
* ``dbscale_async_cluster`` — an :class:`~dbscale.AsyncCluster` on it (use it in one event loop:
  ``asyncio.run``, pytest-asyncio or anyio), closed after the test.

Per-test isolation: each test's clusters get their own cache namespace (``test-<random>``), so a
value cached by one test is never a hit in another, and their own causal context.

ini options (``pytest.ini`` / ``[tool.pytest.ini_options]``): ``dbscale_replicas`` (default 1),
``dbscale_pgbouncer`` (default false).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from dbscale.cluster import AsyncCluster, Cluster
    from dbscale.local import LocalTopology

ENV_CONFIG = "DBSCALE_TEST_CONFIG"


@dataclass(frozen=True)
class DbscaleTopology:
    """What ``dbscale_topology`` yields: the config file, and the :class:`LocalTopology` if the plugin started it."""

    config_path: Path
    local: LocalTopology | None

    def replica_names(self) -> list[str]:
        """Names of the local topology's replicas (for ``local.pause_replay(name)``); empty for an external one."""
        if self.local is None:
            return []
        return [n.name for n in self.local.nodes() if n.kind == "postgres" and n.role == "replica"]


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("dbscale")
    group.addoption(
        "--dbscale-config",
        default=None,
        help=f"use the topology of this dbscale.toml instead of starting one (env: {ENV_CONFIG})",
    )
    parser.addini("dbscale_replicas", "streaming replicas of the topology the plugin starts", default="1")
    parser.addini("dbscale_pgbouncer", "start PgBouncer in the plugin's topology (true/false)", default="false")


@pytest.fixture(scope="session")
def dbscale_topology(request: pytest.FixtureRequest) -> Iterator[DbscaleTopology]:
    """A real topology for the session: the one named by --dbscale-config / DBSCALE_TEST_CONFIG, or a fresh local one."""
    existing = request.config.getoption("--dbscale-config") or os.environ.get(ENV_CONFIG)
    if existing:
        path = Path(existing)
        if not path.is_file():
            raise pytest.UsageError(f"dbscale: {path} does not exist (--dbscale-config / {ENV_CONFIG})")
        yield DbscaleTopology(path, None)
        return
    from dbscale.local import LocalTopology

    # Not pytest's tmp_path: it is mode 0700 under /tmp/pytest-of-<user>, and PostgreSQL runs as
    # the postgres user when the tests run as root.
    state_dir = Path(tempfile.mkdtemp(prefix="dbscale-pytest-", dir="/tmp"))
    os.chmod(state_dir, 0o755)
    topology = LocalTopology(state_dir)
    try:
        topology.up(
            replicas=int(request.config.getini("dbscale_replicas")),
            shards=0,
            pgbouncer=str(request.config.getini("dbscale_pgbouncer")).lower() in ("1", "true", "yes"),
        )
        yield DbscaleTopology(topology.config_path, topology)
    finally:
        topology.down(purge=True)
        shutil.rmtree(state_dir, ignore_errors=True)


def _isolated() -> dict[str, object]:
    return {"cache": {"namespace": f"test-{uuid.uuid4().hex[:12]}"}}


@pytest.fixture
def dbscale_cluster(dbscale_topology: DbscaleTopology) -> Iterator[Cluster]:
    """A :class:`~dbscale.Cluster` on the session topology with a cache namespace of its own; closed after the test."""
    from dbscale.cluster import Cluster

    cluster = Cluster.from_config(dbscale_topology.config_path, **_isolated())
    try:
        yield cluster
    finally:
        cluster.close()


@pytest.fixture
def dbscale_async_cluster(dbscale_topology: DbscaleTopology) -> Iterator[AsyncCluster]:
    """An :class:`~dbscale.AsyncCluster` on the session topology with its own cache namespace; closed after the test."""
    from dbscale.cluster import AsyncCluster

    cluster = AsyncCluster.from_config(dbscale_topology.config_path, **_isolated())
    try:
        yield cluster
    finally:
        # Closed in the test's own loop if it did (e.g. a web app's lifespan); otherwise here.
        with contextlib.suppress(Exception):
            asyncio.run(cluster.close())


__all__ = ["DbscaleTopology"]
