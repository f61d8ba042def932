"""Fixtures shared by the integration tests (the topology itself is in ``tests/conftest.py``)."""

from __future__ import annotations

import shutil
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from dbscale.cache import Cache
from dbscale.config import CacheConfig, load_config
from dbscale.local import LocalTopology
from dbscale.local import redis_cluster as local_cluster

from ..conftest import make_state_dir
from .helpers import Front, replicated_table


@pytest.fixture(scope="session")
def redis_url(topology_config_path: Path) -> str:
    """The session topology's Redis URL."""
    url = load_config(topology_config_path, environ={}).cache.redis_url
    assert url is not None
    return str(url)


@pytest.fixture(scope="session")
def redis_cluster_topology() -> Iterator[LocalTopology]:
    """A 3-master Redis Cluster with one replica per master (and a bare PostgreSQL primary, unused by the cache
    tests: they keep the session topology's groups), started on first use and shared by the session."""
    state_dir = make_state_dir("dbscale-test-rc-")
    topology = LocalTopology(state_dir)
    try:
        topology.up(replicas=0, redis_cluster=3, redis_cluster_replicas=1)
        yield topology
    finally:
        topology.down(purge=True)
        shutil.rmtree(state_dir, ignore_errors=True)


@pytest.fixture(scope="session")
def redis_cluster_url(redis_cluster_topology: LocalTopology) -> str:
    """The cache URL of the session's Redis Cluster: ``redis+cluster://`` with every node as a seed."""
    return local_cluster.cache_url(local_cluster.cluster_nodes(redis_cluster_topology.state()))


@pytest.fixture(params=["redis", "redis-cluster"])
def any_redis_url(request: pytest.FixtureRequest, redis_url: str) -> str:
    """The session's single Redis, then its Redis Cluster: the cache's hostile tests run on both L2 shapes."""
    if request.param == "redis-cluster":
        return str(request.getfixturevalue("redis_cluster_url"))
    return redis_url


@pytest.fixture
def raw(redis_url: str) -> Iterator[redis.Redis]:
    """A plain redis-py client on the session topology's Redis (to look at or corrupt what the cache wrote)."""
    client = redis.Redis.from_url(redis_url)
    yield client
    client.close()


@pytest.fixture
def table(topology_config_path: Path) -> Iterator[str]:
    """A fresh 100-row table ``(k int PRIMARY KEY, v int)`` with v = 10 k, replayed by both replicas; dropped after."""
    with replicated_table(
        topology_config_path,
        "k int PRIMARY KEY, v int NOT NULL",
        "INSERT INTO {name} SELECT g, g * 10 FROM generate_series(1, 100) g",
    ) as name:
        yield name


@pytest.fixture(params=["sync", "async"])
def front(redis_url: str, request: pytest.FixtureRequest) -> Iterator[Callable[..., Front]]:
    """A factory of cache fronts of one flavour per run: each behaviour test runs over both front ends.

    ``front(**cache_settings)`` is a :class:`~.helpers.Front` on the session's Redis, in a fresh
    namespace unless one is given; every front made is closed after the test.
    """
    made: list[Front] = []

    def factory(**settings: Any) -> Front:
        settings.setdefault("namespace", f"t{uuid.uuid4().hex[:12]}")
        made.append(Front(Cache(CacheConfig(redis_url=redis_url, **settings)), request.param))
        return made[-1]

    yield factory
    for made_front in made:
        made_front.close()
