"""Group routing: replica choice, health and bans, lag, causal (read-your-writes) tokens, failover.

The decisions live in pure modules (:mod:`.core`, :mod:`.bans`, :mod:`.balance`, :mod:`.lsn`); the
sync (:mod:`.router`, :mod:`.monitor`) and asyncio (:mod:`.aio`) shells act on them. Applications
use these through :class:`dbscale.Cluster` / :class:`dbscale.AsyncCluster`.
"""

from dbscale.pgbouncer import PgBouncerFiles, render_pgbouncer_config
from dbscale.routing.aio import AsyncGroupRouter, AsyncReadConnection
from dbscale.routing.errors import InvalidCausalToken, PoolTimeout
from dbscale.routing.lsn import format_lsn, parse_lsn, parse_token
from dbscale.routing.router import GroupRouter, ReadConnection

__all__ = [
    "AsyncGroupRouter",
    "AsyncReadConnection",
    "GroupRouter",
    "InvalidCausalToken",
    "PgBouncerFiles",
    "PoolTimeout",
    "ReadConnection",
    "format_lsn",
    "parse_lsn",
    "parse_token",
    "render_pgbouncer_config",
]
