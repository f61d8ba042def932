"""L2 on Redis Cluster: the single-Redis client per master, routed by hash slot (docs/redis-cluster.md).

``redis_url = "redis+cluster://h1:7000,h2:7000"`` makes :func:`make_l2` return the cluster client
below (the asyncio source is ``l2_cluster_async.py``; ``l2_cluster.py`` is generated from it by
``scripts/unasync.py``). redis-py's ``RedisCluster`` keeps the slot map: which
master serves a key's slot, and how many replicas it has. The commands themselves go through one
single-Redis client (:mod:`dbscale.cache.l2_async`) per master, so a hit keeps the single-Redis fast path
(one pre-packed GET) and every script runs on one node.

Theory of operation (the proofs are in docs/redis-cluster.md §2-§3):

* The keys of cache key ``k`` share the hash tag ``{k}``: GET, the lease, fill, release, set and
  invalidate scripts each touch one slot. Tag sets (``ns:t:{T}``) and the pattern marker live in
  other slots, so a granted lease is followed by :data:`~dbscale.cache.leases.TAG_JOIN_SCRIPT` on
  each tag's slot *before the loader runs*; a write-through joins its tags before it sets.
* A tag invalidation runs :data:`~dbscale.cache.leases.TAG_INVALIDATE_SCRIPT` (marker, then SPOP a
  batch) on the tag's slot and invalidates the members, grouped by master, wherever they live.
* An invalidation counts as applied only when ``WAIT 1`` on the master that ran it confirms its
  replica has it (a master with no replica needs none): otherwise the tier queues it for retry, as
  when Redis is down, and the retry lands on whichever master serves the slot after a failover.
* Any failure marks the slot map stale; the next call reloads it (redis-py's ``NodesManager``).
* Cross-process L1 invalidation is classic ``PUBLISH``, which a cluster broadcasts to every node;
  the listener subscribes on any live seed (:mod:`dbscale.cache.invalidation`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from typing import Any, cast
from urllib.parse import unquote, urlsplit

import redis.asyncio as aredis

from dbscale._compat import ALock
from dbscale.cache.keys import RedisKeys
from dbscale.cache.l2_async import AsyncRedisL2
from dbscale.cache.l2_base import BATCH, translate
from dbscale.cache.leases import (
    TAG_INVALIDATE_SCRIPT,
    TAG_JOIN_SCRIPT,
    LeaseReply,
    LeaseStatus,
    lease_request,
    parse_lease_reply,
)
from dbscale.config import cluster_seeds, is_cluster_url, mask_url, node_url
from dbscale.errors import CacheUnavailable

__all__ = ["AsyncClusterL2", "make_l2"]


def make_l2(url: str, keys: RedisKeys, *, timeout: float, admin_timeout: float) -> AsyncRedisL2:
    """The L2 client for ``url``: a Redis Cluster client for ``redis+cluster://``, else the single-Redis one."""
    kind = AsyncClusterL2 if is_cluster_url(url) else AsyncRedisL2
    return kind(url, keys, timeout=timeout, admin_timeout=admin_timeout)


class AsyncClusterL2(AsyncRedisL2):
    """The cache's Redis operations on a Redis Cluster (same contract as :class:`AsyncRedisL2`)."""

    def __init__(self, url: str, keys: RedisKeys, *, timeout: float, admin_timeout: float) -> None:
        # No super().__init__(): this client holds no connection of its own, only one client per master.
        self.url = url
        self.keys = keys
        self.timeout = timeout
        self._admin_timeout = admin_timeout
        self._idle = []
        self._seeds = cluster_seeds(url)
        self._map: Any = None  # a RedisCluster (Any: the blocking one is untyped)
        self._stale = False
        self._loading = ALock()
        self._nodes: dict[str, AsyncRedisL2] = {}
        self._scripts: dict[str, tuple[Any, Any]] = {}

    # -- routing ----------------------------------------------------------------------------------
    async def _slot_map(self) -> Any:
        """redis-py's view of the cluster, (re)loaded after a failure (by one caller; the others wait for it)."""
        found = self._map
        if found is not None and not self._stale:
            return found
        async with self._loading:
            found = self._map
            if found is not None and not self._stale:
                return found
            with translate(self.url, "CLUSTER SLOTS"):
                if found is None:
                    node_class: Any = aredis.cluster.ClusterNode
                    found = aredis.RedisCluster(
                        startup_nodes=[node_class(h, p) for h, p in self._seeds],
                        **_auth(self.url),
                        socket_timeout=self._admin_timeout,
                        socket_connect_timeout=self._admin_timeout,
                    )
                    self._map = found
                await found.nodes_manager.initialize()
            self._stale = False
        return found

    async def _route(self, redis_key: str) -> tuple[AsyncRedisL2, int]:
        """The client of the master serving ``redis_key``'s slot, and how many replicas it has (WAIT)."""
        cluster = await self._slot_map()
        nodes = cluster.nodes_manager.slots_cache.get(cluster.keyslot(redis_key))
        if not nodes:
            self._stale = True
            raise CacheUnavailable(
                f"redis {mask_url(self.url)}: no master serves the slot of {redis_key!r}; "
                "check the cluster (redis-cli --cluster check) — the cache serves from the database meanwhile"
            )
        return self._node(nodes[0].host, int(nodes[0].port)), min(1, len(nodes) - 1)

    def _node(self, host: str, port: int) -> AsyncRedisL2:
        name = f"{host}:{port}"
        found = self._nodes.get(name)
        if found is None:
            made = AsyncRedisL2(
                node_url(self.url, host, port), self.keys, timeout=self.timeout, admin_timeout=self._admin_timeout
            )
            scripts = (made.client.register_script(TAG_JOIN_SCRIPT), made.admin.register_script(TAG_INVALIDATE_SCRIPT))
            self._scripts.setdefault(made.url, scripts)
            found = self._nodes.setdefault(name, made)  # threads racing here all get the first one stored
        return found

    def _failed(self) -> None:
        self._stale = True  # a MOVED, a dead master, a failover: reload the slot map on the next call

    # -- reads and fills --------------------------------------------------------------------------
    async def get(self, key: str) -> bytes | None:
        """The raw entry of ``key`` (None if absent), read on the master of its slot."""
        node, _ = await self._route(self.keys.value(key))
        try:
            return await node.get(key)
        except CacheUnavailable:
            self._failed()
            raise

    async def lease(
        self,
        key: str,
        tags: Sequence[str],
        now_ms: int,
        token: str,
        lease_ms: int,
        tag_ttl: int,
        force: bool,
        markers: bool = False,
    ) -> LeaseReply:
        """The lease script on ``key``'s slot, then (unless HIT) the tags' joins and markers on theirs."""
        names, argv = lease_request(self.keys, key, (), now_ms, token, lease_ms, tag_ttl, force, markers)
        node, _ = await self._route(self.keys.value(key))
        try:
            with translate(node.url, "lease"):
                raw = await node._lease(names[:4], argv)  # v, l, s, m: the key's slot only
            reply = parse_lease_reply(raw)
            join = reply.status is LeaseStatus.GRANTED and bool(tags)
            if reply.status is LeaseStatus.HIT or not (join or markers):
                return reply
            foreign, found = await self._join(key, tags, tag_ttl, join, markers)
        except CacheUnavailable:
            self._failed()
            raise
        marker = ",".join(m for m in (reply.marker, *found) if m) or None
        return replace(reply, foreign=reply.foreign + foreign, marker=marker)

    async def _join(
        self, key: str, tags: Sequence[str], tag_ttl: int, join: bool, markers: bool
    ) -> tuple[int, list[str]]:
        """Join ``key`` to its tag sets (``join``) and read their markers and the pattern marker
        (``markers``), one pipeline per master involved; returns (foreign keys cleared, markers)."""
        foreign, found = 0, []
        for tag in tags:
            node, _ = await self._route(self.keys.tag(tag))
            script = self._scripts[node.url][0]
            with translate(node.url, "tag join"):
                fenced, marker = await script(
                    [self.keys.tag(tag), self.keys.tag_marker(tag)],
                    [key, tag_ttl, "1" if join else "0", "1" if markers else "0"],
                    client=node.client,
                )
            foreign += int(fenced)
            if marker:
                found.append(_text(marker))
        if markers:
            node, _ = await self._route(self.keys.pattern_marker)
            with translate(node.url, "GET"):
                marker = await node.client.get(self.keys.pattern_marker)
            if marker:
                found.append(_text(marker))
        return foreign, found

    async def fill(self, key: str, token: str, entry: bytes, px: int) -> bool:
        """Store ``entry`` if ``token`` still holds the lease; False means the fill was dropped."""
        node, _ = await self._route(self.keys.value(key))
        try:
            return await node.fill(key, token, entry, px)
        except CacheUnavailable:
            self._failed()
            raise

    async def release(self, key: str, token: str) -> None:
        """Give the lease back if ``token`` still holds it."""
        node, _ = await self._route(self.keys.value(key))
        try:
            await node.release(key, token)
        except CacheUnavailable:
            self._failed()
            raise

    async def set(self, key: str, entry: bytes, px: int, tags: Sequence[str], tag_ttl: int) -> None:
        """Join the tags first (a tag invalidation in between finds the key), then write ``entry``."""
        try:
            await self._join(key, tags, tag_ttl, True, False)
            node, _ = await self._route(self.keys.value(key))
            await node.set(key, entry, px, (), tag_ttl)
        except CacheUnavailable:
            self._failed()
            raise

    # -- invalidation -----------------------------------------------------------------------------
    async def invalidate(
        self, keys: Sequence[str], stale_px: int, marker: str = "", marker_px: int = 0, replicas: int = 0
    ) -> int:
        """Invalidate keys on the masters of their slots (grouped), each batch confirmed by ``WAIT``."""
        groups: dict[str, tuple[AsyncRedisL2, int, list[str]]] = {}
        try:
            for key in keys:
                node, wait = await self._route(self.keys.value(key))
                groups.setdefault(node.url, (node, wait, []))[2].append(key)
            found = 0
            for node, wait, batch in groups.values():
                found += await node.invalidate(batch, stale_px, marker, marker_px, max(wait, replicas))
        except CacheUnavailable:
            self._failed()
            raise
        return found

    async def invalidate_tags(
        self, tags: Sequence[str], stale_px: int, marker: str = "", marker_px: int = 0
    ) -> list[str]:
        """Per tag, on its slot: record the marker and SPOP members in batches; invalidate them where they live."""
        out: list[str] = []
        try:
            for tag in tags:
                names = [self.keys.tag(tag), self.keys.tag_marker(tag)]
                while True:
                    node, _ = await self._route(names[0])
                    with translate(node.url, "tag invalidate"):
                        members = await self._scripts[node.url][1](names, [marker, marker_px, BATCH], client=node.admin)
                    if not members:
                        break
                    batch = [_text(m) for m in members]
                    await self.invalidate(batch, stale_px, marker, marker_px)
                    out.extend(batch)
        except CacheUnavailable:
            self._failed()
            raise
        return out

    async def invalidate_pattern(self, pattern: str, stale_px: int, marker: str = "", marker_px: int = 0) -> list[str]:
        """Record the pattern marker, then SCAN every master (never KEYS) and invalidate what matches."""
        out: list[str] = []
        seen: set[str] = set()
        match = self.keys.scan_pattern(pattern)
        try:
            if marker:
                node, _ = await self._route(self.keys.pattern_marker)
                with translate(node.url, "mark"):
                    await node._mark([self.keys.pattern_marker], [marker, marker_px])
            cluster = await self._slot_map()
            for master in cluster.get_primaries():
                node = self._node(master.host, int(master.port))
                cursor = 0
                while True:
                    with translate(node.url, "SCAN"):
                        reply = await node.admin.scan(cursor, match=match, count=BATCH)
                    cursor, found = cast(tuple[int, list[bytes]], reply)
                    batch = [k for k in {self.keys.user_key(r) for r in found} if k not in seen]
                    if batch:
                        await self.invalidate(batch, stale_px, marker, marker_px)
                        seen.update(batch)
                        out.extend(batch)
                    if cursor == 0:
                        break
        except CacheUnavailable:
            self._failed()
            raise
        return out

    async def publish(self, channel: str, message: bytes) -> None:
        """Broadcast an invalidation message (a cluster forwards PUBLISH to every node)."""
        node, _ = await self._route(channel)
        try:
            await node.publish(channel, message)
        except CacheUnavailable:
            self._failed()
            raise

    async def close(self) -> None:
        """Close every master's client and the slot map's connections."""
        nodes, self._nodes = list(self._nodes.values()), {}
        for node in nodes:
            await node.close()
        if self._map is not None:
            await self._map.aclose()
            self._map = None


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _auth(url: str) -> dict[str, Any]:
    """The credentials and TLS flag of a cluster URL, as RedisCluster keyword arguments."""
    parts = urlsplit(node_url(url, "h", 1))
    options: dict[str, Any] = {"ssl": parts.scheme == "rediss"}
    if parts.username:
        options["username"] = unquote(parts.username)
    if parts.password:
        options["password"] = unquote(parts.password)
    return options
