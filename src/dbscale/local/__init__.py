"""A real local topology for development, demos and tests.

``LocalTopology(state_dir).up(replicas=2, shards=0, pgbouncer=False)`` starts a PostgreSQL
primary with streaming replicas, optional shard primaries, Redis and optional PgBouncers on free
loopback ports, and writes ``dbscale.toml`` describing them; ``down()`` stops them all.
"""

from __future__ import annotations

from dbscale.local.binaries import Binaries, find_binaries
from dbscale.local.state import NodeInfo, Shape
from dbscale.local.topology import DEFAULT_STATE_DIR, LocalTopology

__all__ = ["DEFAULT_STATE_DIR", "Binaries", "LocalTopology", "NodeInfo", "Shape", "find_binaries"]
