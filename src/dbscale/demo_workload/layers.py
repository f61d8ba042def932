"""The stacks a request goes through, one per row of the report: each layer switched on in turn.

Every stack answers ``read(key)`` (a user's profile: the user row and their five latest orders) and
``write(key)`` (an UPDATE of the user's balance, then the invalidation its caches need) and counts
the reads that reached the database, so a hit rate is the share of reads that did not.
"""

from __future__ import annotations

import http.client
import threading
from typing import Any

import orjson
from sqlalchemy import text

from dbscale.cluster import Cluster
from dbscale.demo_workload.data import ORDERS, USERS
from dbscale.names import primary_name

PROFILE = text(
    f"SELECT u.id, u.name, u.balance, (SELECT coalesce(json_agg(o), '[]') FROM "
    f"(SELECT id, amount FROM {ORDERS} WHERE user_id = u.id ORDER BY created_at DESC LIMIT 5) o) "
    f"FROM {USERS} u WHERE u.id = :id"
)
ALL_PROFILES = text(
    f"SELECT u.id, u.name, u.balance, coalesce(o.orders, '[]') FROM {USERS} u LEFT JOIN LATERAL "
    f"(SELECT json_agg(x) AS orders FROM (SELECT id, amount FROM {ORDERS} WHERE user_id = u.id "
    "ORDER BY created_at DESC LIMIT 5) x) o ON true"
)
UPDATE = text(f"UPDATE {USERS} SET balance = balance + 1 WHERE id = :id")
LAYERS = ("primary only", "+ replicas", "+ Redis L2", "+ L1", "+ HTTP edge")


def profile_row(row: Any) -> dict[str, Any] | None:
    """The JSON-safe profile of a result row (None: no such user)."""
    if row is None:
        return None
    return {"id": row[0], "name": row[1], "balance": row[2], "orders": row[3]}


class Stack:
    """Primary only: every read and write on the group's primary."""

    name = LAYERS[0]

    def __init__(self, cluster: Cluster, run: str) -> None:
        self.cluster, self.run = cluster, run
        self.db_reads = 0
        self._lock = threading.Lock()
        self._primary = cluster.engine(primary_name(cluster.default_group()), read_only=True)

    def count_db_read(self) -> None:
        """One read reached the database."""
        with self._lock:
            self.db_reads += 1

    def db_read(self, key: int) -> dict[str, Any] | None:
        """The profile straight from the database."""
        self.count_db_read()
        with self._primary.connect() as conn:
            return profile_row(conn.execute(PROFILE, {"id": key}).first())

    def reads_at_db(self) -> int:
        """Reads this stack sent to the database so far."""
        return self.db_reads

    def read(self, key: int) -> Any:
        """One read request."""
        return self.db_read(key)

    def write(self, key: int) -> None:
        """One update request."""
        with self.cluster.write() as conn:
            conn.execute(UPDATE, {"id": key})
        self.invalidate(key)

    def invalidate(self, key: int) -> None:
        """What a write must invalidate (nothing without a cache)."""

    def tag(self, key: int) -> str:
        """The cache tag of one user in this run."""
        return f"wl:{self.run}:user:{key}"

    def close(self) -> None:
        """Release what the stack holds."""


class Replicas(Stack):
    """Reads routed to the replicas (lag- and causality-aware), writes on the primary."""

    name = LAYERS[1]

    def db_read(self, key: int) -> dict[str, Any] | None:
        self.count_db_read()
        with self.cluster.read() as conn:
            return profile_row(conn.execute(PROFILE, {"id": key}).first())


class RedisL2(Replicas):
    """Cache-aside in Redis (leases, tags) over the replicas; a write invalidates the user's tag."""

    name = LAYERS[2]
    l1 = False

    def read(self, key: int) -> Any:
        tag = self.tag(key)
        return self.cluster.cache.get_or_load(tag, lambda: self.db_read(key), ttl=300, tags=[tag], l1=self.l1)

    def invalidate(self, key: int) -> None:
        self.cluster.cache.invalidate_tags(self.tag(key))

    def warm(self, threads: int = 8) -> int:
        """Fill Redis with every user's profile, as a running application's cache would hold them
        (YCSB's load phase for the cache): one query for all profiles, then ``threads`` writers."""
        with self.cluster.read() as conn:
            profiles = [profile_row(row) for row in conn.execute(ALL_PROFILES)]
        cache = self.cluster.cache
        chunks = [profiles[i::threads] for i in range(threads)]

        def fill(chunk: list[dict[str, Any] | None]) -> None:
            for p in chunk:
                if p is not None:
                    tag = self.tag(int(p["id"]))
                    cache.set(tag, p, ttl=300, tags=[tag])

        workers = [threading.Thread(target=fill, args=(c,)) for c in chunks]
        for w in workers:
            w.start()
        for w in workers:
            w.join()
        return len(profiles)


class WithL1(RedisL2):
    """The in-process L1 over Redis (kept coherent across processes by pub/sub)."""

    name = LAYERS[3]
    l1 = True


class Edge(WithL1):
    """Reads are HTTP GETs through nginx (proxy_cache) to the edge app; writes purge the edge by tag."""

    name = LAYERS[4]

    def __init__(self, cluster: Cluster, run: str, edge_port: int, counter: Stack) -> None:
        super().__init__(cluster, run)
        self.port, self.app_counter = edge_port, counter
        self._local = threading.local()
        self._conns: list[http.client.HTTPConnection] = []

    def _conn(self) -> http.client.HTTPConnection:
        conn: http.client.HTTPConnection | None = getattr(self._local, "conn", None)
        if conn is None:
            conn = self._local.conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
            with self._lock:
                self._conns.append(conn)
        return conn

    def reads_at_db(self) -> int:
        return self.app_counter.reads_at_db()  # the application behind the edge counts them

    def read(self, key: int) -> Any:
        conn = self._conn()
        conn.request("GET", f"/users/{key}?run={self.run}")
        response = conn.getresponse()
        body = response.read()
        if response.status != 200:
            raise RuntimeError(f"edge answered {response.status}: {body[:200]!r}")
        return orjson.loads(body)

    def close(self) -> None:
        for conn in self._conns:
            conn.close()
