"""Starlette and FastAPI: a lifespan that starts and closes the cluster, a causal-token middleware, ``/metrics``.

::

    cluster = dbscale.AsyncCluster.from_env()
    app = FastAPI(lifespan=lifespan(cluster))
    app.add_middleware(CausalTokenMiddleware, cluster=cluster)
    app.add_route("/metrics", metrics_endpoint(cluster))

The middleware is plain ASGI (not ``BaseHTTPMiddleware``): the endpoint runs in the request's own
task, and a *sync* endpoint (``def``, which Starlette and FastAPI run in a worker thread with a copy
of the request's context) records its writes in the request's causal scope, so the token sent back
covers writes from either kind of endpoint (with a blocking :class:`dbscale.Cluster` for ``def``
endpoints, an :class:`dbscale.AsyncCluster` for ``async def`` ones).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, MutableMapping
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from http.cookies import SimpleCookie
from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from dbscale.cluster import AsyncCluster, Cluster
from dbscale.integrations import TOKEN_COOKIE, TOKEN_HEADER, incoming_token, outgoing_token
from dbscale.metrics import CONTENT_TYPE

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


def lifespan(cluster: AsyncCluster) -> Callable[[Any], AbstractAsyncContextManager[None]]:
    """A ``lifespan=`` for Starlette/FastAPI: start the health monitors at startup, close the cluster at shutdown.

    The cluster is also put on ``app.state.dbscale``.
    """

    @asynccontextmanager
    async def run(app: Any) -> AsyncIterator[None]:
        app.state.dbscale = cluster
        await cluster.start()
        try:
            yield
        finally:
            await cluster.close()

    return run


class CausalTokenMiddleware:
    """Run each HTTP request in ``cluster.causal_scope(token)``; send the moved token back after a write.

    The token comes from the ``header`` (default ``X-Dbscale-Token``) or the ``cookie`` (default
    ``dbscale_token``); a response whose request wrote carries the new token in both (``cookie=None``
    for the header only). A malformed token is ignored (logged), never a 500.
    """

    def __init__(
        self,
        app: ASGIApp,
        cluster: AsyncCluster | Cluster,
        header: str = TOKEN_HEADER,
        cookie: str | None = TOKEN_COOKIE,
    ) -> None:
        self.app, self.cluster, self.header, self.cookie = app, cluster, header, cookie
        self._raw_header = header.lower().encode("latin-1")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        token = incoming_token(self._read_header(scope, self._raw_header), self._read_cookie(scope))
        with self.cluster.causal_scope(token):

            async def send_with_token(message: Message) -> None:
                if message["type"] == "http.response.start":
                    new = outgoing_token(token, self.cluster.causal_token())
                    if new is not None:
                        headers = list(message.get("headers", []))
                        headers.append((self._raw_header, new.encode("latin-1")))
                        if self.cookie:
                            cookie = f"{self.cookie}={new}; Path=/; HttpOnly; SameSite=Lax"
                            headers.append((b"set-cookie", cookie.encode("latin-1")))
                        message["headers"] = headers
                await send(message)

            await self.app(scope, receive, send_with_token)

    @staticmethod
    def _read_header(scope: Scope, name: bytes) -> str | None:
        for key, value in scope.get("headers", []):
            if key.lower() == name:
                return bytes(value).decode("latin-1")
        return None

    def _read_cookie(self, scope: Scope) -> str | None:
        raw = self._read_header(scope, b"cookie")
        if not raw or not self.cookie:
            return None
        morsel = SimpleCookie(raw).get(self.cookie)
        return None if morsel is None else morsel.value


def metrics_endpoint(cluster: AsyncCluster | Cluster) -> Callable[[Request], Awaitable[Response]]:
    """A Starlette endpoint serving the cluster's metrics in Prometheus text format (``app.add_route``)."""

    async def metrics(request: Request) -> Response:
        return Response(cluster.metrics.exposition(), media_type=CONTENT_TYPE)

    return metrics


__all__ = ["CausalTokenMiddleware", "lifespan", "metrics_endpoint"]
