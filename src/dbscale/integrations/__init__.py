"""Glue for web frameworks and test runners; each module imports its framework, so import it by name.

* :mod:`dbscale.integrations.starlette` — Starlette and FastAPI (``pip install 'dbscale[fastapi]'``);
* :mod:`dbscale.integrations.flask` — Flask (``pip install 'dbscale[flask]'``);
* :mod:`dbscale.integrations.pytest_plugin` — fixtures on a real local topology (loaded by pytest).

The web integrations share one convention: a request carries its read-your-writes token in the
``X-Dbscale-Token`` header or the ``dbscale_token`` cookie; the request runs inside
``cluster.causal_scope(token)``; a response after a write carries the moved token back in both.
"""

from __future__ import annotations

import logging

from dbscale.errors import InvalidCausalToken
from dbscale.routing.lsn import parse_token

#: The request/response header and the cookie that carry a causal token.
TOKEN_HEADER = "X-Dbscale-Token"
TOKEN_COOKIE = "dbscale_token"

log = logging.getLogger("dbscale.integrations")


def incoming_token(header: str | None, cookie: str | None) -> str | None:
    """The token a request carries (header first, then cookie); a malformed one is ignored and logged."""
    token = header or cookie or None
    if token is None:
        return None
    try:
        parse_token(token)
    except InvalidCausalToken as exc:
        log.warning("ignoring a malformed causal token: %s", exc)
        return None
    return token


def outgoing_token(incoming: str | None, current: str | None) -> str | None:
    """The token to send back: the request's own after it wrote (None when nothing moved)."""
    return current if current and current != incoming else None


__all__ = ["TOKEN_COOKIE", "TOKEN_HEADER", "incoming_token", "outgoing_token"]
