"""Placement strategies: which node (shard group) a shard key lives on — pure, no I/O.

Theory of operation
-------------------
Every strategy is an immutable value with ``nodes`` and ``node_for(key) -> str``. Hash-based
strategies never use Python's ``hash()`` (salted per process): a key is first turned into bytes by
one canonical encoding, :func:`encode_key`, and those bytes are hashed with MD5, so every process on
every machine places a key on the same node.

Canonical key encoding (the contract other clients must follow to agree with dbscale):

* ``str`` — its UTF-8 bytes;
* ``int`` — its decimal text in ASCII (``42`` → ``b"42"``; ``bool`` is refused);
* ``uuid.UUID`` — its canonical 36-character lower-case text (``str(uuid)``) in ASCII;
* ``bytes`` (also ``bytearray`` / ``memoryview``) — as is.

So a key and its text form place identically (``42`` and ``"42"``; a UUID and its string), as in
memcached-style clients, which hash ``str(key)``. Anything else raises
:class:`~dbscale.errors.UnsupportedKeyError`.

Strategies: :class:`HashMod` (``md5 mod N``, the textbook's, kept for compatibility: adding a node
moves about ``N/(N+1)`` of all keys), :class:`JumpHash` (Lamping & Veach 2014: exact balance,
moves ``1/(N+1)`` when a node is appended), :class:`~dbscale.sharding.ring.HashRing` (consistent
hashing with virtual nodes, weights, libketama compatibility) and :class:`~dbscale.sharding.ranges.Range`.
:func:`moved` tells which keys of a sample change node between two placements (resharding plans).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterable, Sequence
from hashlib import md5
from typing import NamedTuple
from uuid import UUID

from dbscale.errors import PlacementError, UnsupportedKeyError

#: A shard key: what :func:`encode_key` accepts.
Key = int | str | bytes | UUID

_MASK64 = (1 << 64) - 1


def encode_key(key: Key) -> bytes:
    """The canonical bytes of a shard key (see the module docstring); hash these, never ``hash(key)``."""
    kind = type(key)
    if kind is str:
        return key.encode("utf-8")  # type: ignore[union-attr]
    if kind is bytes:
        return key  # type: ignore[return-value]
    if kind is int:
        return str(key).encode("ascii")
    if isinstance(key, UUID):
        return str(key).encode("ascii")
    if isinstance(key, bytearray | memoryview):
        return bytes(key)
    if isinstance(key, bool):
        raise UnsupportedKeyError("shard key True/False is a bool: use an int, str, bytes or uuid.UUID key")
    if isinstance(key, str):
        return str.encode(key, "utf-8")
    if isinstance(key, bytes):
        return bytes(key)
    if isinstance(key, int):
        return int.__repr__(key).encode("ascii")
    raise UnsupportedKeyError(
        f"shard key {key!r} has type {type(key).__name__}: use an int, str, bytes or uuid.UUID key "
        "(convert other values explicitly, e.g. str(date))"
    )


def hash64(key: Key) -> int:
    """A process-independent 64-bit hash of a key: the first 8 bytes of ``md5(encode_key(key))``, big-endian."""
    return int.from_bytes(md5(encode_key(key)).digest()[:8], "big")


def validate_nodes(nodes: Iterable[str], what: str = "nodes") -> tuple[str, ...]:
    """``nodes`` as a tuple, or :class:`PlacementError` if empty, not strings, blank or duplicated."""
    if isinstance(nodes, str):
        raise PlacementError(f"{what} must be a list of node names, not the string {nodes!r}: write [{nodes!r}]")
    result = tuple(nodes)
    if not result:
        raise PlacementError(f"{what} is empty: name at least one node (shard group)")
    seen: set[str] = set()
    for node in result:
        if not isinstance(node, str) or not node:
            raise PlacementError(f"{what}: node name {node!r} must be a non-empty string")
        if node in seen:
            raise PlacementError(f"{what}: duplicate node {node!r}; every node name must appear once")
        seen.add(node)
    return result


class Move(NamedTuple):
    """A key whose node differs between two placements."""

    key: Key
    source: str
    target: str


class Placement(ABC):
    """A shard map: a pure function from shard key to node name, over the node tuple ``_nodes``."""

    __slots__ = ("_nodes",)

    _nodes: tuple[str, ...]

    @property
    def nodes(self) -> tuple[str, ...]:
        """Every node that can receive keys, in configuration order."""
        return self._nodes

    @abstractmethod
    def node_for(self, key: Key) -> str:
        """The node that holds ``key``."""

    def moved(self, other: Placement, keys: Iterable[Key]) -> list[Move]:
        """The keys of ``keys`` that live on a different node under ``other`` (see :func:`moved`)."""
        return moved(self, other, keys)


def moved(before: Placement, after: Placement, keys: Iterable[Key]) -> list[Move]:
    """Which of ``keys`` change node going from ``before`` to ``after``, with their source and target."""
    result: list[Move] = []
    for key in keys:
        source = before.node_for(key)
        target = after.node_for(key)
        if source != target:
            result.append(Move(key, source, target))
    return result


class HashMod(Placement):
    """``md5(key) mod N`` — the textbook router, for compatibility with data already placed that way.

    The node index is the whole 128-bit MD5 digest of the canonical key bytes, read big-endian
    (``int(md5(key).hexdigest(), 16) % len(nodes)``). Adding an N+1-th node moves about N/(N+1) of
    all keys; prefer :class:`JumpHash` or :class:`~dbscale.sharding.ring.HashRing` for new data.
    """

    __slots__ = ()

    def __init__(self, nodes: Sequence[str]) -> None:
        self._nodes = validate_nodes(nodes)

    def node_for(self, key: Key) -> str:
        data = key.encode("utf-8") if type(key) is str else encode_key(key)
        return self._nodes[int.from_bytes(md5(data).digest(), "big") % len(self._nodes)]

    def __repr__(self) -> str:
        return f"HashMod({list(self._nodes)!r})"


def jump_bucket(key: int, buckets: int) -> int:
    """Jump consistent hash (Lamping & Veach 2014): the bucket in ``[0, buckets)`` of a 64-bit ``key``."""
    if buckets <= 0:
        raise PlacementError(f"jump hash needs at least one bucket, got {buckets}")
    key &= _MASK64
    b, j = -1, 0
    while j < buckets:
        b = j
        key = (key * 2862933555777941757 + 1) & _MASK64
        j = int((b + 1) * (2147483648.0 / float((key >> 33) + 1)))
    return b


class JumpHash(Placement):
    """Jump consistent hash over ``nodes``: node ``i`` is bucket ``i``, the key is :func:`hash64` of the key.

    Keys are spread essentially exactly evenly and appending a node moves exactly the keys the new
    node takes (1/(N+1) of them). Buckets are numbered, so nodes can only be appended
    (:meth:`with_node`); removing or reordering a node other than the last moves far more keys.
    """

    __slots__ = ()

    def __init__(self, nodes: Sequence[str]) -> None:
        self._nodes = validate_nodes(nodes)

    def node_for(self, key: Key) -> str:
        return self._nodes[jump_bucket(hash64(key), len(self._nodes))]

    def with_node(self, node: str) -> JumpHash:
        """A new placement with ``node`` appended as the last bucket."""
        return JumpHash((*self._nodes, node))

    def __repr__(self) -> str:
        return f"JumpHash({list(self._nodes)!r})"


__all__ = [
    "HashMod",
    "JumpHash",
    "Key",
    "Move",
    "Placement",
    "encode_key",
    "hash64",
    "jump_bucket",
    "moved",
    "validate_nodes",
]
