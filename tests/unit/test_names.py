"""One home per fact: the topology vocabulary in ``dbscale.names`` is what every other module uses."""

from __future__ import annotations

from pathlib import Path
from typing import get_args

import dbscale
from dbscale import names
from dbscale.config import GroupConfig
from dbscale.local.state import Shape, plan
from dbscale.routing import balance


def test_policies_list_is_the_policy_literal() -> None:
    assert get_args(names.Policy) == names.POLICIES
    assert balance.POLICIES is names.POLICIES
    assert GroupConfig.model_fields["load_balancing"].annotation == names.Policy


def test_local_topology_names_its_nodes_like_the_library() -> None:
    state = plan(Shape(replicas=2, shards=1, pgbouncer=True), "pw", Path("/tmp/x"), list(range(20000, 20010)))
    by_name = {n.name: n for n in state.nodes}
    assert {names.primary_name("main"), names.replica_name("main", 2), names.pgbouncer_name("shard0")} <= set(by_name)
    assert by_name[names.replica_name("main", 1)].slot == names.replica_slot("main", 1) == "main_replica1"


def test_version_comes_from_the_package_metadata() -> None:
    from importlib import metadata

    assert dbscale.__version__ == metadata.version("dbscale")
