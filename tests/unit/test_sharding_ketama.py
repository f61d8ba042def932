"""Ketama mode places keys exactly as uhashring's ketama mode (and libketama) do."""

from __future__ import annotations

from hashlib import md5

import pytest
import uhashring
from hypothesis import given, settings
from hypothesis import strategies as st

from dbscale.sharding import HashRing, ketama_hash

NODE_SETS: list[list[str] | dict[str, int]] = [
    ["cache1", "cache2", "cache3"],
    {"10.0.0.1:11211": 1, "10.0.0.2:11211": 2, "10.0.0.3:11211": 3},
    {f"shard{i}": (i % 3) + 1 for i in range(7)},
]


def ours(nodes: list[str] | dict[str, int]) -> HashRing:
    return HashRing(list(nodes), weights=nodes if isinstance(nodes, dict) else None, ketama=True)


def test_field_notes_test_vector() -> None:
    assert ketama_hash(b"test") == 3446378249
    assert uhashring.HashRing(["a"], hash_fn="ketama").hashi("test") == 3446378249


@pytest.mark.parametrize("nodes", NODE_SETS, ids=["equal", "weighted-3", "weighted-7"])
def test_same_node_as_uhashring_for_10000_keys(nodes: list[str] | dict[str, int]) -> None:
    theirs = uhashring.HashRing(nodes, hash_fn="ketama")
    ring = ours(nodes)
    assert ring.points() == theirs.get_points()
    keys = [*range(5_000), *(f"user:{i}" for i in range(5_000))]
    mismatches = [k for k in keys if ring.node_for(k) != theirs.get_node(k)]
    assert mismatches == []
    assert len({ring.node_for(k) for k in keys}) == len(nodes)


def test_a_key_hashing_exactly_onto_a_point_goes_to_the_next_point_like_uhashring() -> None:
    theirs = uhashring.HashRing(["a", "b", "c"], hash_fn="ketama")
    ring = ours(["a", "b", "c"])
    # The key "a-1" hashes exactly onto a point of node a (slice 0 of a's digest 1), and the next
    # point belongs to another node, so "first point >= hash" (libketama) would answer "a".
    point = int.from_bytes(md5(b"a-1").digest()[:4], "little")
    points = [p for p, _ in ring.points()]
    assert dict(ring.points())[point] == "a"
    following = ring.points()[(points.index(point) + 1) % len(points)][1]
    assert following != "a"
    assert ring.node_for("a-1") == theirs.get_node("a-1") == following


@settings(max_examples=25, deadline=None)
@given(
    st.dictionaries(st.sampled_from([f"n{i}" for i in range(8)]), st.integers(1, 5), min_size=2, max_size=6),
    st.sampled_from(["x", "y"]),
    st.integers(1, 4),
)
def test_adding_and_removing_weighted_nodes_matches_uhashring(nodes: dict[str, int], extra: str, weight: int) -> None:
    theirs = uhashring.HashRing(dict(nodes), hash_fn="ketama")
    ring = ours(nodes).with_node(extra, weight)
    theirs.add_node(extra, {"weight": weight})
    assert ring.points() == theirs.get_points()
    first = next(iter(nodes))
    theirs.remove_node(first)
    ring = ring.without_node(first)
    assert ring.points() == theirs.get_points()
    assert all(ring.node_for(k) == theirs.get_node(k) for k in range(300))
