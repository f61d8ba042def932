"""Fixtures shared by the integration tests (the topology itself is in ``tests/conftest.py``)."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from sqlalchemy import text

from dbscale import Cluster
from dbscale.config import load_config

from .helpers import wait_replicated


@pytest.fixture(scope="session")
def redis_url(topology_config_path: Path) -> str:
    """The session topology's Redis URL."""
    url = load_config(topology_config_path, environ={}).cache.redis_url
    assert url is not None
    return str(url)


@pytest.fixture
def raw(redis_url: str) -> Iterator[redis.Redis]:
    """A plain redis-py client on the session topology's Redis (to look at or corrupt what the cache wrote)."""
    client = redis.Redis.from_url(redis_url)
    yield client
    client.close()


@pytest.fixture
def table(topology_config_path: Path) -> Iterator[str]:
    """A fresh 100-row table ``(k int PRIMARY KEY, v int)`` with v = 10 k, replayed by both replicas; dropped after."""
    name = f"rt_{uuid.uuid4().hex[:8]}"
    with Cluster.from_config(topology_config_path) as cluster:
        with cluster.write() as conn:
            conn.execute(text(f"CREATE TABLE {name} (k int PRIMARY KEY, v int NOT NULL)"))
            conn.execute(text(f"INSERT INTO {name} SELECT g, g * 10 FROM generate_series(1, 100) g"))
        wait_replicated(cluster)  # both replicas have the table
    yield name
    with Cluster.from_config(topology_config_path) as cluster, cluster.write() as conn:
        conn.execute(text(f"DROP TABLE IF EXISTS {name}"))
