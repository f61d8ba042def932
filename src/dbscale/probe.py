"""One-shot health probes of a configured topology, for ``dbscale status``.

Each PostgreSQL node is asked whether it is in recovery and where its WAL is; replicas get a replay
lag in bytes (against their group's primary) and in seconds. Seconds from
``now() - pg_last_xact_replay_timestamp()`` keep growing while the primary is idle, so a replica that
has replayed everything it received, and received everything the primary wrote, is 0 s behind.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from typing import Any

import psycopg
import redis

from dbscale.config import TopologyConfig, libpq_conninfo, mask_url
from dbscale.routing.lsn import parse_lsn
from dbscale.topology import NodeRef, configured_nodes

_REPLICA_SQL = """
SELECT pg_is_in_recovery(),
       pg_last_wal_receive_lsn()::text,
       pg_last_wal_replay_lsn()::text,
       EXTRACT(EPOCH FROM now() - pg_last_xact_replay_timestamp())::float8
"""


@dataclass
class NodeStatus:
    """What one probe saw. ``lag_*`` are None for primaries and unreachable nodes."""

    name: str
    group: str
    role: str
    port: int | None
    healthy: bool
    lag_bytes: int | None = None
    lag_seconds: float | None = None
    in_recovery: bool | None = None
    error: str | None = None
    replay_paused: bool | None = None
    router: str | None = None

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready dict (``dbscale status --json``)."""
        return asdict(self)


@dataclass
class _PgSample:
    in_recovery: bool
    current_lsn: str | None
    receive_lsn: str | None
    replay_lsn: str | None
    replay_age: float | None


def _sample_postgres(url: str, timeout: float, *, prepare: bool) -> _PgSample:
    kwargs: dict[str, Any] = {"connect_timeout": max(1, round(timeout)), "autocommit": True}
    if not prepare:
        kwargs["prepare_threshold"] = None
    with psycopg.connect(libpq_conninfo(url), **kwargs) as conn:
        row = conn.execute(_REPLICA_SQL).fetchone()
        assert row is not None
        in_recovery, receive, replay, age = row
        current = None if in_recovery else conn.execute("SELECT pg_current_wal_lsn()::text").fetchone()
        return _PgSample(bool(in_recovery), current[0] if current else None, receive, replay, age)


def _short_error(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    # psycopg: 'connection failed: connection to server at "127.0.0.1", port 1 failed: Connection refused'
    return mask_url(text.rsplit("failed: ", 1)[-1])


def probe_topology(config: TopologyConfig, *, timeout: float = 2.0) -> list[NodeStatus]:
    """Probe every node of ``config`` (and its Redis) in parallel; never raises for a dead node."""
    nodes = configured_nodes(config)

    def sample(node: NodeRef) -> _PgSample | BaseException:
        try:
            return _sample_postgres(node.url, timeout, prepare=node.role != "pgbouncer")
        except Exception as exc:
            return exc

    with ThreadPoolExecutor(max_workers=min(16, len(nodes) + 1)) as pool:
        samples = dict(zip([n.name for n in nodes], pool.map(sample, nodes), strict=True))
        redis_result = (
            pool.submit(probe_redis, str(config.cache.redis_url), timeout) if config.cache.redis_url else None
        )

    primary_lsn = {
        n.group: s.current_lsn
        for n in nodes
        if n.role == "primary" and isinstance(s := samples[n.name], _PgSample) and s.current_lsn
    }
    statuses = [_status(node, samples[node.name], primary_lsn.get(node.group)) for node in nodes]
    if redis_result is not None:
        statuses.append(redis_result.result())
    return statuses


def _port_of(url: str) -> int | None:
    from sqlalchemy.engine import make_url

    try:
        return make_url(url).port
    except Exception:
        return None


def _status(node: NodeRef, sample: _PgSample | BaseException, primary_lsn: str | None) -> NodeStatus:
    status = NodeStatus(node.name, node.group, node.role, _port_of(node.url), healthy=False)
    if isinstance(sample, BaseException):
        status.error = _short_error(sample)
        return status
    status.in_recovery = sample.in_recovery
    if node.role == "replica":
        if not sample.in_recovery:
            status.role = "primary"  # promoted: report what it is, not what the config says
            status.healthy = True
            return status
        status.healthy = sample.replay_lsn is not None
        if sample.replay_lsn is not None and primary_lsn is not None:
            status.lag_bytes = max(0, parse_lsn(primary_lsn) - parse_lsn(sample.replay_lsn))
        caught_up = sample.replay_lsn is not None and sample.replay_lsn == sample.receive_lsn and status.lag_bytes == 0
        status.lag_seconds = 0.0 if caught_up or sample.replay_age is None else max(0.0, sample.replay_age)
    else:
        status.healthy = node.role == "pgbouncer" or not sample.in_recovery
        if not status.healthy:
            status.error = "configured as primary but in recovery (a replica?)"
    return status


def probe_redis(url: str, timeout: float = 2.0) -> NodeStatus:
    """PING a Redis server."""
    client = redis.Redis.from_url(url, socket_connect_timeout=timeout, socket_timeout=timeout)
    port = client.connection_pool.connection_kwargs.get("port")
    status = NodeStatus("redis", "-", "cache", int(port) if port else None, healthy=False)
    try:
        status.healthy = bool(client.ping())
    except redis.RedisError as exc:
        status.error = _short_error(exc)
    finally:
        client.close()
    return status
