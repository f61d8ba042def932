"""Whether a driver error says the server cannot take a session *yet*, or refuses it for good — no SQLAlchemy.

A restarting server answers ``57P03`` (the database system is starting up / shutting down); PgBouncer
in front of it refuses with "server login has been failing" (its ``server_login_retry``) or times
the client out. Both pass: the write paths wait them out within ``write_timeout``
(:mod:`dbscale.routing.errors` for the routers, :class:`dbscale.bulk.aio.AsyncPrimaries` for
``dbscale load``, which must start without SQLAlchemy).
"""

from __future__ import annotations

import re

import psycopg

NOT_READY = re.compile(
    r"server login has been failing|the database system is (starting up|shutting down|not yet accepting)|"
    r"query_wait_timeout|pgbouncer cannot connect to server",
    re.IGNORECASE,
)


#: Connect-time refusals (psycopg reports them with no SQLSTATE): wrong password, unknown role or
#: database, no pg_hba entry — PostgreSQL's and PgBouncer's wordings.
REFUSED = re.compile(
    r"authentication failed|no password supplied|role \"[^\"]*\" does not exist|"
    r"database \"[^\"]*\" does not exist|no pg_hba\.conf entry|no such database|no such user",
    re.IGNORECASE,
)
REFUSED_STATES = ("28000", "28P01", "3D000")


def refused(exc: BaseException) -> bool:
    """Whether ``exc`` (a psycopg error) says the credentials or the database name are wrong: retrying will not help."""
    if not isinstance(exc, psycopg.Error):
        return False
    state = exc.sqlstate
    return state in REFUSED_STATES or (
        state is None and isinstance(exc, psycopg.OperationalError) and REFUSED.search(str(exc)) is not None
    )


def not_ready(exc: BaseException) -> bool:
    """Whether ``exc`` (a psycopg error) says the server, or PgBouncer in front of it, is not ready yet."""
    return isinstance(exc, psycopg.Error) and (exc.sqlstate == "57P03" or NOT_READY.search(str(exc)) is not None)


__all__ = ["NOT_READY", "REFUSED", "REFUSED_STATES", "not_ready", "refused"]
