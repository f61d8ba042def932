"""Horizontal sharding, pure core: placement strategies, global IDs and the scatter-gather plan.

Nothing here performs I/O: :mod:`.placement`, :mod:`.ring` and :mod:`.ranges` map a shard key to a
node name; :mod:`.ids` makes and reads 64-bit global IDs (and renders the equivalent PostgreSQL
function); :mod:`.scatter` merges per-shard result rows into what one table would return.
"""

from dbscale.errors import (
    FanoutError,
    FanoutPlanError,
    GlobalIdError,
    PlacementError,
    ShardingError,
    UnsupportedKeyError,
)
from dbscale.sharding.fanout import FanoutResult
from dbscale.sharding.ids import (
    DEFAULT_EPOCH_MS,
    IdGenerator,
    IdParts,
    make_id,
    next_id,
    next_id_function_sql,
    parse_id,
    shard_of_id,
    time_of_id,
)
from dbscale.sharding.placement import (
    HashMod,
    JumpHash,
    Key,
    Move,
    Placement,
    encode_key,
    hash64,
    jump_bucket,
    moved,
)
from dbscale.sharding.ranges import Range
from dbscale.sharding.ring import HashRing, ketama_hash
from dbscale.sharding.scatter import Aggregate, FanoutPlan, OrderKey
from dbscale.sharding.shardmap import Scheme, ShardMap

__all__ = [
    "DEFAULT_EPOCH_MS",
    "Aggregate",
    "FanoutError",
    "FanoutPlan",
    "FanoutPlanError",
    "FanoutResult",
    "GlobalIdError",
    "HashMod",
    "HashRing",
    "IdGenerator",
    "IdParts",
    "JumpHash",
    "Key",
    "Move",
    "OrderKey",
    "Placement",
    "PlacementError",
    "Range",
    "Scheme",
    "ShardMap",
    "ShardingError",
    "UnsupportedKeyError",
    "encode_key",
    "hash64",
    "jump_bucket",
    "ketama_hash",
    "make_id",
    "moved",
    "next_id",
    "next_id_function_sql",
    "parse_id",
    "shard_of_id",
    "time_of_id",
]
