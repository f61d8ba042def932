"""Range placement: validation at construction, bisection, open ends, the default node."""

from __future__ import annotations

import uuid
from itertools import pairwise

import pytest
from hypothesis import given
from hypothesis import strategies as st

from dbscale.errors import PlacementError, UnsupportedKeyError
from dbscale.sharding import Range

THREE = [(None, 1000, "s0"), (1000, 5000, "s1"), (5000, None, "s2")]


def test_lookup_on_half_open_ranges_with_open_ends() -> None:
    r = Range(THREE)
    assert [r.node_for(k) for k in (-(10**30), 999, 1000, 4999, 5000, 10**30)] == ["s0", "s0", "s1", "s1", "s2", "s2"]
    assert r.nodes == ("s0", "s1", "s2")


def test_ranges_may_be_given_in_any_order_and_share_a_node() -> None:
    r = Range([(20, 30, "a"), (0, 10, "a"), (10, 20, "b")])
    assert r.bounds == [(0, 10, "a"), (10, 20, "b"), (20, 30, "a")]
    assert r.nodes == ("a", "b")
    assert [r.node_for(k) for k in (0, 10, 25)] == ["a", "b", "a"]


@given(
    st.lists(st.integers(-1000, 1000), min_size=2, max_size=12, unique=True).map(sorted),
    st.integers(-1200, 1200),
    st.lists(st.booleans(), min_size=11, max_size=11),
)
def test_bisect_lookup_equals_a_linear_scan(cuts: list[int], key: int, keep: list[bool]) -> None:
    pairs = [(lo, hi, f"n{i}") for i, (lo, hi) in enumerate(pairwise(cuts))]
    bounds = [b for b, k in zip(pairs, keep, strict=False) if k] or pairs[:1]  # dropped ranges leave gaps
    r = Range(bounds, default="dflt")
    expected = next((node for lo, hi, node in bounds if lo <= key < hi), "dflt")
    assert r.node_for(key) == expected


def test_key_outside_every_range_is_a_clear_error_without_default() -> None:
    r = Range([(0, 10, "a"), (10, 20, "b")])
    with pytest.raises(PlacementError, match=r"shard key 20 is outside every range .*name a default node"):
        r.node_for(20)
    with pytest.raises(PlacementError, match="outside every range"):
        r.node_for(-1)


def test_default_takes_gaps_and_ends() -> None:
    r = Range([(0, 10, "a"), (20, 30, "b")], default="rest")
    assert [r.node_for(k) for k in (-5, 0, 10, 15, 20, 30)] == ["rest", "a", "rest", "rest", "b", "rest"]
    assert r.nodes == ("a", "b", "rest")


def test_gap_without_default_is_refused() -> None:
    with pytest.raises(PlacementError, match=r"gap between \[0, 10\)->a and \[20, 30\)->b.*name a default"):
        Range([(0, 10, "a"), (20, 30, "b")])


@pytest.mark.parametrize(
    "bounds",
    [
        [(0, 10, "a"), (5, 20, "b")],
        [(None, 10, "a"), (None, 20, "b")],
        [(0, None, "a"), (10, 20, "b")],
        [(0, 10, "a"), (0, 10, "b")],
    ],
)
def test_overlaps_are_refused_even_with_a_default(bounds: list[tuple[int | None, int | None, str]]) -> None:
    with pytest.raises(PlacementError, match="overlap"):
        Range(bounds, default="d")


def test_other_construction_errors() -> None:
    with pytest.raises(PlacementError, match="no ranges"):
        Range([])
    with pytest.raises(PlacementError, match="is empty: low must be below high"):
        Range([(10, 10, "a")])
    with pytest.raises(PlacementError, match="one key type per Range"):
        Range([(0, 10, "a"), ("10", "20", "b")])  # type: ignore[list-item]
    with pytest.raises(PlacementError, match="non-empty string"):
        Range([(0, 10, "")])
    with pytest.raises(PlacementError, match=r"\(low, high, node\)"):
        Range([(0, 10)])  # type: ignore[list-item]
    with pytest.raises(UnsupportedKeyError, match="bool"):
        Range([(False, True, "a")])
    with pytest.raises(UnsupportedKeyError, match="float"):
        Range([(0.5, 1.5, "a")])  # type: ignore[list-item]


def test_key_of_another_type_than_the_bounds_is_refused() -> None:
    with pytest.raises(UnsupportedKeyError, match="bounds are int"):
        Range(THREE).node_for("42")
    with pytest.raises(UnsupportedKeyError, match="bounds are int"):
        Range(THREE).node_for(True)


def test_str_bytes_and_uuid_ranges() -> None:
    assert Range([(None, "m", "a-l"), ("m", None, "m-z")]).node_for("zoe") == "m-z"
    assert Range([(b"", b"\x80", "low"), (b"\x80", None, "high")]).node_for(b"\x81") == "high"
    half = uuid.UUID(int=1 << 127)
    r = Range([(None, half, "first"), (half, None, "second")])
    assert r.node_for(uuid.UUID(int=5)) == "first"
    assert r.node_for(uuid.UUID(int=(1 << 127) + 5)) == "second"


def test_single_unbounded_range_takes_every_key() -> None:
    r = Range([(None, None, "only")])
    assert r.node_for(5) == r.node_for("x") == "only"
