"""The local Redis Cluster (``dbscale up --redis-cluster 3 --redis-cluster-replicas 1``) on real servers.

All 16384 slots are served by three masters; a SIGKILLed master is replaced by its replica (Redis
Cluster's own failover, ``cluster-node-timeout`` 2 s) and a redis-py ``RedisCluster`` client keeps
reading the keys that were on it; ``dbscale up`` brings the killed node back as a replica.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time

import pytest
import redis
from redis.cluster import RedisCluster

from dbscale.local import LocalTopology
from dbscale.local import redis_cluster as local_cluster
from dbscale.probe import RedisClusterNode, probe_redis_cluster

pytestmark = pytest.mark.integration


@pytest.fixture
def topology(redis_cluster_topology: LocalTopology) -> LocalTopology:
    """The session's Redis Cluster (3 masters, one replica each; see tests/integration/conftest.py)."""
    return redis_cluster_topology


def view(topology: LocalTopology) -> list[RedisClusterNode]:
    return probe_redis_cluster(local_cluster.urls(local_cluster.cluster_nodes(topology.state())))


def test_up_serves_every_slot_with_one_replica_per_master_and_status_shows_it(topology: LocalTopology) -> None:
    nodes = view(topology)
    masters = [n for n in nodes if n.role == "master"]
    assert len(nodes) == 6 and len(masters) == 3
    assert local_cluster.covered_slots(nodes) == local_cluster.SLOTS == 16384
    assert sorted(n.master for n in nodes if n.role == "replica") == sorted(m.address for m in masters)
    result = subprocess.run(
        [sys.executable, "-m", "dbscale.cli", "status", "--state-dir", str(topology.state_dir), "--json"],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    shown = json.loads(result.stdout)["redis_cluster"]
    assert sum(n["slots"] for n in shown if n["role"] == "master") == 16384
    assert {n["name"] for n in shown} == {f"redis-cluster{i}" for i in range(1, 7)}


def test_sigkilled_master_is_replaced_by_its_replica_and_rejoins_after_up(topology: LocalTopology) -> None:
    first = local_cluster.cluster_nodes(topology.state())[0]
    client = RedisCluster(host="127.0.0.1", port=first.port, socket_timeout=2)
    try:
        keys = {f"k{i}": str(i) for i in range(300)}  # spread over every master
        for k, v in keys.items():
            client.set(k, v)
        for master in {client.get_node_from_key(k).name for k in keys}:  # every write is on the replicas too
            host, port = master.split(":")
            assert redis.Redis(host=host, port=int(port)).execute_command("WAIT", 1, 5000) == 1
        before = {n.address: n for n in view(topology)}
        victim_node = next(
            n for n in local_cluster.cluster_nodes(topology.state()) if before[f"127.0.0.1:{n.port}"].role == "master"
        )
        victim = f"127.0.0.1:{victim_node.port}"
        heir = next(n.address for n in before.values() if n.master == victim)
        on_victim = [k for k in keys if client.get_node_from_key(k).name == victim]
        assert on_victim
        topology.kill(victim_node.name)
        deadline = time.monotonic() + 30
        others = [url for url in local_cluster.urls(local_cluster.cluster_nodes(topology.state())) if victim not in url]
        while True:  # every live node's view (a client may ask any of them for the slot map): the heir took over
            views = [{n.address: n for n in probe_redis_cluster([url])} for url in others]
            now = {n.address: n for n in probe_redis_cluster([f"redis://{heir}/0"])}
            if all(v[heir].role == "master" and local_cluster.covered_slots(list(v.values())) == 16384 for v in views):
                break
            assert time.monotonic() < deadline, now
            time.sleep(0.2)
        assert not now[victim].connected
        assert {k: client.get(k) for k in on_victim} == {k: keys[k].encode() for k in on_victim}  # served by the heir
        topology.up()
        after = {n.address: n for n in view(topology)}
        assert after[victim].role == "replica" and after[victim].master == heir and after[victim].connected
    finally:
        client.close()
