"""Flask: an extension that runs each request in ``cluster.causal_scope(token)`` and serves ``/metrics``.

::

    cluster = dbscale.Cluster.from_env()
    app = Flask(__name__)
    Dbscale(app, cluster)          # or Dbscale(cluster=cluster).init_app(app) in an app factory

A request carrying a token (``X-Dbscale-Token`` header or ``dbscale_token`` cookie) reads its
writes; a response after a write carries the new token back in both. ``app.teardown_appcontext``
closes nothing: the cluster belongs to the process (close it at exit, or let it be).
"""

from __future__ import annotations

from contextlib import AbstractContextManager
from typing import Any

from flask import Flask, Response, g, request

from dbscale.cluster import Cluster
from dbscale.integrations import TOKEN_COOKIE, TOKEN_HEADER, incoming_token, outgoing_token
from dbscale.metrics import CONTENT_TYPE


class Dbscale:
    """The Flask extension; ``app.extensions["dbscale"]`` is it, ``.cluster`` the cluster."""

    def __init__(
        self,
        app: Flask | None = None,
        cluster: Cluster | None = None,
        *,
        header: str = TOKEN_HEADER,
        cookie: str | None = TOKEN_COOKIE,
        metrics_path: str | None = "/metrics",
    ) -> None:
        self.cluster = cluster
        self.header, self.cookie, self.metrics_path = header, cookie, metrics_path
        if app is not None:
            self.init_app(app)

    def init_app(self, app: Flask, cluster: Cluster | None = None) -> None:
        """Register the request hooks (and the metrics route) on ``app``."""
        if cluster is not None:
            self.cluster = cluster
        if self.cluster is None:
            raise TypeError("Dbscale needs a cluster: Dbscale(app, cluster) or init_app(app, cluster)")
        app.extensions["dbscale"] = self
        app.before_request(self._enter)
        app.after_request(self._respond)
        app.teardown_request(self._exit)
        if self.metrics_path:
            app.add_url_rule(self.metrics_path, "dbscale_metrics", self._metrics)

    def _enter(self) -> None:
        assert self.cluster is not None
        cookie = request.cookies.get(self.cookie) if self.cookie else None
        token = incoming_token(request.headers.get(self.header), cookie)
        scope: AbstractContextManager[str | None] = self.cluster.causal_scope(token)
        scope.__enter__()
        g._dbscale_scope, g._dbscale_token = scope, token

    def _respond(self, response: Response) -> Response:
        assert self.cluster is not None
        new = outgoing_token(g.get("_dbscale_token"), self.cluster.causal_token())
        if new is not None:
            response.headers[self.header] = new
            if self.cookie:
                response.set_cookie(self.cookie, new, httponly=True, samesite="Lax")
        return response

    def _exit(self, exc: BaseException | None) -> None:
        scope = g.pop("_dbscale_scope", None)
        if scope is not None:
            scope.__exit__(None, None, None)

    def _metrics(self) -> Any:
        assert self.cluster is not None
        return Response(self.cluster.metrics.exposition(), content_type=CONTENT_TYPE)


__all__ = ["Dbscale"]
