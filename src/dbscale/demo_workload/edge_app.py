"""The application behind the HTTP edge: ``GET /users/<id>[?run=...]`` answers a user's profile as JSON.

It is wrapped in :class:`dbscale.integrations.edge.EdgeWSGI`, so its responses carry edge headers and
are kept in the dbscale cache under the user's tag; a write elsewhere that invalidates the tag purges
nginx through :class:`~dbscale.integrations.edge.EdgePurger`. ``python -m
dbscale.demo_workload.edge_app --config dbscale.toml --port P --secret S --edge-url URL`` serves it
(``dbscale up --edge`` does); the workload demo runs it in a thread.
"""

from __future__ import annotations

import argparse
import threading
from collections.abc import Callable, Iterable
from socketserver import ThreadingMixIn
from typing import Any
from urllib.parse import parse_qs, urlsplit
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

import orjson

from dbscale.cluster import Cluster
from dbscale.demo_workload.data import ShopSize, exists, load_shop
from dbscale.demo_workload.layers import Replicas, WithL1
from dbscale.integrations.edge import EdgePolicy, EdgePurger, EdgeWSGI


class _Server(ThreadingMixIn, WSGIServer):
    daemon_threads = True


class _Quiet(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass


def user_of(url: str) -> tuple[int, str] | None:
    """``(user id, run)`` of a ``/users/<id>?run=<run>`` URL, else None."""
    parts = urlsplit(url)
    head, _, tail = parts.path.rpartition("/")
    if head != "/users" or not tail.isdigit():
        return None
    return int(tail), parse_qs(parts.query).get("run", ["app"])[0]


def make_app(stack: Replicas, policy: EdgePolicy) -> EdgeWSGI:
    """The profile app behind the edge middleware; ``stack`` reads (through its caches) and counts."""

    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        found = user_of(environ.get("PATH_INFO", ""))
        profile = None if found is None else stack.read(found[0])
        if profile is None:
            start_response("404 Not Found", [("Content-Type", "text/plain")])
            return [b"no such user"]
        body = orjson.dumps(profile)
        start_response("200 OK", [("Content-Type", "application/json"), ("Content-Length", str(len(body)))])
        return [body]

    def tags_for(url: str) -> list[str]:
        found = user_of(url)
        return [] if found is None else [f"wl:{found[1]}:user:{found[0]}"]

    return EdgeWSGI(app, stack.cluster.cache, tags_for, policy)


class EdgeApp:
    """The app served on a loopback port in a thread, with its edge purger."""

    def __init__(self, stack: Replicas, policy: EdgePolicy, port: int = 0) -> None:
        self.stack = stack
        self.server = make_server(
            "127.0.0.1", port, make_app(stack, policy), server_class=_Server, handler_class=_Quiet
        )
        self.port = self.server.server_port
        self._thread = threading.Thread(target=self.server.serve_forever, name="dbscale-edge-app", daemon=True)
        self._thread.start()
        self.purger: EdgePurger | None = None

    def purge_through(self, edge_url: str, policy: EdgePolicy) -> None:
        """Start purging ``edge_url`` on every invalidation of an edge key."""
        self.purger = EdgePurger(self.stack.cluster.cache, edge_url, policy)
        self.purger.wait_ready()

    def close(self) -> None:
        """Stop purging and serving."""
        if self.purger is not None:
            self.purger.close()
        self.server.shutdown()
        self.server.server_close()


def main(argv: list[str] | None = None) -> None:
    """Serve the app until killed (``dbscale up --edge`` starts it detached)."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--config", required=True)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--secret", required=True)
    parser.add_argument("--edge-url", required=True)
    args = parser.parse_args(argv)
    policy = EdgePolicy(purge_secret=args.secret)
    with Cluster.from_config(args.config) as cluster:
        if not exists(cluster):  # a small shop to serve; `dbscale demo --workload` loads the full one
            load_shop(cluster, ShopSize(users=1_000, orders=10_000))
        app = EdgeApp(WithL1(cluster, "app"), policy, args.port)
        app.purge_through(args.edge_url, policy)
        threading.Event().wait()


if __name__ == "__main__":
    main()
