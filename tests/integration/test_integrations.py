"""The web integrations with the frameworks' own test clients, on the session topology (replay paused)."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import pytest
from flask import Flask, jsonify
from sqlalchemy import text
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route
from starlette.testclient import TestClient

import dbscale
from dbscale.integrations.flask import Dbscale
from dbscale.integrations.pytest_plugin import DbscaleTopology
from dbscale.integrations.starlette import CausalTokenMiddleware, lifespan, metrics_endpoint

pytestmark = pytest.mark.integration


@pytest.fixture
def paused(dbscale_topology: DbscaleTopology, restore_topology: object, table: str) -> Iterator[str]:
    """``table`` (replayed everywhere), then WAL replay paused on every replica of main."""
    assert dbscale_topology.local is not None
    for name in dbscale_topology.replica_names():
        if name.startswith("main-"):
            dbscale_topology.local.pause_replay(name)
    yield table


def flask_app(cluster: dbscale.Cluster, table: str) -> Flask:
    app = Flask(__name__)
    Dbscale(app, cluster)

    @app.post("/k/<int:k>")
    def write(k: int) -> object:
        with cluster.write() as conn:
            conn.execute(text(f"UPDATE {table} SET v = -v WHERE k = :k"), {"k": k})
        return jsonify(ok=True)

    @app.get("/k/<int:k>")
    def read(k: int) -> object:
        with cluster.read() as conn:
            return jsonify(v=conn.scalar(text(f"SELECT v FROM {table} WHERE k = :k"), {"k": k}), node=conn.node)

    return app


def test_flask_cookie_and_header_carry_the_token(dbscale_cluster: dbscale.Cluster, paused: str) -> None:
    client = flask_app(dbscale_cluster, paused).test_client()
    written = client.post("/k/7")
    token = written.headers["X-Dbscale-Token"]
    assert "dbscale_token=" in written.headers["Set-Cookie"]
    assert client.get("/k/7").json["v"] == -70  # the cookie the client kept

    fresh = flask_app(dbscale_cluster, paused).test_client()
    got = fresh.get("/k/7", headers={"X-Dbscale-Token": token})
    assert got.json == {"v": -70, "node": "main-primary"}  # the replicas have not replayed it
    assert "X-Dbscale-Token" not in got.headers  # nothing written, nothing sent back
    stale = fresh.get("/k/7")  # without the token a replica answers, stale
    assert stale.json["v"] == 70 and stale.json["node"] != "main-primary"
    metrics = fresh.get("/metrics")
    assert metrics.content_type.startswith("text/plain; version=") and b"_created" not in metrics.data


def test_starlette_sync_endpoint_sends_back_the_token_of_its_write(
    dbscale_cluster: dbscale.Cluster, paused: str
) -> None:
    """A ``def`` endpoint runs in a worker thread with a copy of the request's context: its write
    still moves the token the middleware sends back, and that token reads the write back."""
    cluster = dbscale_cluster

    def write(request: Request) -> JSONResponse:
        with cluster.write() as conn:
            conn.execute(text(f"UPDATE {paused} SET v = -v WHERE k = 9"))
        return JSONResponse({"ok": True})

    def read(request: Request) -> JSONResponse:
        with cluster.read() as conn:
            return JSONResponse({"v": conn.scalar(text(f"SELECT v FROM {paused} WHERE k = 9")), "node": conn.node})

    app = Starlette(routes=[Route("/w", write, methods=["POST"]), Route("/r", read)])
    app.add_middleware(CausalTokenMiddleware, cluster=cluster)
    with TestClient(app) as client:
        written = client.post("/w")
        token = written.headers["X-Dbscale-Token"]
        client.cookies.clear()
        got = client.get("/r", headers={"X-Dbscale-Token": token})
        assert got.json() == {"v": -90, "node": "main-primary"}  # the replicas have not replayed it
        assert client.get("/r").json()["v"] == 90  # without the token: a replica, stale


def test_starlette_ignores_a_malformed_token_and_serves_metrics(
    dbscale_async_cluster: dbscale.AsyncCluster, table: str, caplog: pytest.LogCaptureFixture
) -> None:
    cluster = dbscale_async_cluster

    async def read(request: Request) -> JSONResponse:
        async with cluster.read() as conn:
            return JSONResponse({"v": await conn.scalar(text(f"SELECT v FROM {table} WHERE k = 1"))})

    app = Starlette(routes=[Route("/", read), Route("/metrics", metrics_endpoint(cluster))], lifespan=lifespan(cluster))
    app.add_middleware(CausalTokenMiddleware, cluster=cluster)
    with TestClient(app) as client, caplog.at_level(logging.WARNING, "dbscale.integrations"):
        got = client.get("/", headers={"X-Dbscale-Token": "not a token"})
        assert got.status_code == 200 and got.json() == {"v": 10}
        assert "malformed causal token" in caplog.text
        assert "dbscale_reads_total" in client.get("/metrics").text
