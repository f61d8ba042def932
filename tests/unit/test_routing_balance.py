"""Load balancing policies (pure)."""

from __future__ import annotations

from collections import Counter

from hypothesis import given
from hypothesis import strategies as st

from dbscale.routing.balance import choose, least_outstanding, smooth_round_robin, weighted_random

NODES = ["a", "b", "c"]


def test_least_outstanding_picks_the_idlest() -> None:
    assert least_outstanding(NODES, {}, {"a": 3, "b": 0, "c": 1}, 0.99) == "b"


def test_least_outstanding_respects_weights() -> None:
    # b has twice the capacity: 1 in flight on b counts like 0.5 on a
    assert least_outstanding(["a", "b"], {"a": 1, "b": 3}, {"a": 1, "b": 2}, 0.0) == "b"


def test_least_outstanding_ties_spread_with_randomness() -> None:
    picks = {least_outstanding(NODES, {}, {}, r / 10) for r in range(10)}
    assert picks == set(NODES)


def test_smooth_round_robin_follows_weights_interleaved() -> None:
    state: dict[str, float] = {}
    picks = []
    for _ in range(7):
        pick, state = smooth_round_robin(["a", "b", "c"], {"a": 5, "b": 1, "c": 1}, state)
        picks.append(pick)
    assert Counter(picks) == {"a": 5, "b": 1, "c": 1}
    assert picks[:2] != ["a", "a"] or picks[2] != "a"  # interleaved, not a burst of five


def test_plain_round_robin_cycles() -> None:
    state: dict[str, float] = {}
    picks = []
    for _ in range(6):
        pick, state = smooth_round_robin(NODES, {}, state)
        picks.append(pick)
    assert picks == ["a", "b", "c", "a", "b", "c"]


def test_weighted_random_proportions() -> None:
    counts = Counter(weighted_random(["a", "b"], {"a": 1, "b": 3}, i / 1000) for i in range(1000))
    assert counts == {"a": 250, "b": 750}


def test_zero_weight_node_never_chosen_by_random() -> None:
    assert all(weighted_random(["a", "b"], {"a": 0}, i / 100) == "b" for i in range(100))


@given(
    st.sampled_from(["least_outstanding", "round_robin", "random"]),
    st.lists(st.sampled_from(NODES), min_size=1, unique=True),
    st.floats(min_value=0, max_value=0.999999),
    st.dictionaries(st.sampled_from(NODES), st.integers(0, 50)),
)
def test_choice_is_always_a_candidate(policy, candidates, rand, outstanding) -> None:  # type: ignore[no-untyped-def]
    pick, _ = choose(policy, candidates, weights={}, outstanding=outstanding, rr_state={}, rand=rand)
    assert pick in candidates
