"""Pure parts of ``up --ha`` and ``up --redis-cluster``: the planned nodes and ports, the rendered Patroni
config and callback, the ``patroni`` setting, and the state written before either feature existed."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from dbscale.config import load_config
from dbscale.errors import ConfigError, LocalTopologyError
from dbscale.local import patroni
from dbscale.local.binaries import Binaries
from dbscale.local.runtime import Runtime
from dbscale.local.service_user import ServiceUser
from dbscale.local.state import (
    Shape,
    TopologyState,
    config_document,
    from_json,
    node_count,
    plan,
    redis_cluster_size,
    to_json,
)

ROOT = Path("/srv/dbscale-state")


def planned(shape: Shape) -> TopologyState:
    return plan(shape, "pw", ROOT, list(range(30000, 30000 + node_count(shape))))


def test_ha_gives_each_member_of_main_a_patroni_port_and_adds_etcd() -> None:
    state = planned(Shape(replicas=2, shards=1, pgbouncer=True, ha=True))
    ports = [p for n in state.nodes for p in (n.port, n.api_port) if p is not None]
    assert len(ports) == len(set(ports)) == node_count(state.shape)
    assert [n.name for n in state.nodes if n.patroni] == ["main-primary", "main-replica1", "main-replica2"]
    assert not state.node("shard0-primary").patroni  # shard groups keep dbscale's own processes
    etcd = state.node("etcd")
    assert (etcd.kind, etcd.api_port is not None, state.url(etcd)) == ("etcd", True, f"http://127.0.0.1:{etcd.port}")
    doc = config_document(state)
    assert doc["groups"]["main"]["patroni"] == [f"http://127.0.0.1:{n.api_port}" for n in state.nodes if n.patroni]
    assert "patroni" not in doc["groups"]["shard0"]


def test_redis_cluster_nodes_have_a_bus_port_each() -> None:
    state = planned(Shape(replicas=0, redis_cluster=3, redis_cluster_replicas=1))
    nodes = [n for n in state.nodes if n.kind == "redis-cluster"]
    assert [n.name for n in nodes] == [f"redis-cluster{i}" for i in range(1, 7)] and redis_cluster_size(
        state.shape
    ) == 6
    ports = [p for n in state.nodes for p in (n.port, n.api_port) if p is not None]
    assert len(ports) == len(set(ports)) == node_count(state.shape)


def test_shapes_patroni_and_redis_cluster_cannot_run() -> None:
    with pytest.raises(LocalTopologyError, match="at least 3 masters"):
        Shape(redis_cluster=2)
    with pytest.raises(LocalTopologyError, match="at least one replica"):
        Shape(replicas=0, ha=True)
    assert Shape(ha=True).mismatches(None, None, None, ha=False, redis_cluster=None) == ["ha=False (state has True)"]


def test_a_state_written_before_ha_still_loads() -> None:
    doc = to_json(planned(Shape()))
    for node in doc["nodes"]:
        del node["api_port"]
    for key in ("ha", "redis_cluster", "redis_cluster_replicas"):
        del doc["shape"][key]
    state = from_json(doc)
    assert state.shape == Shape() and not any(n.patroni for n in state.nodes)


def runtime() -> Runtime:
    bin_dir = Path("/usr/lib/postgresql/15/bin")
    binaries = Binaries(bin_dir / "initdb", bin_dir / "pg_ctl", bin_dir / "pg_basebackup", bin_dir / "postgres",
                        Path("/usr/bin/redis-server"), None)  # fmt: skip
    return Runtime(binaries, ServiceUser("postgres", 100, frozenset(), switch=False), "s3cret")


def test_patroni_config_synchronous_mode_fast_failover_and_callbacks() -> None:
    state = planned(Shape(replicas=1, pgbouncer=True, ha=True))
    node = state.node("main-replica1")
    doc = json.loads(patroni.render_config(node, runtime(), 2379))  # JSON is YAML: Patroni reads it
    dcs = doc["bootstrap"]["dcs"]
    assert dcs["synchronous_mode"] is True  # no acknowledged write lost in a failover
    assert dcs["loop_wait"] + 2 * dcs["retry_timeout"] <= dcs["ttl"]  # Patroni's own rule
    assert doc["etcd3"] == {"hosts": ["127.0.0.1:2379"]}  # etcd 3.4 serves no v2 API
    assert doc["postgresql"]["listen"] == f"127.0.0.1:{node.port}"
    assert doc["restapi"]["listen"] == f"127.0.0.1:{node.api_port}"
    assert set(doc["postgresql"]["callbacks"]) == {"on_start", "on_role_change"}


def test_callback_repoints_pgbouncer_only_when_its_member_leads() -> None:
    state = planned(Shape(replicas=1, pgbouncer=True, ha=True))
    node, bouncer = state.node("main-replica1"), state.node("pgbouncer-main")
    script = patroni.render_callback(node, bouncer)
    assert script.startswith("#!/bin/sh\n")
    assert "on_role_change:master|" in script and "on_role_change:primary)" in script
    assert str(patroni.bouncer_target_file(bouncer, node)) in script and "kill -HUP" in script
    assert "kill" not in patroni.render_callback(node, None)


def test_patroni_urls_are_validated_and_read_from_the_environment() -> None:
    config = load_config(
        environ={
            "DBSCALE_PRIMARY_URL": "postgresql://u@h/db",
            "DBSCALE_GROUPS__main__PATRONI": "http://a:8008,http://b:8008",
        }
    )
    assert config.group("main").patroni == ["http://a:8008", "http://b:8008"]
    with pytest.raises(ConfigError, match=r"groups\.main\.patroni\[0\].*not an HTTP URL"):
        load_config(environ={}, primary="postgresql://u@h/db", groups={"main": {"patroni": ["etcd://x"]}})
