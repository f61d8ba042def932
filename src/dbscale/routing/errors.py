"""The boundary that classifies driver errors for routing (the error classes live in :mod:`dbscale.errors`)."""

from __future__ import annotations

from typing import Literal

import psycopg
from sqlalchemy import exc as sa_exc

from dbscale.errors import InvalidCausalToken, PoolTimeout
from dbscale.readiness import not_ready, refused

#: SQLSTATE classes/codes that mean "this connection or server is gone", not "this query is wrong".
_CONNECTION_STATES = ("08", "57P01", "57P02", "57P03")


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


FailureKind = Literal["refused", "not_ready", "connection", "other"]


def _orig(exc: BaseException) -> BaseException:
    return exc.orig if isinstance(exc, sa_exc.DBAPIError) and exc.orig is not None else exc


def failure_kind(exc: BaseException) -> FailureKind:
    """Classify a driver error for the write and read paths.

    ``refused``: the credentials or database are wrong (permanent: fail fast, no ban); ``not_ready``:
    the writer is coming up or PgBouncer cannot log in to it yet (wait, no ban); ``connection``: the
    endpoint or node failed (ban it); ``other``: the statement's own error.
    """
    orig = _orig(exc)
    if isinstance(orig, psycopg.Error):
        if refused(orig):
            return "refused"
        if not_ready(orig):
            return "not_ready"
    return "connection" if is_connection_error(exc) else "other"


def refusal_reason(exc: BaseException) -> str:
    """The server's words for a refusal, e.g. ``password authentication failed for user "app"``."""
    text = " ".join(str(_orig(exc)).split())
    return text.rsplit("FATAL:", 1)[-1].strip()[:200] or type(exc).__name__


def is_read_only_error(exc: BaseException) -> bool:
    """Whether ``exc`` says the node is in recovery (a write reached a standby)."""
    orig = exc.orig if isinstance(exc, sa_exc.DBAPIError) else exc
    return isinstance(orig, psycopg.errors.ReadOnlySqlTransaction)


def describe(exc: BaseException) -> str:
    """A one-line description of a driver error without connection strings."""
    orig = _orig(exc)
    text = str(orig).strip().splitlines()[0] if str(orig).strip() else ""
    return f"{type(orig).__name__}: {' '.join(text.split())}"[:200]


__all__ = [
    "FailureKind",
    "InvalidCausalToken",
    "PoolTimeout",
    "describe",
    "failure_kind",
    "is_connection_error",
    "is_read_only_error",
    "refusal_reason",
]
