"""`dbscale up --shards M --shard-replicas K` end to end: every shard group gets streaming replicas,
the written `[sharding]` drives the library, `dbscale init` installs the ID function on every shard,
and `dbscale status` shows each shard group's row estimate and skew."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import text

from dbscale import Cluster
from dbscale.local import LocalTopology

from ..conftest import make_state_dir

pytestmark = pytest.mark.integration


def dbscale(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "dbscale.cli", *args], capture_output=True, text=True, timeout=240, check=False
    )


@pytest.fixture(scope="module")
def state_dir() -> Iterator[Path]:
    path = make_state_dir("dbscale-test-shards-")
    try:
        yield path
    finally:
        LocalTopology(path).down(purge=True)
        shutil.rmtree(path, ignore_errors=True)


def test_up_with_shard_replicas_init_and_status(state_dir: Path) -> None:
    up = dbscale(
        "up", "--replicas", "0", "--shards", "2", "--shard-replicas", "1", "--state-dir", str(state_dir), "--json"
    )
    assert up.returncode == 0, up.stderr
    names = {n["name"]: n for n in json.loads(up.stdout)["nodes"]}
    assert {"shard0-replica1", "shard1-replica1"} <= set(names) and "main-replica1" not in names
    assert names["shard1-replica1"]["role"] == "replica" and names["shard1-replica1"]["healthy"]

    init = dbscale("init", "--state-dir", str(state_dir))
    assert init.returncode == 0, init.stderr
    with Cluster.from_config(state_dir / "dbscale.toml", environ={}) as cluster:
        assert cluster.shard_map.groups == ("shard0", "shard1")
        for group in ("shard0", "shard1"):
            with cluster.write(group) as conn:
                conn.execute(text("CREATE TABLE users (id bigint PRIMARY KEY DEFAULT dbscale_next_id(), name text)"))
        for user in range(300):
            with cluster.shard(f"user-{user}").write() as conn:
                new_id = conn.execute(
                    text("INSERT INTO users (name) VALUES (:n) RETURNING id"), {"n": f"user-{user}"}
                ).scalar_one()
            assert cluster.shard_of(new_id) == cluster.shard_for(f"user-{user}")
        cluster.reset_causal()
        deadline = time.monotonic() + 30
        while True:  # a routed read on a shard group lands on its replica once it has caught up
            cluster.refresh()
            with cluster.shard("user-1").read() as conn:
                node = conn.node
            if node.endswith("-replica1") or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        assert node == f"{cluster.shard_for('user-1')}-replica1"
        for group in ("shard0", "shard1"):
            with cluster.write(group) as conn:
                conn.execute(text("ANALYZE users"))

    deadline = time.monotonic() + 30
    while True:  # pg_stat counters reach the view within a moment
        status = dbscale("status", "--state-dir", str(state_dir), "--json")
        assert status.returncode == 0, status.stderr
        shards = {row["group"]: row for row in json.loads(status.stdout)["shards"]}
        if sum(row["rows"] or 0 for row in shards.values()) >= 300 or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert set(shards) == {"shard0", "shard1"}
    assert 300 <= sum(row["rows"] for row in shards.values()) <= 600  # an estimate (statistics), not a count
    assert all(0.5 < row["skew"] < 1.5 for row in shards.values())
    table = dbscale("status", "--state-dir", str(state_dir))
    assert "shard groups" in table.stdout and "skew" in table.stdout
