"""Routing errors and the boundary that turns driver errors into them."""

from __future__ import annotations

import psycopg
from sqlalchemy import exc as sa_exc

from dbscale.errors import NodeUnavailable
from dbscale.routing.lsn import InvalidCausalToken

#: SQLSTATE classes/codes that mean "this connection or server is gone", not "this query is wrong".
_CONNECTION_STATES = ("08", "57P01", "57P02", "57P03")


class PoolTimeout(NodeUnavailable):
    """No pooled connection to a node became free within ``pool_timeout``; raise the pool size or find the leak."""


def is_connection_error(exc: BaseException) -> bool:
    """Whether ``exc`` means the node or the connection failed (retry elsewhere, ban the node)."""
    if isinstance(exc, sa_exc.DisconnectionError):
        return True
    if isinstance(exc, sa_exc.DBAPIError):
        if exc.connection_invalidated:
            return True
        exc = exc.orig if exc.orig is not None else exc
    if isinstance(exc, psycopg.OperationalError):
        state = exc.sqlstate
        return state is None or state.startswith(_CONNECTION_STATES)
    return isinstance(exc, psycopg.InterfaceError | OSError)


def is_read_only_error(exc: BaseException) -> bool:
    """Whether ``exc`` says the node is in recovery (a write reached a standby)."""
    orig = exc.orig if isinstance(exc, sa_exc.DBAPIError) else exc
    return isinstance(orig, psycopg.errors.ReadOnlySqlTransaction)


def describe(exc: BaseException) -> str:
    """A one-line description of a driver error without connection strings."""
    orig = exc.orig if isinstance(exc, sa_exc.DBAPIError) and exc.orig is not None else exc
    text = str(orig).strip().splitlines()[0] if str(orig).strip() else ""
    return f"{type(orig).__name__}: {text}"[:200]


__all__ = ["InvalidCausalToken", "PoolTimeout", "describe", "is_connection_error", "is_read_only_error"]
