"""Dedicated databases and data for the advisor tests (one database per test, on the session primary)."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from itertools import count
from typing import Any

import psycopg

from dbscale.local import LocalTopology

_seq = count()

TEXTBOOK = (
    "SELECT id, user_id, total FROM orders WHERE created_at > now() - interval '7 days' AND status = 'pending' "
    "ORDER BY created_at DESC"
)


def load_orders(conn: psycopg.Connection[Any], rows: int) -> None:
    """``orders`` spread evenly over the last year: 80% delivered, 12% shipped, 5% cancelled, 3% pending;
    5,000 users; ``total`` 0-999.99."""
    conn.execute(
        "CREATE TABLE orders (id bigserial PRIMARY KEY, user_id int NOT NULL, status text NOT NULL, "
        "created_at timestamptz NOT NULL, total numeric(10,2) NOT NULL)"
    )
    conn.execute(
        "INSERT INTO orders (user_id, status, created_at, total) "
        "SELECT (g::bigint * 7919) %% 5000, "
        "CASE WHEN g %% 100 < 80 THEN 'delivered' WHEN g %% 100 < 92 THEN 'shipped' "
        "WHEN g %% 100 < 97 THEN 'cancelled' ELSE 'pending' END, "
        "now() - ((%(n)s - g)::float / %(n)s) * interval '365 days', ((g * 31) %% 100000) / 100.0 "
        "FROM generate_series(1, %(n)s) g",
        {"n": rows},
    )
    # a sample of every row (up to 300k) makes the statistics, hence the plans and the advice, reproducible
    conn.execute("SET default_statistics_target = 1000")
    vacuum_all_visible(conn, "orders")


def vacuum_all_visible(conn: psycopg.Connection[Any], table: str, timeout: float = 30.0) -> None:
    """VACUUM ANALYZE until the visibility map covers the table, as it does for a table at rest.

    The replicas' hot-standby feedback holds the xmin horizon back for a moment after a load, and a VACUUM
    then cannot mark pages all-visible: index-only scans would look costly and the advice would differ.
    """
    deadline = time.monotonic() + timeout
    while True:
        conn.execute(f"VACUUM ANALYZE {table}")
        row = conn.execute(f"SELECT relallvisible, relpages FROM pg_class WHERE oid = '{table}'::regclass").fetchone()
        assert row is not None
        if row[0] >= row[1] or time.monotonic() > deadline:
            return
        time.sleep(0.5)


@contextmanager
def advisor_database(topology: LocalTopology, purpose: str) -> Iterator[tuple[str, psycopg.Connection[Any]]]:
    """A fresh database with HypoPG and pg_stat_statements: (its URL, an autocommit connection to it)."""
    base = topology.url("main-primary")
    name = f"advisor_{purpose}_{os.getpid()}_{next(_seq)}"
    with psycopg.connect(base, autocommit=True) as admin:
        admin.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        admin.execute(f"CREATE DATABASE {name}")
    url = base.rsplit("/", 1)[0] + "/" + name
    try:
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute("CREATE EXTENSION hypopg")
            conn.execute("CREATE EXTENSION pg_stat_statements")
            yield url, conn
    finally:
        with psycopg.connect(base, autocommit=True) as admin:
            admin.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


def load_workload_tables(conn: psycopg.Connection[Any]) -> None:
    """users (20k, PK + email), orders (100k) and events (20k rows, then 60k non-HOT updates: write-heavy)."""
    conn.execute(
        "CREATE TABLE users (id int PRIMARY KEY, email text NOT NULL, name text NOT NULL, country text NOT NULL, "
        "created_at timestamptz NOT NULL, deleted_at timestamptz)"
    )
    conn.execute(
        "INSERT INTO users SELECT g, 'user' || g || '@example.com', 'name ' || g, "
        "(ARRAY['NZ','FR','US','DE','JP'])[1 + g % 5], now() - (g || ' minutes')::interval, "
        "CASE WHEN g % 10 = 0 THEN now() END FROM generate_series(0, 19999) g"
    )
    load_orders(conn, 100_000)
    conn.execute(
        "CREATE TABLE events (id bigserial PRIMARY KEY, device_id int NOT NULL, kind text NOT NULL, n int NOT NULL)"
    )
    conn.execute(
        "INSERT INTO events (device_id, kind, n) SELECT g % 2000, (ARRAY['click','view','buy'])[1 + g % 3], 0 "
        "FROM generate_series(1, 20000) g"
    )
    for _ in range(3):  # full pages: these updates cannot be HOT, each writes a new index entry per index
        conn.execute("UPDATE events SET n = n + 1")
    vacuum_all_visible(conn, "users")
    vacuum_all_visible(conn, "events")
    # A backend publishes its table counters at most once a second (PG 15): without this flush the
    # advisor, reading pg_stat_user_tables right away, can see events with no writes and index it.
    conn.execute("SELECT pg_stat_force_next_flush()")
    conn.execute("SELECT 1")
