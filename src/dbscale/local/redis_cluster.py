"""A local Redis Cluster (``dbscale up --redis-cluster N [--redis-cluster-replicas R]``).

Each node is Debian's ``redis-server`` with ``cluster-enabled yes``, its own directory (for its
``nodes.conf``), a client port and a cluster bus port (``cluster-port``: not the default
port + 10000, which may be taken). On first start ``redis-cli --cluster create`` assigns the 16384
slots to the first N nodes and makes the others their replicas. ``nodes.conf`` survives restarts,
so a killed node that is started again rejoins (a killed master whose replica took over comes back
as a replica). ``cluster-node-timeout`` is short (2 s) so a replica takes over a dead master in a
few seconds. Nothing is persisted: like the single Redis, it is a cache.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import redis

from dbscale.engines import RedisClusterNode, probe_redis_cluster
from dbscale.errors import LocalTopologyError
from dbscale.local import redis_server
from dbscale.local.binaries import find_binary
from dbscale.local.runtime import Runtime
from dbscale.local.service_user import run
from dbscale.local.state import HOST, NodeInfo, TopologyState

SLOTS = 16384
NODE_TIMEOUT_MS = 2000

pid = redis_server.pid
stop = redis_server.stop
kill = redis_server.kill


def start(node: NodeInfo, rt: Runtime, timeout: float = 30.0) -> None:
    """Start one cluster node (no-op if running) and return once it answers PING."""
    assert node.api_port is not None
    # repl-diskless-sync-delay 0: Redis 7 waits 5 s for more replicas before a full sync by default, and a
    # replica that never synced refuses to take over ("disconnected from master for longer than allowed").
    extra = ["--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf", "--cluster-port", str(node.api_port),
             "--cluster-node-timeout", str(NODE_TIMEOUT_MS), "--repl-diskless-sync-delay", "0"]  # fmt: skip
    redis_server.start(node, rt, timeout, extra_args=extra)


def urls(nodes: Sequence[NodeInfo]) -> list[str]:
    """The ``redis://`` URL of every node (seeds for a cluster client or :func:`probe_redis_cluster`)."""
    return [f"redis://{HOST}:{n.port}/0" for n in nodes]


def cache_url(nodes: Sequence[NodeInfo]) -> str:
    """The ``redis+cluster://`` URL naming every node as a seed: the cache's ``redis_url`` for this cluster."""
    return "redis+cluster://" + ",".join(f"{HOST}:{n.port}" for n in nodes)


def cluster_nodes(state: TopologyState) -> list[NodeInfo]:
    """The Redis Cluster nodes of a topology (empty without ``--redis-cluster``)."""
    return [n for n in state.nodes if n.kind == "redis-cluster"]


def covered_slots(view: Sequence[RedisClusterNode]) -> int:
    """How many of the 16384 slots live, connected masters serve."""
    return sum(n.slots for n in view if n.role == "master" and n.connected)


def _formed(view: Sequence[RedisClusterNode], size: int, replicas: int) -> bool:
    """All nodes known, every slot served, and every replica attached (``redis-cli --cluster create``
    assigns the slots first and attaches the replicas after, so a node seen early is still a master)."""
    attached = sum(1 for n in view if n.role == "replica" and n.master is not None and n.connected)
    return len(view) >= size and covered_slots(view) == SLOTS and attached == replicas


def _synced(nodes: Sequence[NodeInfo], replicas: int) -> bool:
    """Has every replica finished its sync with its master (``ROLE`` says ``connected``)? Only then can it take over."""
    done = 0
    for url in urls(nodes):
        client: Any = redis.Redis.from_url(url, socket_timeout=2)
        try:
            role = client.execute_command("ROLE")
        except redis.RedisError:
            return False
        finally:
            client.close()
        done += role[0] in (b"slave", "slave") and role[3] in (b"connected", "connected")
    return done == replicas


def converge(nodes: Sequence[NodeInfo], replicas: int, rt: Runtime, timeout: float = 60.0) -> None:
    """Start every node; create the cluster if it was never created; wait until every slot is served."""
    for node in nodes:
        start(node, rt, timeout)
    seeds = urls(nodes)
    known = max(len(probe_redis_cluster([url])) for url in seeds)
    if known == 1:  # every node knows only itself: a new cluster
        run(
            [find_binary("redis-cli"), "--cluster", "create", *(f"{HOST}:{n.port}" for n in nodes),
             "--cluster-replicas", str(replicas), "--cluster-yes"],
            what="redis-cli --cluster create", timeout=timeout,
        )  # fmt: skip
    wait_formed(nodes, len(nodes) - len(nodes) // (1 + replicas), timeout)


def wait_formed(nodes: Sequence[NodeInfo], replicas: int, timeout: float) -> list[RedisClusterNode]:
    """Wait until every node sees all nodes, all 16384 slots served and ``replicas`` replicas attached and synced."""
    deadline = time.monotonic() + timeout
    view: list[RedisClusterNode] = []
    while True:
        views = []
        for url in urls(nodes):
            try:
                views.append(probe_redis_cluster([url]))
            except redis.RedisError:  # a node still loading: look again
                views.append([])
        view = views[0]
        if all(_formed(v, len(nodes), replicas) for v in views) and _synced(nodes, replicas):
            return view
        if time.monotonic() >= deadline:
            raise LocalTopologyError(
                f"the Redis Cluster did not serve all {SLOTS} slots on every node within {timeout:.0f}s "
                f"(first node sees {covered_slots(view)} slots, {len(view)} nodes, expected {replicas} replicas); "
                f"see {nodes[0].log_path}"
            )
        time.sleep(0.1)
