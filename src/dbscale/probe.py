"""One-shot health of a configured topology, for ``dbscale status``.

PostgreSQL nodes are reported as the read/write router sees them after a health round of its own
monitor (:mod:`dbscale.routing`): discovered role, reachability, replay lag in bytes and seconds,
replay pause, bans, and whether it would send writes or reads there. The router does not check
PgBouncer endpoints or Redis, so those get a query / PING of their own.

Two engines have views of their own, shown beside the router's: Patroni (``GET /cluster`` of a
group's ``patroni`` REST URLs: leader, sync standby, timeline, lag) and a Redis Cluster
(``CLUSTER NODES``: masters, replicas, slots, failed nodes).
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from typing import Any

import psycopg
import redis
from sqlalchemy.engine import make_url

from dbscale.cluster import Cluster
from dbscale.config import TopologyConfig, libpq_conninfo, mask_url, node_urls
from dbscale.engines import RedisClusterNode, patroni_cluster, probe_redis_cluster
from dbscale.topology import NodeRef, configured_nodes


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
    error: str | None = None
    replay_paused: bool | None = None
    router: str | None = None

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready dict (``dbscale status --json``)."""
        return asdict(self)


__all__ = ["NodeStatus", "RedisClusterNode", "probe_patroni", "probe_redis_cluster", "probe_topology"]


def _short_error(exc: BaseException | str) -> str:
    text = str(exc).strip()
    text = text.splitlines()[0] if text else type(exc).__name__
    # psycopg: 'connection failed: connection to server at "127.0.0.1", port 1 failed: Connection refused'
    return mask_url(text.rsplit("failed: ", 1)[-1])


def _port_of(url: str) -> int | None:
    return make_url(url).port


def _router_verdict(row: dict[str, Any]) -> str:
    if row["health"] == "refused":
        return f"refused: {_short_error(row['ban_reason'])}"
    if row["ban_reason"]:
        return f"banned: {_short_error(row['ban_reason'])}"
    if row["role"] == "writer":
        return "writes"
    return "reads" if row["health"] == "ok" else str(row["health"])


def _from_router(node: NodeRef, row: dict[str, Any]) -> NodeStatus:
    reachable = row["health"] in ("ok", "lagging")
    role = "replica" if row["role"] == "replica" else "primary" if row["role"] in ("writer", "primary") else node.role
    status = NodeStatus(node.name, node.group, role, _port_of(node.url), healthy=reachable, router=_router_verdict(row))
    if reachable and role == "replica":
        status.lag_bytes, status.lag_seconds = row["lag_bytes"], row["lag_seconds"]
        status.replay_paused = row["replay_paused"]
    if not reachable:
        status.error = _short_error(row["ban_reason"] or row["health"])
    return status


def probe_pgbouncer(node: NodeRef, timeout: float) -> NodeStatus:
    """Run a query through a PgBouncer endpoint (no prepared statements: transaction pooling)."""
    status = NodeStatus(node.name, node.group, node.role, _port_of(node.url), healthy=False)
    try:
        with psycopg.connect(
            libpq_conninfo(node.url), connect_timeout=max(1, round(timeout)), prepare_threshold=None, autocommit=True
        ) as conn:
            status.healthy = conn.execute("SELECT 1").fetchone() == (1,)
    except psycopg.Error as exc:
        status.error = _short_error(exc)
    return status


def probe_redis(url: str, timeout: float = 2.0) -> NodeStatus:
    """PING a Redis server (of a ``redis+cluster://`` URL: its first seed; the cluster view is probe_redis_cluster's)."""
    client = redis.Redis.from_url(node_urls(url)[0], socket_connect_timeout=timeout, socket_timeout=timeout)
    port = client.connection_pool.connection_kwargs.get("port")
    status = NodeStatus("redis", "-", "cache", int(port) if port else None, healthy=False)
    try:
        status.healthy = bool(client.ping())
    except redis.RedisError as exc:
        status.error = _short_error(exc)
    finally:
        client.close()
    return status


def _quick(config: TopologyConfig, timeout: float) -> TopologyConfig:
    """``config`` with every pool's connect timeout set to ``timeout`` (a probe must not hang on a dead node)."""
    return config.model_copy(
        update={
            "groups": {
                name: group.model_copy(update={"pool": group.pool.model_copy(update={"connect_timeout": timeout})})
                for name, group in config.groups.items()
            }
        }
    )


def probe_shards(config: TopologyConfig, *, timeout: float = 2.0) -> list[dict[str, Any]]:
    """Per shard group of ``[sharding]``: estimated rows and skew (rows / mean); ``rows`` None if it is down."""
    if config.sharding is None:
        return []
    with Cluster(_quick(config, timeout)) as cluster:
        return cluster.shard_status()


def probe_topology(config: TopologyConfig, *, timeout: float = 2.0) -> list[NodeStatus]:
    """Every node of ``config`` (and its Redis), checked in parallel; never raises for a dead node."""
    nodes = configured_nodes(config)
    quick = _quick(config, timeout)
    bouncers = [node for node in nodes if node.role == "pgbouncer"]
    with ThreadPoolExecutor(max_workers=len(bouncers) + 1) as pool:
        bouncer_checks = {node.name: pool.submit(probe_pgbouncer, node, timeout) for node in bouncers}
        redis_check = pool.submit(probe_redis, str(config.cache.redis_url), timeout) if config.cache.redis_url else None
        with Cluster(quick) as cluster:
            rows = {row["node"]: row for row in cluster.routing_status()}
    statuses = [
        bouncer_checks[node.name].result() if node.role == "pgbouncer" else _from_router(node, rows[node.name])
        for node in nodes
    ]
    if redis_check is not None:
        statuses.append(redis_check.result())
    return statuses


def probe_patroni(config: TopologyConfig, timeout: float = 2.0) -> dict[str, dict[str, Any]]:
    """Patroni's view of every group that lists ``patroni`` REST URLs (empty when none does)."""
    return {name: patroni_cluster(group.patroni, timeout) for name, group in config.groups.items() if group.patroni}
