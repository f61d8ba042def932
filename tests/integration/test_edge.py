"""The HTTP edge tier behind a real nginx (proxy_cache) over the session topology's Redis.

The application is a WSGI app in this process wrapped in :class:`EdgeWSGI`; a counter records every
run of its handler, so "served by nginx" means "the counter did not move".
"""

from __future__ import annotations

import secrets
import shutil
import threading
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from socketserver import ThreadingMixIn
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

import pytest

from dbscale.cache import Cache
from dbscale.config import load_config
from dbscale.integrations.edge import EdgePolicy, EdgePurger, EdgeWSGI
from dbscale.local import nginx
from dbscale.local.ports import free_ports
from dbscale.local.service_user import current_service_user

from ..conftest import make_state_dir

pytestmark = pytest.mark.integration


class _Server(ThreadingMixIn, WSGIServer):
    daemon_threads = True


class _Quiet(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass


@dataclass
class Site:
    """The app's data, its handler counter, the edge URL and the purger."""

    prefix: str
    cache: Cache
    purger: EdgePurger
    edge_url: str
    data: dict[str, str] = field(default_factory=dict)
    runs: int = 0

    def get(self, path: str, headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
        request = urllib.request.Request(self.edge_url + path, headers=headers or {})
        try:
            with urllib.request.urlopen(request, timeout=5) as response:
                return response.status, dict(response.headers), response.read()
        except urllib.error.HTTPError as exc:  # 304 comes back as an HTTPError
            return exc.code, dict(exc.headers), exc.read()


def _app(site: Site) -> Callable[..., Any]:
    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> list[bytes]:
        site.runs += 1
        item = environ["PATH_INFO"].rsplit("/", 1)[-1]
        body = site.data[item].encode()
        start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
        return [body]

    return app


@pytest.fixture
def site(topology_config_path: Path) -> Iterator[Site]:
    prefix = f"t{uuid.uuid4().hex[:8]}"
    config = load_config(topology_config_path, environ={}).cache.model_copy(update={"namespace": prefix})
    cache = Cache(config)
    policy = EdgePolicy(max_age=60, stale_while_revalidate=30, purge_secret=secrets.token_hex(12))
    holder: list[Site] = []

    def tags_for(url: str) -> list[str]:
        return [f"item:{url.rsplit('/', 1)[-1]}"] if url.startswith("/items/") else []

    server = make_server("127.0.0.1", 0, lambda e, s: wrapped(e, s), server_class=_Server, handler_class=_Quiet)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    state = make_state_dir("i18-edge-")
    edge = nginx.EdgeConfig(state / "edge", free_ports(1)[0], server.server_port, policy.purge_secret or "")
    nginx.start(edge, current_service_user())
    purger = EdgePurger(cache, edge.url, policy)
    try:
        assert purger.wait_ready()
        holder.append(Site(prefix, cache, purger, edge.url))
        wrapped = EdgeWSGI(_app(holder[0]), cache, tags_for, policy)
        yield holder[0]
    finally:
        purger.close()
        nginx.stop(edge)
        server.shutdown()
        cache.close()
        shutil.rmtree(state, ignore_errors=True)


def test_second_get_is_served_by_nginx_and_invalidation_purges_it(site: Site) -> None:
    site.data["1"] = "first"
    status, headers, body = site.get("/items/1")
    assert (status, body, site.runs) == (200, b"first", 1)
    assert headers["Cache-Control"] == "public, max-age=60, stale-while-revalidate=30"
    assert headers["Surrogate-Key"] == "item:1" and headers["Cache-Tag"] == "item:1"
    etag = headers["ETag"]
    assert etag.startswith('"') and not etag.startswith("W/")

    status, headers, body = site.get("/items/1")
    assert (status, body, site.runs) == (200, b"first", 1), "the second GET reached the app"
    assert headers["X-Cache-Status"] == "HIT"

    site.data["1"] = "second"
    site.cache.invalidate_tags("item:1")
    assert site.purger.wait_for(1), "the edge purge was not sent"
    status, headers, body = site.get("/items/1")
    assert (status, body, site.runs) == (200, b"second", 2), "after invalidate_tags the GET must reach the app"
    assert headers["ETag"] != etag
    status, _, body = site.get("/items/1")
    assert (status, body, site.runs) == (200, b"second", 2)


def test_if_none_match_gets_304(site: Site) -> None:
    site.data["7"] = "seven"
    _, headers, _ = site.get("/items/7")
    etag = headers["ETag"]
    status, headers, body = site.get("/items/7", {"If-None-Match": etag})
    assert (status, body) == (304, b"")
    assert headers["ETag"] == etag
    status, _, _ = site.get("/items/7", {"If-None-Match": '"something-else"'})
    assert status == 200
    assert site.runs == 1


def test_app_answers_304_without_running_the_handler(site: Site) -> None:
    """Past the edge (e.g. the edge's copy expired): the middleware answers from the cache alone."""
    site.data["3"] = "three"
    status, headers, _ = site.get("/items/3")
    assert status == 200 and site.runs == 1
    # Purge only the edge's copy (the app's cache entry stays): the next conditional GET reaches the
    # app, which answers 304 from the cached entry without running the handler.
    assert site.purger.purge("/items/3")
    status, _, body = site.get("/items/3", {"If-None-Match": headers["ETag"]})
    assert (status, body) == (304, b"")
    assert site.runs == 1


def test_untagged_urls_pass_through(site: Site) -> None:
    site.data["x"] = "plain"
    # /other/ has no tags: no edge headers, never kept, the handler runs every time
    status, headers, body = site.get("/other/x")
    assert (status, body) == (200, b"plain") and "ETag" not in headers
    site.get("/other/x")
    assert site.runs == 2


def test_asgi_middleware_serves_from_the_cache_and_answers_304(topology_config_path: Path) -> None:
    """The ASGI twin on the real Redis: one handler run, then 200s and 304s from the cached response."""
    import asyncio

    from dbscale.integrations.edge import EdgeASGI

    config = load_config(topology_config_path, environ={}).cache.model_copy(update={"namespace": uuid.uuid4().hex})
    cache = Cache(config)
    runs = 0

    async def app(scope: Any, receive: Any, send: Any) -> None:
        nonlocal runs
        runs += 1
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]})
        await send({"type": "http.response.body", "body": b"hello"})

    edge = EdgeASGI(app, cache, lambda url: ["page:1"] if url == "/p" else [])

    async def call(headers: list[tuple[bytes, bytes]]) -> tuple[int, dict[bytes, bytes], bytes]:
        sent: list[dict[str, Any]] = []

        async def receive() -> dict[str, Any]:
            return {"type": "http.request", "body": b""}

        async def send(message: Any) -> None:
            sent.append(message)

        scope = {"type": "http", "method": "GET", "path": "/p", "query_string": b"", "headers": headers}
        await edge(scope, receive, send)
        return sent[0]["status"], dict(sent[0]["headers"]), sent[1]["body"]

    async def main() -> None:
        status, headers, body = await call([])
        assert (status, body) == (200, b"hello")
        assert headers[b"surrogate-key"] == b"page:1" and headers[b"cache-control"].startswith(b"public, max-age=")
        etag = headers[b"etag"]
        assert (await call([]))[::2] == (200, b"hello")
        assert (await call([(b"if-none-match", etag)]))[::2] == (304, b"")
        assert runs == 1
        await cache.aio.invalidate_tags("page:1")
        assert (await call([(b"if-none-match", etag)]))[0] == 304  # same body again: same strong ETag
        assert runs == 2

    try:
        asyncio.run(main())
    finally:
        cache.close()


def test_up_edge_serves_the_demo_app_through_nginx(restore_topology: Any) -> None:
    """`dbscale up --edge`: nginx in front of the demo app; the second GET is nginx's; down stops both."""
    edge = restore_topology.up_edge()
    try:
        seen = []
        for _ in range(2):
            with urllib.request.urlopen(edge.url + "/users/1", timeout=10) as response:
                seen.append((response.status, response.headers["X-Cache-Status"], response.headers["Surrogate-Key"]))
        assert seen[0][0] == 200 and seen[0][2] == "wl:app:user:1"
        assert seen[1][1] == "HIT"
        assert nginx.pid(edge) is not None
    finally:
        nginx.stop_edge(restore_topology.state_dir)
    assert nginx.pid(edge) is None
