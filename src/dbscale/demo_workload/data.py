"""The sample shop dataset: ``shop_users`` and ``shop_orders``, loaded with :func:`dbscale.bulk_load`.

:func:`copy_rows` is the one place rows enter the database (binary COPY, a commit per 50,000 rows).
"""

from __future__ import annotations

import random
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import text

from dbscale.bulk import bulk_load
from dbscale.cluster import Cluster

USERS = "shop_users"
ORDERS = "shop_orders"
CREATED_AT = datetime(2026, 1, 1, tzinfo=UTC)  # every order's (the workloads read by user, not by date)

_SCHEMA = f"""
CREATE TABLE {USERS} (
    id bigint PRIMARY KEY, name text NOT NULL, email text NOT NULL, balance int NOT NULL
);
CREATE TABLE {ORDERS} (
    id bigint PRIMARY KEY, user_id bigint NOT NULL, amount int NOT NULL, created_at timestamptz NOT NULL
);
"""


@dataclass(frozen=True)
class ShopSize:
    """How many users and orders to load (orders are spread over users at random)."""

    users: int = 20_000
    orders: int = 1_000_000

    @property
    def rows(self) -> int:
        """Rows in all."""
        return self.users + self.orders


def copy_rows(cluster: Cluster, table: str, columns: Sequence[str], rows: Iterable[Sequence[Any]]) -> int:
    """Load ``rows`` into ``table`` with :func:`dbscale.bulk_load`; returns the row count.

    Committed per 50,000 rows: a load cut short leaves a partial table, which :func:`loaded` tells
    from a full one (exact counts), so the next run recreates the tables.
    """
    return bulk_load(cluster, table, rows, columns=list(columns), batch_rows=50_000, progress=False).loaded


def exists(cluster: Cluster) -> bool:
    """Whether the shop tables exist (of any size)."""
    with cluster.write() as conn:
        return conn.scalar(text("SELECT to_regclass(:t)"), {"t": ORDERS}) is not None


def loaded(cluster: Cluster, size: ShopSize) -> bool:
    """Whether the dataset of exactly this size is already there (a second demo run skips the load)."""
    if not exists(cluster):
        return False
    with cluster.write() as conn:
        users = conn.scalar(text(f"SELECT count(*) FROM {USERS}"))
        orders = conn.scalar(text(f"SELECT count(*) FROM {ORDERS}"))
    return (users, orders) == (size.users, size.orders)


def load_shop(cluster: Cluster, size: ShopSize, seed: int = 7) -> bool:
    """(Re)create and fill the shop tables unless this size is loaded already; True if it loaded."""
    if loaded(cluster, size):
        return False
    rng = random.Random(seed)
    with cluster.write() as conn:
        conn.execute(text(f"DROP TABLE IF EXISTS {ORDERS}, {USERS}"))
        for statement in _SCHEMA.split(";"):
            if statement.strip():
                conn.execute(text(statement))
    copy_rows(
        cluster,
        USERS,
        ("id", "name", "email", "balance"),
        ((i, f"user {i}", f"user{i}@shop.example", 1000) for i in range(1, size.users + 1)),
    )
    copy_rows(
        cluster,
        ORDERS,
        ("id", "user_id", "amount", "created_at"),
        ((i, rng.randint(1, size.users), rng.randint(100, 20_000), CREATED_AT) for i in range(1, size.orders + 1)),
    )
    with cluster.write() as conn:
        conn.execute(text(f"CREATE INDEX ON {ORDERS} (user_id, created_at DESC)"))
        conn.execute(text(f"ANALYZE {USERS}, {ORDERS}"))
    return True
