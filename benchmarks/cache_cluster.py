"""Cache on Redis Cluster: dbscale's L2 hit beside redis-py's RedisCluster GET, and the cost of cluster mode.

    python benchmarks/cache_cluster.py     # starts a throwaway LocalTopology: one Redis + a 3-master cluster (1 replica each)

One run, cases interleaved per round (see benchmarks/cache.py), medians per call. Sections:

* L2 hit: what a user would write on a cluster (``RedisCluster.get`` + ``orjson.loads``) vs the
  decorated dbscale hit (``l1=False``) on the same cluster, and on the single Redis for reference.
* Invalidate + refill of a key with one tag: on a cluster the invalidation waits for the replica
  (``WAIT 1``) and the miss joins the tag set in its own slot (one more round trip); the single
  Redis is the baseline.
"""

from __future__ import annotations

import shutil
import sys
import tempfile
import uuid
from pathlib import Path
from typing import Any

import orjson
from cache import VALUE, check_hits, counters, interleaved, table
from redis.cluster import RedisCluster

from dbscale.cache import Cache
from dbscale.config import CacheConfig
from dbscale.local import LocalTopology
from dbscale.local import redis_cluster as local_cluster

RAW = "RedisCluster GET + orjson.loads (raw)"
HIT = "dbscale L2 hit on the cluster (l1=False), decorated"
SINGLE = "dbscale L2 hit on one Redis (l1=False), decorated"
REFILL_SINGLE = "invalidate + refill, one Redis"
REFILL_CLUSTER = "invalidate + refill, cluster (WAIT 1 + tag join)"


def caches(single_url: str, cluster_url: str) -> tuple[Cache, Cache]:
    ns = f"bench{uuid.uuid4().hex[:8]}"  # 0.5 s timeouts: a loaded 2-core box must measure hits, not fail-open
    return Cache(CacheConfig(redis_url=single_url, namespace=ns)), Cache(
        CacheConfig(redis_url=cluster_url, namespace=ns)
    )


def hit_rows(single: Cache, cluster: Cache, seed_port: int) -> list[tuple[str, float]]:
    def loader(user_id: int) -> dict[str, Any]:
        return VALUE

    on_cluster = cluster.cached(ttl=300, key="user:{user_id}", l1=False)(loader)
    on_single = single.cached(ttl=300, key="user:{user_id}", l1=False)(loader)
    raw = RedisCluster(host="127.0.0.1", port=seed_port)
    raw.set("raw:user:42", orjson.dumps(VALUE))
    on_cluster(42), on_single(42)
    before = counters(cluster)
    number, rounds = 2000, 15
    rows = interleaved(
        {
            RAW: lambda: orjson.loads(raw.get("raw:user:42")),  # type: ignore[arg-type]
            HIT: lambda: on_cluster(42),
            SINGLE: lambda: on_single(42),
        },
        number=number,
        rounds=rounds,
    )
    check_hits(cluster, before, number * rounds + 1)  # + the warm-up call
    raw.close()
    return rows


def refill_rows(single: Cache, cluster: Cache) -> list[tuple[str, float]]:
    def loader(user_id: int) -> dict[str, Any]:
        return VALUE

    on_cluster = cluster.cached(ttl=300, key="team:{user_id}", tags=["team:{user_id}"], l1=False)(loader)
    on_single = single.cached(ttl=300, key="team:{user_id}", tags=["team:{user_id}"], l1=False)(loader)

    def refill(cache: Cache, fn: Any) -> None:
        if not cache.invalidate("team:7"):
            raise SystemExit("an invalidation failed: the numbers would measure fail-open")
        fn(7)

    return interleaved(
        {REFILL_SINGLE: lambda: refill(single, on_single), REFILL_CLUSTER: lambda: refill(cluster, on_cluster)},
        number=200,
        rounds=11,
    )


def main() -> int:
    state_dir = Path(tempfile.mkdtemp(prefix="dbscale-bench-rc-", dir="/tmp"))
    state_dir.chmod(0o755)
    topology = LocalTopology(state_dir)
    try:
        topology.up(replicas=0, shards=0, pgbouncer=False, redis_cluster=3, redis_cluster_replicas=1)
        nodes = local_cluster.cluster_nodes(topology.state())
        single, cluster = caches(topology.url("redis"), local_cluster.cache_url(nodes))
        hits = hit_rows(single, cluster, nodes[0].port)
        refills = refill_rows(single, cluster)
        single.close()
        cluster.close()
    finally:
        topology.down(purge=True)
        shutil.rmtree(state_dir, ignore_errors=True)
    print(table([("L2 hit (sync)", hits, RAW), ("invalidate + refill (sync)", refills, REFILL_SINGLE)]))
    ratio = dict(hits)[HIT] / dict(hits)[RAW]
    print(f"\n- cluster L2 hit {ratio:.2f}x RedisCluster GET + orjson.loads (target <= 1.15x, as on one Redis)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
