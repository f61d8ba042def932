"""The shard map: which shard group owns a key, per entity, and which group a global ID came from — pure.

A :class:`ShardMap` is built once per cluster from the ``[sharding]`` settings (plain values, so
this module needs no config object): one :class:`~dbscale.sharding.placement.Placement` for the
default scheme and one per named entity (``orders`` keyed by ``user_id`` on the same groups and
strategy as ``users`` places a user's orders with the user). The logical shard number embedded in
global IDs is a group's position in the default scheme's group list.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from dbscale.errors import PlacementError, ShardingError
from dbscale.sharding.ids import shard_of_id
from dbscale.sharding.placement import HashMod, JumpHash, Key, Placement
from dbscale.sharding.ranges import Range
from dbscale.sharding.ring import HashRing

if TYPE_CHECKING:
    from dbscale.config import ShardingConfig, ShardSchemeConfig


@dataclass(frozen=True)
class Scheme:
    """A placement strategy over shard groups, as plain values (``[sharding]`` or one entity's table)."""

    strategy: str
    groups: Sequence[str]
    vnodes: int = 160
    weights: Mapping[str, float] | None = None
    ranges: Sequence[Sequence[Any]] | None = None
    default: str | None = None

    def placement(self) -> Placement:
        """The placement object for this scheme."""
        groups = list(self.groups)
        if self.strategy == "ring":
            return HashRing(groups, vnodes=self.vnodes, weights=self.weights)
        if self.strategy == "ketama":
            return HashRing(groups, weights=self.weights, ketama=True)
        if self.strategy == "jump":
            return JumpHash(groups)
        if self.strategy == "hash_mod":
            return HashMod(groups)
        if self.strategy == "range":
            return Range([tuple(r) for r in self.ranges or ()], default=self.default)
        raise PlacementError(f"strategy {self.strategy!r}: use ring, ketama, jump, hash_mod or range")


@dataclass
class ShardMap:
    """Key -> shard group for the default scheme and each named entity; global ID -> group."""

    default: Scheme
    entities: Mapping[str, Scheme] = field(default_factory=dict)
    keys: Mapping[str, str] = field(default_factory=dict)  # entity -> its shard-key column
    _placements: dict[str | None, Placement] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self._placements = {None: self.default.placement()}
        for name, scheme in self.entities.items():
            self._placements[name] = scheme.placement()

    @property
    def groups(self) -> tuple[str, ...]:
        """Every shard group, in logical-shard order (the order of the default scheme's groups)."""
        return tuple(self.default.groups)

    def placement(self, entity: str | None = None) -> Placement:
        """The placement of ``entity`` (None: the default scheme)."""
        try:
            return self._placements[entity]
        except KeyError:
            known = ", ".join(sorted(n for n in self._placements if n is not None)) or "none"
            raise ShardingError(
                f"no sharded entity {entity!r} (known: {known}); add [sharding.entities.{entity}] key = '<column>' "
                "to the config, or call shard(key) for the default scheme"
            ) from None

    def group_for(self, entity: str | None, key: Key) -> str:
        """The shard group owning ``key`` under ``entity``'s scheme (None: the default scheme)."""
        return self.placement(entity).node_for(key)

    def id_shard(self, group: str) -> int:
        """The logical shard number of ``group`` in global IDs (its position in the default groups)."""
        try:
            return self.groups.index(group)
        except ValueError:
            raise ShardingError(f"{group!r} is not a shard group (shard groups: {', '.join(self.groups)})") from None

    def group_of_id(self, global_id: int) -> str:
        """The shard group whose ID function made ``global_id``."""
        shard = shard_of_id(global_id)
        if shard >= len(self.groups):
            raise ShardingError(
                f"global id {global_id} names logical shard {shard}, but only {len(self.groups)} shard groups "
                "are configured; was it made under another [sharding] groups list?"
            )
        return self.groups[shard]


def _scheme(config: ShardSchemeConfig) -> Scheme:
    return Scheme(config.strategy or "ring", list(config.groups or ()), config.vnodes, config.weights,
                  config.ranges, config.default)  # fmt: skip


def shard_map_of(sharding: ShardingConfig) -> ShardMap:
    """The :class:`ShardMap` of a validated ``[sharding]`` section (what ``cluster.shard_map`` is built from)."""
    entities = {name: _scheme(sharding.scheme(name)) for name in sharding.entities}
    return ShardMap(_scheme(sharding), entities, {name: e.key for name, e in sharding.entities.items()})


__all__ = ["Scheme", "ShardMap", "shard_map_of"]
