"""The example service on a real topology started by dbscale's pytest plugin (fixtures ``dbscale_*``)."""

from __future__ import annotations

import time
from collections.abc import Iterator

import psycopg
import pytest
from fastapi.testclient import TestClient

import dbscale
from dbscale.integrations.pytest_plugin import DbscaleTopology

from .app import create_app
from .models import metadata, users


@pytest.fixture
def paused_replicas(dbscale_topology: DbscaleTopology, dbscale_cluster: dbscale.Cluster) -> Iterator[list[str]]:
    """The users table on every replica, then WAL replay paused on all of them (resumed after)."""
    local = dbscale_topology.local
    if local is None:
        pytest.skip("needs the plugin's own local topology (replay is paused on its replicas)")
    with dbscale_cluster.write() as conn:
        metadata.create_all(conn)
    replicas = dbscale_topology.replica_names()
    for name in replicas:
        deadline = time.monotonic() + 60
        with psycopg.connect(local.url(name), autocommit=True) as conn:
            while conn.execute("SELECT to_regclass(%s)", (users.name,)).fetchone() == (None,):
                assert time.monotonic() < deadline, f"{name} did not replay the CREATE TABLE"
                time.sleep(0.05)
        local.pause_replay(name)
    try:
        yield replicas
    finally:
        for name in replicas:
            local.resume_replay(name)


def test_a_token_carried_by_header_reads_its_write_with_replay_paused(
    dbscale_topology: DbscaleTopology, dbscale_async_cluster: dbscale.AsyncCluster, paused_replicas: list[str]
) -> None:
    assert paused_replicas, "the topology needs a replica"
    with TestClient(create_app(dbscale_async_cluster)) as client:
        created = client.post("/users", json={"name": "Ada", "email": "ada@example.com"})
        assert created.status_code == 201, created.text
        token = created.headers["X-Dbscale-Token"]
        client.cookies.clear()  # the header alone carries it

        got = client.get(f"/users/{created.json()['id']}", headers={"X-Dbscale-Token": token})
        assert got.status_code == 200, got.text
        assert got.json() == created.json()

        metrics = client.get("/metrics")
        assert metrics.headers["content-type"].startswith("text/plain; version=")
        assert "dbscale_writes_total" in metrics.text and "_created" not in metrics.text

    assert dbscale_topology.local is not None
    for name in paused_replicas:  # the replicas really are behind: the read was routed by the token
        with psycopg.connect(dbscale_topology.local.url(name)) as conn:
            found = conn.execute(f"SELECT count(*) FROM {users.name} WHERE id = %s", (created.json()["id"],))
            assert found.fetchone() == (0,)
