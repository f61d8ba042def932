"""The HTTP edge tier: Cache-Control, strong ETags, surrogate keys and edge purges from the cache's tags.

Theory of operation. The middleware (:class:`EdgeWSGI`, :class:`EdgeASGI`) keeps each edge-cacheable
response — a ``GET``/``HEAD`` whose URL ``tags_for`` maps to cache tags — in the dbscale cache under
``edge:<url>``, filled through the cache's lease path with those tags. So:

* the response carries ``Cache-Control: public, max-age=…, stale-while-revalidate=…``, a strong
  ``ETag`` (a SHA-256 of the body) and the tags as ``Surrogate-Key`` (space-separated, Fastly) and
  ``Cache-Tag`` (comma-separated, Cloudflare);
* while the entry is cached, the handler does not run at all: a request whose ``If-None-Match``
  matches gets ``304 Not Modified`` and any other gets the stored body;
* ``cache.invalidate_tags(tag)`` (from any process) removes the entry like any other tagged key, and
  a fill that raced the invalidation is dropped by the lease, so a 304 is never answered for a value
  that changed.

Purging the edge without nginx's ``proxy_cache_purge`` module: an invalidation is broadcast on the
cache's pub/sub channel with the keys it reached; :class:`EdgePurger` listens there and, for every
``edge:<url>`` key, sends ``GET <edge><url>`` with the header ``X-Dbscale-Purge: <secret>``. The
edge is configured to bypass its cache for that header (nginx: ``proxy_cache_bypass``) and the
middleware answers it with an empty body and ``X-Accel-Expires: @1`` — an entry that expired in
1970 — which replaces the edge's copy, so the next GET of the URL goes to the application. A CDN
with a purge API would purge by ``Surrogate-Key`` instead; the secret keeps strangers from
bypassing the edge.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import logging
import threading
import urllib.error
import urllib.request
import uuid
from collections.abc import Awaitable, Callable, Iterable, MutableMapping, Sequence
from dataclasses import dataclass
from typing import Any

from dbscale.cache import Cache
from dbscale.cache.invalidation import Listener
from dbscale.errors import ConfigError

__all__ = [
    "PURGE_HEADER",
    "EdgeASGI",
    "EdgePolicy",
    "EdgePurger",
    "EdgeWSGI",
    "etag_of",
    "if_none_match",
]

log = logging.getLogger("dbscale.edge")

PURGE_HEADER = "X-Dbscale-Purge"
TagsFor = Callable[[str], Sequence[str]]
Headers = list[tuple[str, str]]
# Headers a stored response keeps (hop-by-hop and per-response ones are rebuilt).
_DROP = {"content-length", "etag", "cache-control", "surrogate-key", "cache-tag", "connection", "date"}


@dataclass(frozen=True)
class EdgePolicy:
    """How long the edge may keep a response, and the purge secret shared with :class:`EdgePurger`."""

    max_age: int = 60
    stale_while_revalidate: int = 30
    purge_secret: str | None = None
    key_prefix: str = "edge:"

    @property
    def entry_ttl(self) -> float:
        """The cache entry outlives what the edge may serve, so its invalidation always reaches the purger."""
        return float(self.max_age + self.stale_while_revalidate + 5)

    def cache_control(self) -> str:
        """The ``Cache-Control`` value of an edge-cacheable response."""
        return f"public, max-age={self.max_age}, stale-while-revalidate={self.stale_while_revalidate}"

    def key(self, url: str) -> str:
        """The cache key holding the response of ``url`` (path and query)."""
        return self.key_prefix + url

    def is_purge(self, value: str | None) -> bool:
        """Whether a request carries the purge header with the right secret (constant-time compare)."""
        return bool(self.purge_secret and value and hmac.compare_digest(value, self.purge_secret))


def etag_of(body: bytes) -> str:
    """A strong ETag for ``body``: its SHA-256, quoted."""
    return '"' + hashlib.sha256(body).hexdigest()[:40] + '"'


def if_none_match(header: str | None, etag: str) -> bool:
    """RFC 9110 §13.1.2: does ``If-None-Match`` match ``etag`` (weak comparison, ``*`` matches all)?"""
    if not header:
        return False
    want = etag.removeprefix("W/")
    for item in header.split(","):
        item = item.strip()
        if item == "*" or item.removeprefix("W/") == want:
            return True
    return False


def edge_headers(policy: EdgePolicy, etag: str, tags: Sequence[str]) -> Headers:
    """The headers every edge-cacheable response (200 or 304) carries."""
    return [
        ("Cache-Control", policy.cache_control()),
        ("ETag", etag),
        ("Surrogate-Key", " ".join(tags)),
        ("Cache-Tag", ",".join(tags)),
    ]


def purge_headers() -> Headers:
    """The answer to a purge request: an entry that expired long ago replaces the edge's copy."""
    return [("X-Accel-Expires", "@1"), ("Content-Length", "0")]


def stored(status: int, headers: Iterable[tuple[str, str]], body: bytes) -> dict[str, Any]:
    """The cache value of a response (JSON-safe: the body is base64)."""
    kept = [[k, v] for k, v in headers if k.lower() not in _DROP]
    return {"s": status, "h": kept, "b": base64.b64encode(body).decode(), "e": etag_of(body)}


def respond(
    policy: EdgePolicy, entry: dict[str, Any], tags: Sequence[str], inm: str | None, head: bool
) -> tuple[int, Headers, bytes]:
    """Status, headers and body answering a request from a stored response (a 304 when ``inm`` matches)."""
    etag = str(entry["e"])
    headers = edge_headers(policy, etag, tags)
    if if_none_match(inm, etag):
        return 304, headers, b""
    body = base64.b64decode(entry["b"])
    headers = [(str(k), str(v)) for k, v in entry["h"]] + headers + [("Content-Length", str(len(body)))]
    return int(entry["s"]), headers, b"" if head else body


class _Uncacheable(Exception):  # private control flow: a response the edge must not keep
    def __init__(self, status: int, headers: Headers, body: bytes) -> None:
        super().__init__(status)
        self.response = (status, headers, body)


def _url(path: str, query: str) -> str:
    return path + ("?" + query if query else "")


_REASONS = {200: "OK", 304: "Not Modified"}


class EdgeWSGI:
    """WSGI middleware: edge headers, cached responses, 304s and purge answers (see the module doc).

    ``tags_for(url)`` names the cache tags of a URL; a URL without tags passes through untouched.
    """

    def __init__(
        self, app: Callable[..., Iterable[bytes]], cache: Cache, tags_for: TagsFor, policy: EdgePolicy | None = None
    ) -> None:
        self.app, self.cache, self.tags_for = app, cache, tags_for
        self.policy = policy or EdgePolicy()

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        method = environ.get("REQUEST_METHOD", "GET")
        url = _url(environ.get("PATH_INFO", ""), environ.get("QUERY_STRING", ""))
        tags = list(self.tags_for(url)) if method in ("GET", "HEAD") else []
        if not tags:
            return self.app(environ, start_response)
        if self.policy.is_purge(environ.get("HTTP_X_DBSCALE_PURGE")):
            start_response("200 OK", purge_headers())
            return [b""]
        try:
            entry = self.cache.get_or_load(
                self.policy.key(url), lambda: self._render(environ), ttl=self.policy.entry_ttl, tags=tags
            )
        except _Uncacheable as exc:
            status, headers, body = exc.response
        else:
            status, headers, body = respond(
                self.policy, entry, tags, environ.get("HTTP_IF_NONE_MATCH"), method == "HEAD"
            )
        start_response(f"{status} {_REASONS.get(status, '')}".rstrip(), headers)
        return [body]

    def _render(self, environ: dict[str, Any]) -> dict[str, Any]:
        captured: dict[str, Any] = {}

        def start_response(status: str, headers: Headers, exc_info: Any = None) -> Callable[[bytes], None]:
            captured["status"], captured["headers"] = int(status.split(" ", 1)[0]), list(headers)
            return lambda _data: None

        result = self.app({**environ, "REQUEST_METHOD": "GET"}, start_response)
        try:
            body = b"".join(result)
        finally:
            close = getattr(result, "close", None)
            if close is not None:
                close()
        if captured["status"] != 200:
            raise _Uncacheable(captured["status"], captured["headers"], body)
        return stored(200, captured["headers"], body)


Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]


class EdgeASGI:
    """ASGI middleware: the asyncio twin of :class:`EdgeWSGI` (uses the cache's asyncio front end)."""

    def __init__(
        self,
        app: Callable[[Scope, Receive, Send], Awaitable[None]],
        cache: Cache,
        tags_for: TagsFor,
        policy: EdgePolicy | None = None,
    ) -> None:
        self.app, self.cache, self.tags_for = app, cache, tags_for
        self.policy = policy or EdgePolicy()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        method = scope.get("method", "GET")
        url = _url(scope.get("path", ""), scope.get("query_string", b"").decode("latin-1"))
        tags = list(self.tags_for(url)) if scope["type"] == "http" and method in ("GET", "HEAD") else []
        if not tags:
            await self.app(scope, receive, send)
            return
        req = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
        if self.policy.is_purge(req.get(PURGE_HEADER.lower())):
            status, headers, body = 200, purge_headers(), b""
        else:
            try:
                entry = await self.cache.aio.get_or_load(
                    self.policy.key(url), lambda: self._render(scope, receive), ttl=self.policy.entry_ttl, tags=tags
                )
            except _Uncacheable as exc:
                status, headers, body = exc.response
            else:
                status, headers, body = respond(self.policy, entry, tags, req.get("if-none-match"), method == "HEAD")
        await send(
            {
                "type": "http.response.start",
                "status": status,
                "headers": [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in headers],
            }
        )
        await send({"type": "http.response.body", "body": body})

    async def _render(self, scope: Scope, receive: Receive) -> dict[str, Any]:
        status, headers, chunks = 500, [], []

        async def capture(message: MutableMapping[str, Any]) -> None:
            nonlocal status, headers
            if message["type"] == "http.response.start":
                status = int(message["status"])
                headers = [(k.decode("latin-1"), v.decode("latin-1")) for k, v in message.get("headers", [])]
            elif message["type"] == "http.response.body":
                chunks.append(bytes(message.get("body", b"")))

        await self.app({**scope, "method": "GET"}, receive, capture)
        body = b"".join(chunks)
        if status != 200:
            raise _Uncacheable(status, headers, body)
        return stored(200, headers, body)


class EdgePurger:
    """Purges the edge's copy of every ``edge:<url>`` key an invalidation reaches (any process's).

    Listens on the cache's invalidation channel and sends ``GET <edge_url><url>`` with
    ``X-Dbscale-Purge: <secret>`` for each such key. :attr:`purged` counts the purges sent;
    :meth:`wait_for` lets tests (and a deploy script) wait for them.
    """

    def __init__(self, cache: Cache, edge_url: str, policy: EdgePolicy, *, timeout: float = 2.0) -> None:
        if not policy.purge_secret:
            raise ConfigError("EdgePurger needs EdgePolicy(purge_secret=...) shared with the middleware")
        url = cache.config.redis_url
        if url is None:
            raise ValueError(
                "EdgePurger needs the cache's Redis (cache.redis_url): invalidations arrive on its channel"
            )
        self.edge_url, self.policy, self.timeout = edge_url.rstrip("/"), policy, timeout
        self.purged = 0
        self.failed = 0
        self._cond = threading.Condition()
        self._listener = Listener(
            str(url), cache.core.keys.channel, f"edge-{uuid.uuid4().hex}", self._on_message, lambda: None
        )
        self._listener.start()

    def wait_ready(self, timeout: float = 5.0) -> bool:
        """Block until subscribed; True if ready."""
        return self._listener.wait_ready(timeout)

    def wait_for(self, count: int, timeout: float = 5.0) -> bool:
        """Block until ``count`` purges in all were sent (or failed); True if reached."""
        with self._cond:
            return self._cond.wait_for(lambda: self.purged + self.failed >= count, timeout)

    def purge(self, url: str) -> bool:
        """Purge one URL (path and query) at the edge now; False if the edge did not answer 200."""
        request = urllib.request.Request(self.edge_url + url, headers={PURGE_HEADER: str(self.policy.purge_secret)})
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                ok = bool(response.status == 200)
        except (urllib.error.URLError, OSError) as exc:
            log.warning("edge purge of %s failed: %s", url, exc)
            ok = False
        with self._cond:
            if ok:
                self.purged += 1
            else:
                self.failed += 1
            self._cond.notify_all()
        return ok

    def _on_message(self, keys: list[str], pattern: str | None) -> None:
        for key in keys:
            if key.startswith(self.policy.key_prefix):
                self.purge(key[len(self.policy.key_prefix) :])

    def close(self) -> None:
        """Stop listening."""
        self._listener.close()
