"""The pure parts of the sharding shell: ``[sharding]`` validation, the shard map, the per-shard SQL,
the merge-order check, and the local topology's shard replicas and ``[sharding]`` section."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from dbscale import Cluster
from dbscale.config import load_config
from dbscale.errors import ConfigError, ShardingError
from dbscale.local.state import Shape, config_document, node_count, plan
from dbscale.sharding import FanoutPlan, HashRing, JumpHash, Range, make_id
from dbscale.sharding.fanout import misordered_column, shard_sql
from dbscale.sharding.shardmap import Scheme, ShardMap

URL = "postgresql://u@127.0.0.1:5432/db"
GROUPS = {g: {"primary": URL} for g in ("main", "s0", "s1", "s2")}


def config(sharding: dict[str, Any]) -> Any:
    return load_config(environ={}, groups=GROUPS, sharding=sharding)


def test_sharding_section_builds_default_and_entity_schemes() -> None:
    cfg = config(
        {
            "strategy": "jump",
            "groups": ["s0", "s1", "s2"],
            "entities": {
                "orders": {"key": "user_id"},
                "events": {"key": "tenant", "strategy": "ring", "vnodes": 40},
                "invoices": {"key": "n", "strategy": "range", "ranges": [[None, 100, "s0"], [100, None, "s1"]]},
            },
        }
    )
    with Cluster(cfg) as cluster:
        shard_map = cluster.shard_map
        assert isinstance(shard_map.placement(), JumpHash)
        assert isinstance(shard_map.placement("orders"), JumpHash)  # inherits strategy and groups
        ring = shard_map.placement("events")
        assert isinstance(ring, HashRing) and ring.vnodes == 40
        assert isinstance(shard_map.placement("invoices"), Range)
        for key in range(200):  # users and their orders are co-located
            assert (
                cluster.shard_for(key) == cluster.shard_for("orders", key) == JumpHash(["s0", "s1", "s2"]).node_for(key)
            )
        assert cluster.shard_for("invoices", 99) == "s0" and cluster.shard_for("invoices", 100) == "s1"
        assert cluster.shard("orders", 7).group == cluster.shard_for("orders", 7)
        assert cluster.shard_of(make_id(5, 2, 0)) == "s2"
        with pytest.raises(ShardingError, match="no sharded entity 'carts'"):
            cluster.shard_for("carts", 1)
        with pytest.raises(ShardingError, match="logical shard 7"):
            cluster.shard_of(make_id(5, 7, 0))


@pytest.mark.parametrize(
    ("sharding", "message"),
    [
        ({"groups": ["s0", "nope"]}, r"sharding: shard groups \['nope'\] are not configured"),
        ({"strategy": "ring"}, "sharding: groups: name the shard groups"),
        ({"groups": ["s0", "s0"]}, "names a group twice"),
        ({"groups": ["s0"], "strategy": "modulo"}, "sharding.strategy"),
        ({"groups": ["s0"], "strategy": "range"}, "strategy 'range' needs ranges"),
        (
            {"groups": ["s0"], "entities": {"o": {"key": "k", "groups": ["s1"]}}},
            r"entities.o.groups: \['s1'\] are not in",
        ),
        ({"groups": ["s0"], "entities": {"o": {}}}, "entities.o.key: required setting is missing"),
        ({"groups": ["s0"], "colour": "red"}, "sharding.colour: unknown setting"),
    ],
)
def test_sharding_section_errors_name_the_field(sharding: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        config(sharding)


def test_no_sharding_section_is_a_clear_error() -> None:
    with (
        Cluster(load_config(environ={}, groups=GROUPS)) as cluster,
        pytest.raises(ConfigError, match=r"add \[sharding\]"),
    ):
        cluster.shard_for(1)


def test_logical_shard_numbers_follow_the_group_order() -> None:
    shard_map = ShardMap(Scheme("ring", ["a", "b", "c"]))
    assert [shard_map.id_shard(g) for g in "abc"] == [0, 1, 2]
    with pytest.raises(ShardingError, match="not a shard group"):
        shard_map.id_shard("d")


def test_shard_sql_wraps_only_when_rows_must_be_ordered_or_limited() -> None:
    page = FanoutPlan(order_by=[("created_at", "desc"), "id"], limit=20, offset=40)
    assert shard_sql("SELECT id, created_at FROM orders;", page) == (
        "SELECT * FROM (SELECT id, created_at FROM orders) AS dbscale_shard "
        "ORDER BY created_at DESC NULLS FIRST, id ASC NULLS LAST LIMIT 60"
    )
    assert shard_sql("SELECT 1", FanoutPlan()) == "SELECT 1"
    assert shard_sql("SELECT x FROM t", FanoutPlan(limit=5)).endswith("AS dbscale_shard LIMIT 5")
    from dbscale.sharding import Aggregate

    grouped = FanoutPlan(aggregates=[Aggregate.count("n")], group_by=["k"], order_by=["k"], limit=3)
    assert (
        shard_sql("SELECT k, count(*) AS n FROM t GROUP BY k", grouped) == "SELECT k, count(*) AS n FROM t GROUP BY k"
    )


def test_misordered_column_catches_a_shard_sorted_by_another_collation() -> None:
    plan_ = FanoutPlan(order_by=["name", "id"], limit=10)
    assert misordered_column([{"name": "B", "id": 1}, {"name": "a", "id": 2}], plan_) is None  # code point order
    assert misordered_column([{"name": "a", "id": 1}, {"name": "B", "id": 2}], plan_) == "name"  # en_US order
    assert misordered_column([{"name": None, "id": 2}, {"name": None, "id": 1}], plan_) == "id"
    assert misordered_column([{"name": "a", "id": 1}], FanoutPlan()) is None


def test_local_shards_get_replicas_and_a_sharding_section() -> None:
    shape = Shape(replicas=0, shards=3, pgbouncer=False, shard_replicas=1)
    state = plan(shape, "pw", Path("/srv/x"), list(range(30000, 30000 + node_count(shape))))
    assert state.names() == [
        "main-primary", "shard0-primary", "shard0-replica1", "shard1-primary", "shard1-replica1",
        "shard2-primary", "shard2-replica1", "redis",
    ]  # fmt: skip
    replica = state.node("shard1-replica1")
    assert (replica.upstream, replica.slot) == ("shard1-primary", "shard1_replica1")
    doc = config_document(state)
    assert doc["sharding"] == {"strategy": "ring", "groups": ["shard0", "shard1", "shard2"]}
    assert len(doc["groups"]["shard2"]["replicas"]) == 1
    assert "sharding" not in config_document(plan(Shape(shards=0), "pw", Path("/srv/x"), list(range(30000, 30010))))
    assert Shape(shards=2).mismatches(None, None, None, shard_replicas=1) == ["shard_replicas=1 (state has 0)"]
