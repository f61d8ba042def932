"""Load balancing across eligible nodes (pure: state and randomness are passed in).

* ``least_outstanding`` (default): the node with the fewest reads in flight relative to its
  weight; ties are broken with the supplied random number so idle nodes share the load.
* ``round_robin``: smooth weighted round-robin (nginx's algorithm): over any window of
  ``sum(weights)`` picks each node is chosen in proportion to its weight, interleaved.
* ``random``: weighted random choice.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from dbscale.names import POLICIES, Policy


def _weight(weights: Mapping[str, float], name: str) -> float:
    w = weights.get(name, 1.0)
    return w if w > 0 else 0.0


def least_outstanding(
    candidates: Sequence[str], weights: Mapping[str, float], outstanding: Mapping[str, int], rand: float
) -> str:
    """The candidate with the lowest ``outstanding / weight``; ``rand`` in [0, 1) breaks ties."""
    best: list[str] = []
    best_score = float("inf")
    for name in candidates:
        w = _weight(weights, name)
        score = (outstanding.get(name, 0) + 1) / w if w else float("inf")
        if score < best_score:
            best, best_score = [name], score
        elif score == best_score:
            best.append(name)
    if not best:  # every weight is zero: treat them as equal
        best = list(candidates)
    return best[min(int(rand * len(best)), len(best) - 1)]


def weighted_random(candidates: Sequence[str], weights: Mapping[str, float], rand: float) -> str:
    """A candidate drawn with probability proportional to its weight, using ``rand`` in [0, 1)."""
    total = sum(_weight(weights, n) for n in candidates)
    if total <= 0:
        return candidates[min(int(rand * len(candidates)), len(candidates) - 1)]
    point = rand * total
    for name in candidates:
        point -= _weight(weights, name)
        if point < 0:
            return name
    return candidates[-1]


def smooth_round_robin(
    candidates: Sequence[str], weights: Mapping[str, float], current: Mapping[str, float]
) -> tuple[str, dict[str, float]]:
    """One step of smooth weighted round-robin; returns the pick and the new running weights."""
    state = {n: current.get(n, 0.0) + (_weight(weights, n) or 1e-9) for n in candidates}
    total = sum(_weight(weights, n) or 1e-9 for n in candidates)
    pick = max(candidates, key=lambda n: (state[n], -candidates.index(n)))
    state[pick] -= total
    return pick, state


def choose(
    policy: Policy,
    candidates: Sequence[str],
    *,
    weights: Mapping[str, float],
    outstanding: Mapping[str, int],
    rr_state: Mapping[str, float],
    rand: float,
) -> tuple[str, dict[str, float] | None]:
    """Pick one of ``candidates`` (non-empty) under ``policy``; also return new round-robin state if any."""
    if not candidates:
        raise ValueError("choose() needs at least one candidate")
    if len(candidates) == 1:
        return candidates[0], None
    if policy == "round_robin":
        return smooth_round_robin(candidates, weights, rr_state)
    if policy == "random":
        return weighted_random(candidates, weights, rand), None
    return least_outstanding(candidates, weights, outstanding, rand), None


__all__ = ["POLICIES", "Policy", "choose", "least_outstanding", "smooth_round_robin", "weighted_random"]
