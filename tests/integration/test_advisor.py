"""The index advisor against real PostgreSQL with HypoPG (each test in its own database)."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import psycopg
import pytest
from typer.testing import CliRunner

import dbscale
from dbscale.advisor.model import Advice, IndexColumn
from dbscale.cli import app
from dbscale.errors import MissingExtensionError
from dbscale.local import LocalTopology

from .advisor_data import TEXTBOOK, advisor_database, load_orders, load_workload_tables
from .advisor_workload import WORKLOAD

pytestmark = pytest.mark.integration


def _cluster(url: str) -> dbscale.Cluster:
    return dbscale.Cluster(groups={"main": {"primary": url}})


def _assert_textbook_choice(advice: Advice) -> None:
    """(status, created_at DESC) [INCLUDE (user_id, total)], or its partial form on status = 'pending'."""
    assert len(advice.indexes) == 1, advice.indexes
    spec = advice.indexes[0].index
    assert spec.table == "orders"
    if spec.where is None:
        assert spec.columns == (IndexColumn("status"), IndexColumn("created_at", desc=True))
    else:
        assert spec.where == "status = 'pending'"
        assert spec.columns == (IndexColumn("created_at", desc=True),)
    assert set(spec.include) <= {"id", "user_id", "total"}
    assert [e.query.sql for e in advice.indexes[0].serves] == [TEXTBOOK]
    assert spec.ddl().startswith("CREATE INDEX CONCURRENTLY ")


def _textbook(local_topology: LocalTopology, rows: int) -> Advice:
    with advisor_database(local_topology, "textbook") as (url, conn):
        load_orders(conn, rows)
        with _cluster(url) as cluster:
            advice = dbscale.advise(cluster, [TEXTBOOK], apply=True)
        created = conn.execute("SELECT indexdef FROM pg_indexes WHERE tablename = 'orders'").fetchall()
    _assert_textbook_choice(advice)
    assert len(created) == 2  # the primary key and the advised index, created for real
    (m,) = advice.measurements
    print(f"{rows} rows: {m.before_ms:.2f} ms -> {m.after_ms:.3f} ms ({m.speedup:.0f}x)\n{m.after_plan}")
    assert "Index" in m.after_plan and "Seq Scan" in m.before_plan
    assert m.speedup >= 10, (m.before_ms, m.after_ms)
    return advice


def test_textbook_query_gets_status_created_at_desc_and_apply_cuts_time(local_topology: LocalTopology) -> None:
    _textbook(local_topology, 150_000)


@pytest.mark.slow
def test_textbook_query_full_size(local_topology: LocalTopology) -> None:
    _textbook(local_topology, 1_000_000)


# Hand-derived for WORKLOAD: (table, key columns, partial predicate) -> the queries each must serve.
EXPECTED: dict[tuple[str, tuple[IndexColumn, ...], str | None], set[str]] = {
    # the join key on orders (20 rows per user) also serves one user's recent orders and one user's shipped
    # orders: one index for three queries; wider ones would cut those only from ~75 to ~4 cost units
    ("orders", (IndexColumn("user_id"),), None): {"join", "orders_of_user_range", "user_recent_status"},
    # equality lookup; also the driving side of the join once orders(user_id) exists
    ("users", (IndexColumn("email"),), None): {"by_email", "join"},
    # a range on total (count(*) of 0.1% of the rows)
    ("orders", (IndexColumn("total"),), None): {"total_range"},
    # newest first with LIMIT: a DESC index read from its start (Dexter has no sort direction)
    ("users", (IndexColumn("created_at", desc=True),), None): {"newest_users"},
    # the textbook query: partial on the 3% pending rows, sorted DESC (Dexter cannot express either)
    ("orders", (IndexColumn("created_at", desc=True),), "status = 'pending'"): {"textbook"},
    # one country of five, sorted by name with LIMIT: partial on the constant, in ORDER BY order
    ("users", (IndexColumn("name"),), "country = 'NZ'"): {"live_users_country"},
}


def test_workload_set_matches_hand_derived_indexes(local_topology: LocalTopology) -> None:
    with advisor_database(local_topology, "workload") as (url, conn):
        load_workload_tables(conn)
        with _cluster(url) as cluster:
            advice = dbscale.advise(cluster, list(WORKLOAD.values()))
    name = {sql: key for key, sql in WORKLOAD.items()}
    got = {
        (r.index.table, r.index.columns, r.index.where): {name[e.query.sql] for e in r.serves} for r in advice.indexes
    }
    assert got == EXPECTED, "\n".join(r.index.ddl() for r in advice.indexes)
    for rec in advice.indexes:  # covering columns, if any, are columns the served queries read
        assert all(c in " ".join(e.query.sql for e in rec.serves) for c in rec.index.include)
        assert all(e.after < e.before * 0.7 for e in rec.serves)
    # nothing for the query the primary key already serves; the write-heavy table is flagged, not indexed
    assert not any("served_pk" in s for s in got.values())
    assert [f.subject for f in advice.served] == [WORKLOAD["served_pk"]]
    assert [f.subject for f in advice.write_heavy] == ["events"]
    assert not any(r.index.table == "events" for r in advice.indexes)
    assert advice.errors == []
    # ranked by estimated saving
    assert [r.saved for r in advice.indexes] == sorted((r.saved for r in advice.indexes), reverse=True)


def test_bad_queries_are_reported_and_the_rest_advised(local_topology: LocalTopology) -> None:
    bad_syntax = "SELEC id FROM orders"
    missing = "SELECT * FROM no_such_table WHERE id = 1"
    bad_column = "SELECT nope FROM orders WHERE id = 1"
    with advisor_database(local_topology, "bad") as (url, conn):
        load_orders(conn, 20_000)
        conn.execute("CREATE INDEX orders_user ON orders (user_id)")
        conn.execute("CREATE INDEX orders_user_created ON orders (user_id, created_at)")
        with _cluster(url) as cluster:
            advice = dbscale.advise(cluster, [bad_syntax, TEXTBOOK, missing, bad_column])
    errors = {f.subject: f.detail for f in advice.errors}
    assert set(errors) == {bad_syntax, missing, bad_column}
    assert "does not parse" in errors[bad_syntax]
    assert "no_such_table does not exist" in errors[missing]
    assert 'column "nope" does not exist' in errors[bad_column]
    _assert_textbook_choice(advice)
    # existing indexes: orders_user is a prefix of orders_user_created; neither has been scanned
    assert [(f.subject, f.detail.split(" (")[0]) for f in advice.duplicate] == [
        ("orders_user", "prefix of orders_user_created")
    ]
    assert {f.subject for f in advice.unused} == {"orders_user", "orders_user_created"}


def test_workload_from_pg_stat_statements(local_topology: LocalTopology) -> None:
    with advisor_database(local_topology, "stats") as (url, conn):
        load_orders(conn, 50_000)
        conn.execute("SELECT pg_stat_statements_reset()")
        with psycopg.connect(url) as app_conn:
            for user in range(20):  # the application's query, normalized by pg_stat_statements to $1
                app_conn.execute("SELECT id, total FROM orders WHERE user_id = %s", (user,), prepare=False)
        with _cluster(url) as cluster:
            advice = dbscale.advise(cluster, from_stats=True)
    (rec,) = advice.indexes
    assert rec.index.table == "orders" and rec.index.columns[0] == IndexColumn("user_id")
    (served,) = rec.serves
    assert served.query.calls == 20 and served.query.mean_ms is not None
    assert served.query.sql.startswith("SELECT id, total FROM orders WHERE user_id = '")  # $1 filled from pg_stats


def test_missing_extensions_say_how_to_enable_them(local_topology: LocalTopology) -> None:
    with advisor_database(local_topology, "noext") as (url, conn):
        conn.execute("DROP EXTENSION hypopg")
        with _cluster(url) as cluster, pytest.raises(MissingExtensionError, match="CREATE EXTENSION hypopg"):
            dbscale.advise(cluster, ["SELECT 1"])
        conn.execute("CREATE EXTENSION hypopg")
        conn.execute("DROP EXTENSION pg_stat_statements")
        with _cluster(url) as cluster, pytest.raises(MissingExtensionError, match="shared_preload_libraries"):
            dbscale.advise(cluster, from_stats=True)


def test_local_topology_database_has_hypopg(local_topology: LocalTopology) -> None:
    with psycopg.connect(local_topology.url("main-primary")) as conn:
        assert conn.execute("SELECT 1 FROM pg_extension WHERE extname = 'hypopg'").fetchone()


def test_cli_advise_json_and_sql_file(local_topology: LocalTopology, tmp_path: Any) -> None:
    with advisor_database(local_topology, "cli") as (url, conn):
        load_orders(conn, 30_000)
        config = tmp_path / "dbscale.toml"
        config.write_text(f'[groups.main]\nprimary = "{url}"\n')
        sql_file = tmp_path / "advice.sql"
        args = ["advise", "--config", str(config), "--query", TEXTBOOK, "--query", "SELEC", "--sql", str(sql_file)]
        result = CliRunner().invoke(app, [*args, "--json"])
        assert result.exit_code == 0, result.output
        doc = json.loads(result.output)
        assert doc["indexes"][0]["sql"] in sql_file.read_text()
        assert doc["errors"][0]["subject"] == "SELEC"
        table = CliRunner().invoke(app, args)
        assert table.exit_code == 0 and "CREATE INDEX CONCURRENTLY" in table.output and "SELEC" in table.output


async def _advise_async(url: str) -> Advice:
    async with dbscale.AsyncCluster(groups={"main": {"primary": url}}) as cluster:
        return await dbscale.advise_async(cluster, [TEXTBOOK, "SELECT * FROM missing"], apply=True)


def test_async_api_gives_the_same_advice(local_topology: LocalTopology) -> None:
    with advisor_database(local_topology, "async") as (url, conn):
        load_orders(conn, 30_000)
        advice = asyncio.run(_advise_async(url))
    _assert_textbook_choice(advice)
    assert [f.subject for f in advice.errors] == ["SELECT * FROM missing"]
    (m,) = advice.measurements
    assert m.after_ms < m.before_ms
