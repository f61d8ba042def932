"""Cluster skeleton on the real topology: the generated config loads unchanged, engines are lazy and real."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from sqlalchemy import text

import dbscale
from dbscale.local import LocalTopology

pytestmark = pytest.mark.integration


def test_generated_config_loads_and_every_node_answers(topology_config_path: Path) -> None:
    with dbscale.Cluster.from_config(topology_config_path) as cluster:
        assert cluster._engines == {}  # lazy: nothing connected before first use
        for node in cluster.nodes:
            with cluster.engine(node.name).connect() as conn:
                in_recovery = conn.execute(text("select pg_is_in_recovery()")).scalar()
            assert in_recovery is (node.role == "replica"), node.name
        assert cluster.engine("main-primary") is cluster.engine("main-primary")
        assert cluster.engine("main-primary").pool.size() == 20  # type: ignore[attr-defined]
    assert cluster._engines == {}
    with pytest.raises(RuntimeError, match="closed"):
        cluster.engine("main-primary")


def test_pgbouncer_engine_disables_prepared_statements(topology_config_path: Path) -> None:
    with dbscale.Cluster.from_config(topology_config_path) as cluster:
        with cluster.engine("pgbouncer-main").connect() as conn:
            assert conn.connection.driver_connection.prepare_threshold is None  # type: ignore[union-attr]
            assert conn.execute(text("select 1 where 1 = :x"), {"x": 1}).scalar() == 1
        with cluster.engine("main-primary").connect() as conn:
            assert conn.connection.driver_connection.prepare_threshold == 5  # type: ignore[union-attr]


def test_async_cluster_from_env(local_topology: LocalTopology, topology_config_path: Path) -> None:
    async def main() -> list[int]:
        env = {"DBSCALE_CONFIG": str(topology_config_path)}
        async with dbscale.AsyncCluster.from_env(env) as acl:
            ports = []
            for name in ("main-primary", "main-replica1", "shard1-primary"):
                async with acl.engine(name).connect() as conn:
                    ports.append((await conn.execute(text("select inet_server_port()"))).scalar_one())
            return ports

    ports = asyncio.run(main())
    assert ports == [local_topology.node(n).port for n in ("main-primary", "main-replica1", "shard1-primary")]
