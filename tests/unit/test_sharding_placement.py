"""Placement strategies: balance, movement, weights, determinism across processes, errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from collections import Counter
from hashlib import md5

import pytest
from hypothesis import given
from hypothesis import strategies as st

from dbscale.errors import DbscaleError, PlacementError, UnsupportedKeyError
from dbscale.sharding import HashMod, HashRing, JumpHash, Move, Placement, encode_key, hash64, jump_bucket, moved

NODES = [f"shard{i}" for i in range(10)]
KEYS = range(100_000)


def load(placement: Placement, keys: range = KEYS) -> Counter[str]:
    return Counter(placement.node_for(k) for k in keys)


def max_over_mean(placement: Placement) -> float:
    counts = load(placement)
    assert set(counts) == set(placement.nodes)
    return max(counts.values()) / (len(KEYS) / len(placement.nodes))


# --- canonical key encoding -------------------------------------------------------------------


def test_encoding_is_text_for_int_and_uuid_and_raw_for_bytes() -> None:
    u = uuid.UUID("12345678-1234-5678-1234-567812345678")
    assert encode_key("héllo") == "héllo".encode()
    assert encode_key(-42) == b"-42"
    assert encode_key(u) == b"12345678-1234-5678-1234-567812345678"
    assert encode_key(b"\x00\xff") == b"\x00\xff"
    assert encode_key(bytearray(b"ab")) == b"ab"
    assert hash64("42") == hash64(42) == int.from_bytes(md5(b"42").digest()[:8], "big")


@pytest.mark.parametrize("key", [True, 1.5, None, ("a",), object()])
def test_unsupported_key_types_are_refused_with_a_fix(key: object) -> None:
    for placement in (HashMod(NODES), JumpHash(NODES), HashRing(NODES), HashRing(NODES, ketama=True)):
        with pytest.raises(UnsupportedKeyError, match=r"use an int, str, bytes or uuid\.UUID key"):
            placement.node_for(key)  # type: ignore[arg-type]
    assert issubclass(UnsupportedKeyError, TypeError)
    assert issubclass(UnsupportedKeyError, DbscaleError)


# --- construction errors ----------------------------------------------------------------------


@pytest.mark.parametrize("cls", [HashMod, JumpHash, HashRing])
def test_node_list_errors(cls: type[HashMod] | type[JumpHash] | type[HashRing]) -> None:
    with pytest.raises(PlacementError, match="empty"):
        cls([])
    with pytest.raises(PlacementError, match="duplicate node 'a'"):
        cls(["a", "b", "a"])
    with pytest.raises(PlacementError, match="non-empty string"):
        cls(["a", ""])
    with pytest.raises(PlacementError, match="not the string"):
        cls("ab")


@pytest.mark.parametrize("weight", [0, -1, float("nan"), float("inf"), True, "2"])
def test_bad_weights_are_refused(weight: object) -> None:
    with pytest.raises(PlacementError, match="positive finite number"):
        HashRing(["a", "b"], weights={"a": weight})  # type: ignore[dict-item]


def test_weight_errors_unknown_node_tiny_weight_ketama_float_and_vnodes() -> None:
    with pytest.raises(PlacementError, match=r"unknown nodes \['c'\]"):
        HashRing(["a", "b"], weights={"c": 2})
    with pytest.raises(PlacementError, match="no points"):
        HashRing(["a", "b"], weights={"a": 0.001})
    with pytest.raises(PlacementError, match="integer weights"):
        HashRing(["a", "b"], weights={"a": 1.5}, ketama=True)
    with pytest.raises(PlacementError, match=r"no points"):
        HashRing(["a", "b"], weights={"a": 1, "b": 1000}, ketama=True)
    with pytest.raises(PlacementError, match="multiple of 4"):
        HashRing(["a"], vnodes=10, ketama=True)
    with pytest.raises(PlacementError, match="positive integer"):
        HashRing(["a"], vnodes=0)


# --- balance ----------------------------------------------------------------------------------


def test_ring_balance_160_vnodes() -> None:
    assert max_over_mean(HashRing(NODES, vnodes=160)) <= 1.15


def test_jump_balance() -> None:
    assert max_over_mean(JumpHash(NODES)) <= 1.05


# --- movement when an 11th node joins ---------------------------------------------------------


def moved_share(before: Placement, after: Placement) -> float:
    moves = moved(before, after, KEYS)
    assert all(m.target == "shard10" for m in moves) or isinstance(before, HashMod)
    return len(moves) / len(KEYS)


def test_ring_moves_only_what_the_new_node_takes() -> None:
    ring = HashRing(NODES)
    share = moved_share(ring, ring.with_node("shard10"))
    assert 0 < share <= 1.1 / 11


def test_jump_moves_only_what_the_new_node_takes() -> None:
    jump = JumpHash(NODES)
    share = moved_share(jump, jump.with_node("shard10"))
    assert 0 < share <= 1.1 / 11


def test_hash_mod_moves_about_ten_elevenths_which_is_why_ring_and_jump_are_preferred() -> None:
    share = len(moved(HashMod(NODES), HashMod([*NODES, "shard10"]), KEYS)) / len(KEYS)
    assert 0.88 <= share <= 0.94  # ~N/(N+1) = 0.909


def test_moved_reports_source_and_target() -> None:
    before, after = JumpHash(["a", "b"]), JumpHash(["a", "b", "c"])
    moves = before.moved(after, range(1000))
    assert moves and all(isinstance(m, Move) for m in moves)
    for m in moves:
        assert (m.source, m.target) == (before.node_for(m.key), after.node_for(m.key))
    assert {m.key for m in moves} == {k for k in range(1000) if before.node_for(k) != after.node_for(k)}


# --- weights ----------------------------------------------------------------------------------


def test_weights_give_proportional_points_and_keys() -> None:
    weights = {n: (2 if i % 2 else 1) for i, n in enumerate(NODES)}
    ring = HashRing(NODES, weights=weights)
    assert ring.point_counts() == {n: 160 * w for n, w in weights.items()}
    counts = load(ring)
    total = sum(weights.values())
    for w in (1, 2):
        expected = len(KEYS) * w * 5 / total  # five nodes of each weight
        got = sum(c for n, c in counts.items() if weights[n] == w)
        assert abs(got / expected - 1) <= 0.10


def test_weights_per_node_within_ten_percent_with_enough_vnodes() -> None:
    # Per node the ring itself varies by ~1/sqrt(points) (8 % sd at 160): use more points to see the weights.
    weights = {"a": 1, "b": 2, "c": 3, "d": 0.5}
    counts = load(HashRing(list(weights), weights=weights, vnodes=2000))
    total = sum(weights.values())
    for node, w in weights.items():
        assert abs(counts[node] / (len(KEYS) * w / total) - 1) <= 0.10, node


# --- incremental ring changes -----------------------------------------------------------------


@given(st.lists(st.sampled_from("abcdefgh"), min_size=1, max_size=6, unique=True), st.sampled_from("xyz"))
def test_with_and_without_node_equal_a_fresh_ring(nodes: list[str], extra: str) -> None:
    ring = HashRing(nodes, vnodes=40)
    grown = ring.with_node(extra, weight=2)
    assert grown.points() == HashRing([*nodes, extra], vnodes=40, weights={extra: 2}).points()
    assert grown.without_node(extra).points() == ring.points()
    if len(nodes) > 1:
        assert ring.without_node(nodes[0]).points() == HashRing(nodes[1:], vnodes=40).points()


def test_ring_is_immutable_and_with_node_hashes_only_the_new_node(monkeypatch: pytest.MonkeyPatch) -> None:
    import dbscale.sharding.ring as ring_module

    ring = HashRing(NODES)
    before = ring.points()
    hashed: list[str] = []
    real = ring_module._default_points

    def spy(node: str, start: int, stop: int):  # type: ignore[no-untyped-def]
        hashed.append(node)
        return real(node, start, stop)

    monkeypatch.setattr(ring_module, "_default_points", spy)
    grown = ring.with_node("shard10")
    assert hashed == ["shard10"]
    assert ring.points() == before
    assert len(grown.points()) == len(before) + 160


def test_ring_change_errors() -> None:
    ring = HashRing(["a", "b"])
    with pytest.raises(PlacementError, match="already on the ring"):
        ring.with_node("a")
    with pytest.raises(PlacementError, match="not on the ring"):
        ring.without_node("c")
    with pytest.raises(PlacementError, match="only node"):
        HashRing(["a"]).without_node("a")


def test_jump_bucket_reference_values_and_bounds() -> None:
    # The test vectors of dgryski/go-jump (a port of the paper's C++ code).
    vectors = [(1, 1, 0), (42, 57, 43), (0xDEAD10CC, 1, 0), (0xDEAD10CC, 666, 361), (256, 1024, 520)]
    assert [jump_bucket(key, n) for key, n, _ in vectors] == [expected for _, _, expected in vectors]
    with pytest.raises(PlacementError):
        jump_bucket(1, 0)


@given(st.integers(min_value=0, max_value=2**64 - 1), st.integers(min_value=1, max_value=50))
def test_jump_bucket_monotone(key: int, n: int) -> None:
    b, b1 = jump_bucket(key, n), jump_bucket(key, n + 1)
    assert 0 <= b < n
    assert b1 in (b, n)  # a key either stays or moves to the new bucket


# --- determinism across processes --------------------------------------------------------------

_CHILD = """
import json, sys, uuid
from dbscale.sharding import HashMod, HashRing, JumpHash
nodes = [f"shard{i}" for i in range(10)]
keys = list(range(500)) + [f"user:{i}" for i in range(500)] + [uuid.UUID(int=i) for i in range(100)] + [bytes([i, 7]) for i in range(100)]
out = {name: [p.node_for(k) for k in keys] for name, p in
       {"mod": HashMod(nodes), "jump": JumpHash(nodes), "ring": HashRing(nodes, weights={"shard3": 2}),
        "ketama": HashRing(nodes, ketama=True, weights={"shard3": 2})}.items()}
print(json.dumps(out))
"""


def test_same_node_in_a_separate_process_with_another_hash_seed() -> None:
    def run(seed: str) -> dict[str, list[str]]:
        env = {**os.environ, "PYTHONHASHSEED": seed}
        out = subprocess.run([sys.executable, "-c", _CHILD], env=env, capture_output=True, text=True, check=True)
        return json.loads(out.stdout)  # type: ignore[no-any-return]

    first, second = run("1"), run("2")
    assert first == second
    here: dict[str, list[str]] = {}
    exec(compile(_CHILD.replace("print(json.dumps(out))", "here.update(out)"), "<child>", "exec"), {"here": here})
    assert here == first
    assert len(set(first["ring"])) == 10
