"""Consistent-hash ring with virtual nodes, weights and libketama / uhashring compatibility — pure.

Theory of operation
-------------------
Each node owns points on a circle of integers; a key belongs to the node owning the first point
strictly greater than the key's hash, wrapping past the end (``bisect_right`` on a sorted list,
O(log n) per lookup). The ring is immutable: :meth:`HashRing.with_node` and
:meth:`HashRing.without_node` return a new ring made by copying the sorted point list and inserting
or deleting only the points that change (``bisect`` + ``list.insert``/``del``), never re-hashing the
other nodes. A lookup reads one list, so a ring can be shared between threads and swapped whole.

Two point layouts:

* **default** (``ketama=False``): node ``n`` with weight ``w`` owns ``round(vnodes * w)`` points,
  point ``i`` being the first 8 bytes (big-endian) of ``md5(f"{n}-{i}")``; a key hashes to
  :func:`~dbscale.sharding.placement.hash64`. A node's points depend on that node alone, so
  adding a node moves only the keys it takes. Two nodes claiming the same point: the
  lexicographically smaller name owns it (independent of history).
* **ketama** (``ketama=True``): placement identical to ``uhashring.HashRing(nodes,
  hash_fn="ketama")`` and to libketama (memcached clients). ``vnodes`` counts points, so the default
  160 is libketama's 40 MD5 digests x 4 points. Node ``n`` gets ``ks = (vnodes/4 * N * w) // sum(w)``
  digests (integer weights; integer floor as uhashring, libketama uses float32 and may differ by
  one digest in rare cases), digest ``k`` being ``md5(f"{n}-{k}")`` and giving 4 points, its 4-byte
  slices read little-endian. A key hashes to bytes 0-3 of ``md5(encode_key(key))``, little-endian
  (``"test"`` → 3446378249). uhashring looks up the first point strictly greater (libketama: greater
  or equal; they differ only when a key hashes exactly onto a point) and, when two nodes share a
  point, the later node in configuration order owns it; both are followed here. Changing the node
  set changes ``N`` and ``sum(w)``, so with unequal weights other nodes gain or lose their last few
  digests: only those deltas are hashed. uhashring hashes ``str(key)``; for ``bytes`` keys dbscale
  hashes the bytes themselves (as libketama does), not their ``repr``.
"""

from __future__ import annotations

import math
from bisect import bisect_left, bisect_right
from collections.abc import Iterable, Iterator, Mapping, Sequence
from hashlib import md5

from dbscale.errors import PlacementError
from dbscale.sharding.placement import Key, Placement, encode_key, validate_nodes

#: Points per MD5 digest in ketama mode.
KETAMA_POINTS_PER_DIGEST = 4


def ketama_hash(data: bytes) -> int:
    """libketama's key hash: bytes 0-3 of ``md5(data)`` as a little-endian unsigned 32-bit integer."""
    return int.from_bytes(md5(data).digest()[:4], "little")


def _default_points(node: str, start: int, stop: int) -> Iterator[int]:
    for i in range(start, stop):
        yield int.from_bytes(md5(f"{node}-{i}".encode()).digest()[:8], "big")


def _ketama_points(node: str, start: int, stop: int) -> Iterator[int]:
    for k in range(start, stop):
        digest = md5(f"{node}-{k}".encode()).digest()
        for r in range(KETAMA_POINTS_PER_DIGEST):
            yield int.from_bytes(digest[4 * r : 4 * r + 4], "little")


class HashRing(Placement):
    """Consistent hashing over ``nodes`` with ``vnodes`` points per node of weight 1.

    ``weights`` maps node name to a relative weight (default 1; positive numbers, integers in
    ketama mode); a node of weight 2 gets twice the points and about twice the keys.
    ``ketama=True`` places keys exactly as uhashring's ketama mode (see the module docstring).
    """

    __slots__ = ("_claims", "_counts", "_ketama", "_lookup", "_points", "_vnodes", "_weights")

    _weights: dict[str, float]
    _vnodes: int
    _ketama: bool
    _counts: dict[str, int]
    _points: list[int]
    _lookup: list[str]
    _claims: dict[int, list[str]]

    def __init__(
        self,
        nodes: Sequence[str],
        vnodes: int = 160,
        weights: Mapping[str, float] | None = None,
        ketama: bool = False,
    ) -> None:
        node_tuple = validate_nodes(nodes)
        if isinstance(vnodes, bool) or not isinstance(vnodes, int) or vnodes < 1:
            raise PlacementError(f"vnodes={vnodes!r}: give a positive integer number of points per node (e.g. 160)")
        if ketama and vnodes % KETAMA_POINTS_PER_DIGEST:
            raise PlacementError(
                f"vnodes={vnodes} with ketama=True: ketama makes 4 points per digest, use a multiple of 4 (160 = libketama's 40 x 4)"
            )
        weights = dict(weights or {})
        unknown = sorted(set(weights) - set(node_tuple))
        if unknown:
            raise PlacementError(f"weights name unknown nodes {unknown}: weights may only name nodes of the ring")
        self._ketama = ketama
        self._vnodes = vnodes
        self._nodes = node_tuple
        self._weights = {node: self._check_weight(node, weights.get(node, 1)) for node in node_tuple}
        self._counts = self._point_counts()
        claims: dict[int, list[str]] = {}
        for node in node_tuple:
            for point in self._node_points(node, 0, self._counts[node]):
                claims.setdefault(point, []).append(node)
        self._claims = claims
        self._points = sorted(claims)
        self._lookup = [self._owner(claims[p]) for p in self._points]
        self._lookup.append(self._lookup[0])

    # --- construction helpers -------------------------------------------------------------

    def _check_weight(self, node: str, weight: float) -> float:
        if isinstance(weight, bool) or not isinstance(weight, int | float) or not math.isfinite(weight) or weight <= 0:
            raise PlacementError(f"weights[{node!r}]={weight!r}: a weight must be a positive finite number")
        if self._ketama and not isinstance(weight, int):
            raise PlacementError(
                f"weights[{node!r}]={weight!r}: ketama mode (libketama, uhashring) takes integer weights"
            )
        if not self._ketama and round(self._vnodes * weight) < 1:
            raise PlacementError(
                f"weights[{node!r}]={weight!r} gives node {node!r} no points with vnodes={self._vnodes}: raise the weight or vnodes"
            )
        return weight

    def _point_counts(self) -> dict[str, int]:
        """Points (default) or digests (ketama) per node."""
        if not self._ketama:
            return {node: round(self._vnodes * w) for node, w in self._weights.items()}
        total = sum(int(w) for w in self._weights.values())
        per_node = self._vnodes // KETAMA_POINTS_PER_DIGEST
        counts = {node: (per_node * len(self._nodes) * int(w)) // total for node, w in self._weights.items()}
        starved = sorted(node for node, ks in counts.items() if ks == 0)
        if starved:
            raise PlacementError(
                f"ketama weights give {starved} no points: raise their weights relative to the others (or raise vnodes)"
            )
        return counts

    def _node_points(self, node: str, start: int, stop: int) -> Iterator[int]:
        return (_ketama_points if self._ketama else _default_points)(node, start, stop)

    def _owner(self, claimants: list[str]) -> str:
        if len(claimants) == 1:
            return claimants[0]
        if self._ketama:
            order = {node: i for i, node in enumerate(self._nodes)}
            return max(claimants, key=order.__getitem__)
        return min(claimants)

    # --- public API -----------------------------------------------------------------------

    @property
    def weights(self) -> Mapping[str, float]:
        """Each node's weight (1 unless configured)."""
        return dict(self._weights)

    @property
    def vnodes(self) -> int:
        """Points per node of weight 1."""
        return self._vnodes

    @property
    def ketama(self) -> bool:
        """Whether placement follows libketama / uhashring's ketama mode."""
        return self._ketama

    def points(self) -> list[tuple[int, str]]:
        """The ring as sorted ``(point, owner)`` pairs (for inspection and tests)."""
        return list(zip(self._points, self._lookup, strict=False))

    def point_counts(self) -> dict[str, int]:
        """How many ring points each node owns."""
        owned = dict.fromkeys(self._nodes, 0)
        for owner in self._lookup[:-1]:
            owned[owner] += 1
        return owned

    def node_for(self, key: Key) -> str:
        data = key.encode("utf-8") if type(key) is str else encode_key(key)
        if self._ketama:
            h = int.from_bytes(md5(data).digest()[:4], "little")
        else:
            h = int.from_bytes(md5(data).digest()[:8], "big")
        return self._lookup[bisect_right(self._points, h)]

    def with_node(self, node: str, weight: float = 1) -> HashRing:
        """A new ring with ``node`` added; only the changed points are hashed and inserted."""
        if node in self._weights:
            raise PlacementError(f"node {node!r} is already on the ring: remove it first to change its weight")
        validate_nodes([node])
        weights = dict(self._weights)
        weights[node] = weight
        return self._rebuilt((*self._nodes, node), weights)

    def without_node(self, node: str) -> HashRing:
        """A new ring without ``node``; only the changed points are hashed and deleted."""
        if node not in self._weights:
            raise PlacementError(f"node {node!r} is not on the ring (nodes: {list(self._nodes)})")
        if len(self._nodes) == 1:
            raise PlacementError(f"cannot remove {node!r}, the ring's only node: a ring needs at least one node")
        weights = {n: w for n, w in self._weights.items() if n != node}
        return self._rebuilt(tuple(n for n in self._nodes if n != node), weights)

    def _rebuilt(self, nodes: tuple[str, ...], weights: dict[str, float]) -> HashRing:
        ring = object.__new__(HashRing)
        ring._ketama = self._ketama
        ring._vnodes = self._vnodes
        ring._nodes = nodes
        ring._weights = {n: ring._check_weight(n, weights[n]) for n in nodes}
        ring._counts = ring._point_counts()
        ring._points = list(self._points)
        ring._lookup = self._lookup[:-1]
        ring._claims = {p: list(c) for p, c in self._claims.items()}
        removals: list[tuple[str, Iterable[int]]] = []
        additions: list[tuple[str, Iterable[int]]] = []
        for n in sorted(set(self._nodes) | set(nodes)):
            old, new = self._counts.get(n, 0), ring._counts.get(n, 0)
            if new < old:
                removals.append((n, ring._node_points(n, new, old)))
            elif new > old:
                additions.append((n, ring._node_points(n, old, new)))
        for n, points in removals:
            for p in points:
                ring._unclaim(p, n)
        for n, points in additions:
            for p in points:
                ring._claim(p, n)
        ring._lookup.append(ring._lookup[0])
        return ring

    def _claim(self, point: int, node: str) -> None:
        claimants = self._claims.get(point)
        if claimants is None:
            i = bisect_left(self._points, point)
            self._points.insert(i, point)
            self._lookup.insert(i, node)
            self._claims[point] = [node]
        else:
            claimants.append(node)
            self._lookup[bisect_left(self._points, point)] = self._owner(claimants)

    def _unclaim(self, point: int, node: str) -> None:
        claimants = self._claims[point]
        claimants.remove(node)
        i = bisect_left(self._points, point)
        if claimants:
            self._lookup[i] = self._owner(claimants)
        else:
            del self._claims[point]
            del self._points[i]
            del self._lookup[i]

    def __repr__(self) -> str:
        extra = f", weights={self._weights!r}" if any(w != 1 for w in self._weights.values()) else ""
        return f"HashRing({list(self._nodes)!r}, vnodes={self._vnodes}{extra}, ketama={self._ketama})"


__all__ = ["KETAMA_POINTS_PER_DIGEST", "HashRing", "ketama_hash"]
