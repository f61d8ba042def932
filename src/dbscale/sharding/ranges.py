"""Range placement: half-open key ranges mapped to nodes, validated once, looked up by bisection — pure.

``Range([(None, 1000, "s0"), (1000, 5000, "s1"), (5000, None, "s2")])`` puts keys below 1000 on
``s0``, ``[1000, 5000)`` on ``s1`` and 5000 and above on ``s2``. A bound of ``None`` is open
(only the lowest range may have an open low end, only the highest an open high end). Keys compare
in their natural order (``int``, ``str`` by code point, ``bytes``, ``uuid.UUID`` by value), so all
bounds and keys of one Range share one type.

Validation at construction: ranges must be non-empty (``low < high``) and must not overlap; with no
``default`` they must also leave no gap between the lowest and the highest bound. With a
``default``, keys in a gap or beyond the ends go to it; without, such a key raises
:class:`~dbscale.errors.PlacementError`.
"""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Iterable
from itertools import pairwise
from typing import Any
from uuid import UUID

from dbscale.errors import PlacementError, UnsupportedKeyError
from dbscale.sharding.placement import Key, Placement

#: One range: ``(low, high, node)``, ``low`` inclusive, ``high`` exclusive, ``None`` for open.
Bound = tuple[Key | None, Key | None, str]

_KEY_TYPES: tuple[type, ...] = (int, str, bytes, UUID)


def _kind(value: object, where: str) -> type:
    if isinstance(value, bool):
        raise UnsupportedKeyError(f"{where}: {value!r} is a bool; range keys are int, str, bytes or uuid.UUID")
    for kind in _KEY_TYPES:
        if isinstance(value, kind):
            return kind
    raise UnsupportedKeyError(
        f"{where}: {value!r} has type {type(value).__name__}; range keys are int, str, bytes or uuid.UUID"
    )


class Range(Placement):
    """Placement by key ranges (see the module docstring); ``default`` receives keys outside every range."""

    __slots__ = ("_default", "_highs", "_kind", "_lo", "_lows", "_owners")

    def __init__(self, bounds: Iterable[Bound], default: str | None = None) -> None:
        ranges = [tuple(b) for b in bounds]
        if not ranges:
            raise PlacementError("Range has no ranges: give (low, high, node) tuples, e.g. [(None, 1000, 's0'), ...]")
        if default is not None and (not isinstance(default, str) or not default):
            raise PlacementError(f"default={default!r}: name a node (a non-empty string) or leave it None")
        kind: type | None = None
        for i, r in enumerate(ranges):
            if len(r) != 3:
                raise PlacementError(f"bounds[{i}]={r!r}: each range is a (low, high, node) tuple")
            low, high, node = r
            if not isinstance(node, str) or not node:
                raise PlacementError(f"bounds[{i}]: node {node!r} must be a non-empty string")
            for value in (low, high):
                if value is None:
                    continue
                k = _kind(value, f"bounds[{i}]")
                if kind is not None and k is not kind:
                    raise PlacementError(
                        f"bounds[{i}]: {value!r} is {k.__name__} but earlier bounds are {kind.__name__}; use one key type per Range"
                    )
                kind = k
            if low is not None and high is not None and not low < high:  # type: ignore[operator]
                raise PlacementError(f"bounds[{i}]=[{low!r}, {high!r}) is empty: low must be below high")
        if kind is None:
            if len(ranges) > 1:
                raise PlacementError(
                    "Range: several ranges without any bound overlap; give one (None, None, node) at most"
                )
            kind = int  # a single (None, None, node): every key of any supported type goes there
        ranges.sort(key=lambda r: (r[0] is not None, r[0] if r[0] is not None else 0))
        for prev, cur in pairwise(ranges):
            p_high, c_low = prev[1], cur[0]
            if p_high is None or c_low is None or p_high > c_low:  # type: ignore[operator]
                raise PlacementError(
                    f"ranges {_show(prev)} and {_show(cur)} overlap: a key may belong to one range only; "
                    "make the first end where the next begins"
                )
            if p_high < c_low and default is None:  # type: ignore[operator]
                raise PlacementError(
                    f"gap between {_show(prev)} and {_show(cur)}: keys in [{p_high!r}, {c_low!r}) would have no node; "
                    "close the gap or name a default node"
                )
        self._kind = kind
        self._default = default
        self._lows: list[Any] = [r[0] for r in ranges]
        self._highs: list[Any] = [r[1] for r in ranges]
        self._owners: list[str] = [str(r[2]) for r in ranges]
        self._lo = 1 if self._lows[0] is None else 0
        nodes = dict.fromkeys(self._owners)
        if default is not None:
            nodes.setdefault(default)
        self._nodes = tuple(nodes)

    @property
    def default(self) -> str | None:
        """The node for keys outside every range, if any."""
        return self._default

    @property
    def bounds(self) -> list[Bound]:
        """The ranges, sorted by low bound."""
        return list(zip(self._lows, self._highs, self._owners, strict=True))

    def node_for(self, key: Key) -> str:
        if not isinstance(key, self._kind) or isinstance(key, bool):
            if self._lows[0] is None and self._highs[0] is None:
                _kind(key, "shard key")
                return self._owners[0]
            raise UnsupportedKeyError(
                f"shard key {key!r} has type {type(key).__name__} but this Range's bounds are {self._kind.__name__}"
            )
        i = bisect_right(self._lows, key, lo=self._lo) - 1
        if i >= 0:
            high = self._highs[i]
            if high is None or key < high:
                return self._owners[i]
        if self._default is not None:
            return self._default
        raise PlacementError(
            f"shard key {key!r} is outside every range ({self._describe()}): add a range covering it or name a default node"
        )

    def _describe(self) -> str:
        return ", ".join(_show(b) for b in self.bounds)

    def __repr__(self) -> str:
        return f"Range({self.bounds!r}, default={self._default!r})"


def _show(r: tuple[Any, ...]) -> str:
    low = "-inf" if r[0] is None else repr(r[0])
    high = "+inf" if r[1] is None else repr(r[1])
    return f"[{low}, {high})->{r[2]}"


__all__ = ["Bound", "Range"]
