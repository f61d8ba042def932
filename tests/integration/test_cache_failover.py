"""Fail-open: Redis (or a Redis Cluster master) SIGKILLed mid-run — no error reaches a caller, latency stays
bounded, caching resumes; on a cluster, an invalidation the dead master took but its replica did not is not lost."""

from __future__ import annotations

import os
import random
import signal
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any, cast

import pytest
import redis
from redis.cluster import RedisCluster

from dbscale.cache import Cache
from dbscale.cache.keys import RedisKeys
from dbscale.config import CacheConfig, cluster_seeds, is_cluster_url, load_config
from dbscale.local import LocalTopology
from dbscale.local import redis_cluster as local_cluster
from dbscale.local.state import HOST
from dbscale.probe import probe_redis_cluster

pytestmark = pytest.mark.integration

LOADER_LATENCY = 0.02


class Outage:
    """SIGKILL of the Redis that holds a key: the single Redis, or the cluster master serving the key's slot
    (whose replica then takes over). ``restore()`` brings the killed server back (a killed master as a replica)."""

    def __init__(self, topology: LocalTopology, url: str) -> None:
        self.topology, self.url = topology, url
        self.cluster = is_cluster_url(url)

    def owner(self, redis_key: str) -> str:
        """The topology node name of the server holding ``redis_key``."""
        if not self.cluster:
            return "redis"
        client = RedisCluster(host=HOST, port=cluster_seeds(self.url)[0][1], socket_timeout=2)
        try:
            port = int(client.get_node_from_key(redis_key).port)
        finally:
            client.close()
        return next(n.name for n in local_cluster.cluster_nodes(self.topology.state()) if n.port == port)

    def kill(self, redis_key: str) -> str:
        name = self.owner(redis_key)
        self.topology.kill(name)
        return name

    def restore(self, name: str) -> None:
        if self.cluster:
            self.topology.up()  # the killed master rejoins as its heir's replica
        else:
            self.topology.start(name)


@pytest.fixture
def cluster_outage(redis_cluster_topology: LocalTopology, redis_cluster_url: str) -> Iterator[Outage]:
    """An :class:`Outage` on the session's 3-master Redis Cluster; every node back and synced after."""
    try:
        yield Outage(redis_cluster_topology, redis_cluster_url)
    finally:
        redis_cluster_topology.up()
        local_cluster.wait_formed(local_cluster.cluster_nodes(redis_cluster_topology.state()), 3, 60)


@pytest.fixture(params=["redis", "redis-cluster"])
def outage(request: pytest.FixtureRequest, topology_config_path: Path) -> Outage:
    """An :class:`Outage` on the session's single Redis, then on its Redis Cluster; restored after."""
    if request.param == "redis-cluster":
        return cast(Outage, request.getfixturevalue("cluster_outage"))
    topology = request.getfixturevalue("restore_topology")
    return Outage(topology, str(load_config(topology_config_path, environ={}).cache.redis_url))


def test_redis_sigkill_fail_open_and_resume(outage: Outage) -> None:
    url = outage.url
    ns = f"t{uuid.uuid4().hex[:12]}"
    cache = Cache(CacheConfig(redis_url=url, namespace=ns, breaker_cooldown=0.5))
    errors: list[BaseException] = []
    latencies: list[float] = []
    stop = threading.Event()

    @cache.cached(ttl=60, key="item:{i}", l1=False)
    def item(i: int) -> dict[str, int]:
        time.sleep(LOADER_LATENCY)
        return {"i": i}

    @cache.cached(ttl=60, key="l1item:{i}")
    def l1_item(i: int) -> dict[str, int]:
        time.sleep(LOADER_LATENCY)
        return {"i": i}

    def caller(fn: Any) -> None:
        while not stop.is_set():
            i = random.randrange(50)
            t0 = time.perf_counter()
            try:
                assert fn(i) == {"i": i}
            except BaseException as exc:
                errors.append(exc)
            latencies.append(time.perf_counter() - t0)

    threads = [threading.Thread(target=caller, args=(fn,)) for fn in (item, item, item, l1_item, l1_item)]
    for t in threads:
        t.start()
    try:
        time.sleep(1.0)
        hits_before = cache.metrics.value("cache_hits_total", tier="l2")
        assert hits_before > 0
        victim = outage.kill(RedisKeys(ns).value("item:1"))
        time.sleep(1.0)  # a cluster's failover takes longer (cluster-node-timeout 2 s, then the election)
        assert cache.metrics.value("cache_errors_total", op="get") > 0 or cache.metrics.value("cache_bypassed_total")
        # On a cluster, calls on the live masters succeed in between, so the cache's one breaker need not
        # open (no per-node breaker yet): each call on the dead master fails fast and is served by the loader.
        assert outage.cluster or cache.metrics.value("cache_breaker_trips_total") >= 1
        assert not cache.invalidate("item:1")  # queued for retry, not swallowed
        assert cache.metrics.value("cache_invalidation_retries_total") >= 1
        if not outage.cluster:  # a cluster resumes by itself: the dead master's replica takes over its slots
            outage.restore(victim)
        deadline = time.monotonic() + 20
        resumed = cache.metrics.value("cache_hits_total", tier="l2")
        while time.monotonic() < deadline:
            time.sleep(0.2)
            now = cache.metrics.value("cache_hits_total", tier="l2")
            if now > resumed + 20:
                break
        else:
            pytest.fail("caching did not resume after Redis came back")
        assert cache.metrics.value("cache_pending_invalidations") == 0
    finally:
        stop.set()
        for t in threads:
            t.join(10)
        cache.close()
    assert errors == []
    latencies.sort()
    p99 = latencies[int(len(latencies) * 0.99)]
    assert p99 < LOADER_LATENCY + 0.06, p99


def test_hung_redis_stops_l1_use_until_it_answers_again(topology_config_path: Path, restore_topology: Any) -> None:
    """SIGSTOPped Redis: no PONG, so the subscription counts as lost, L1 is dropped; it resumes after SIGCONT."""
    from dbscale.cache.invalidation import PING_INTERVAL, PONG_TIMEOUT

    topology = restore_topology
    url = load_config(topology_config_path, environ={}).cache.redis_url
    cache = Cache(CacheConfig(redis_url=url, namespace=f"t{uuid.uuid4().hex[:12]}", breaker_cooldown=0.5))
    loads: list[int] = []

    @cache.cached(ttl=60, key="v")
    def value() -> int:
        loads.append(1)
        return len(loads)

    listener = cache.core.start_listener()
    assert listener is not None and listener.wait_ready(10)
    assert value() == 1 and value() == 1
    assert cache.core.l1.lookup("v", time.time())[0]  # served from L1
    pid = topology.pid("redis")
    assert pid is not None
    os.kill(pid, signal.SIGSTOP)
    try:
        deadline = time.monotonic() + PING_INTERVAL + PONG_TIMEOUT + 2.0
        while listener.ready and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not listener.ready, "a hung Redis was not noticed"
        assert not cache.core.l1.lookup("v", time.time())[0]  # L1 dropped: it may have missed invalidations
        assert value() == 2  # fail-open: the loader answers while Redis hangs
    finally:
        os.kill(pid, signal.SIGCONT)
    assert listener.wait_ready(15)
    cache.close()


def test_cluster_master_failover_loses_no_invalidation(cluster_outage: Outage) -> None:
    """The worst case of docs/redis-cluster.md §3, made deterministic: the master takes an invalidation its
    replica never gets (the replica is SIGSTOPped), then dies; the replica takes over with the old value.

    ``WAIT 1`` does not confirm, so the invalidation is queued, retried on the heir once it serves the slot, and
    neither the heir's L2 nor another process's L1 serves the old value afterwards. Without the WAIT rule the
    invalidation would count as applied and the old value would live on in the heir until its TTL.
    """
    outage, redis_cluster_topology = cluster_outage, cluster_outage.topology
    ns = f"t{uuid.uuid4().hex[:12]}"
    truth = {"version": 1}
    writer = Cache(CacheConfig(redis_url=outage.url, namespace=ns, breaker_cooldown=0.3))
    reader = Cache(CacheConfig(redis_url=outage.url, namespace=ns, breaker_cooldown=0.3, l1_ttl=120))

    def loader() -> int:
        return truth["version"]

    read = reader.cached(ttl=300, key="doc")(loader)
    writer.cached(ttl=300, key="doc")(loader)
    value_key = RedisKeys(ns).value("doc")
    master_name = outage.owner(value_key)
    master = f"{HOST}:{redis_cluster_topology.node(master_name).port}"
    nodes = probe_redis_cluster(local_cluster.urls(local_cluster.cluster_nodes(redis_cluster_topology.state())))
    heir = next(n for n in nodes if n.master == master)
    heir_port = int(heir.address.rsplit(":", 1)[1])
    heir_name = next(n.name for n in local_cluster.cluster_nodes(redis_cluster_topology.state()) if n.port == heir_port)
    heir_pid = redis_cluster_topology.pid(heir_name)
    assert heir_pid is not None
    listener = reader.core.start_listener()
    assert listener is not None and listener.wait_ready(10)
    assert read() == 1 and read() == 1  # in the reader's L1 and in L2 (the master and, after WAIT, its replica)
    assert redis.Redis(host=HOST, port=int(master.rsplit(":", 1)[1])).execute_command("WAIT", 1, 5000) == 1
    os.kill(heir_pid, signal.SIGSTOP)
    try:
        truth["version"] = 2  # the "commit" ...
        assert not writer.invalidate("doc")  # ... taken by the master, not confirmed by its replica: queued
        assert redis.Redis(host=HOST, port=int(master.rsplit(":", 1)[1])).get(value_key) is None
        redis_cluster_topology.kill(master_name)
    finally:
        os.kill(heir_pid, signal.SIGCONT)
    heir_client = redis.Redis(host=HOST, port=heir_port, socket_timeout=2)
    deadline = time.monotonic() + 30
    while writer.metrics.value("cache_pending_invalidations") or heir_client.get(value_key) is not None:
        assert time.monotonic() < deadline, "the queued invalidation never reached the heir"
        time.sleep(0.1)
    assert heir_client.execute_command("ROLE")[0] == b"master"
    deadline = time.monotonic() + 10
    while not listener.ready:  # the reader's listener may have been on the dead master: it resubscribes elsewhere
        assert time.monotonic() < deadline
        time.sleep(0.05)
    for _ in range(20):  # the old value is served neither from the heir's L2 nor from the reader's L1
        assert read() == 2
        assert reader.get("doc", l1=False) in (None, 2)
        time.sleep(0.05)
    heir_client.close()
    writer.close()
    reader.close()
