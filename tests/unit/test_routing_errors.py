"""Driver errors classified at the boundary, and the request-scoped causal context — no servers."""

from __future__ import annotations

import asyncio

import psycopg
import pytest
from sqlalchemy import exc as sa_exc

from dbscale.routing.context import CausalContext
from dbscale.routing.errors import describe, failure_kind, refusal_reason
from dbscale.routing.lsn import InvalidCausalToken, Mark

PREFIX = 'connection failed: connection to server at "127.0.0.1", port 5432 failed: FATAL:  '


@pytest.mark.parametrize(
    ("text", "kind"),
    [
        ('password authentication failed for user "app"', "refused"),
        ("SASL authentication failed", "refused"),  # PgBouncer's wording for a wrong password
        ('database "nodb" does not exist', "refused"),
        ('role "ghost" does not exist', "refused"),
        ("server login has been failing, try again later (server_login_retry)", "not_ready"),
        ("the database system is starting up", "not_ready"),
        ("query_wait_timeout", "not_ready"),
        ("Connection refused", "connection"),
    ],
)
def test_connect_errors_are_classified(text: str, kind: str) -> None:
    exc = psycopg.OperationalError(PREFIX + text)
    assert failure_kind(exc) == kind
    wrapped = sa_exc.OperationalError("SELECT 1", {}, exc)
    assert failure_kind(wrapped) == kind


def test_a_statement_error_is_the_statements_own() -> None:
    assert failure_kind(psycopg.errors.UndefinedTable('relation "x" does not exist')) == "other"


def test_refusal_reason_and_descriptions_are_one_line_without_the_url() -> None:
    exc = psycopg.OperationalError(PREFIX + 'password authentication failed for user "app"\n\tmore')
    assert refusal_reason(exc) == 'password authentication failed for user "app" more'
    assert "\n" not in describe(psycopg.OperationalError("Connection refused\n\tIs the server running?"))


def test_causal_scope_replaces_and_restores_the_marks() -> None:
    ctx = CausalContext()
    ctx.record("main", Mark(lsn=100))
    with ctx.scope("main/0/C8") as token:
        assert token == "main/0/C8" and ctx.mark_for("main", None) == Mark(lsn=200)
        ctx.record("main", Mark(lsn=300))  # a write in the block moves the token forward
        assert ctx.token() == "main/0/12C"
    assert ctx.token() == "main/0/64"
    with ctx.scope(None):
        assert ctx.token() is None
    with pytest.raises(InvalidCausalToken):
        ctx.scope("garbage").__enter__()


def test_causal_scope_is_per_asyncio_task() -> None:
    ctx = CausalContext()

    async def request(token: str | None) -> str | None:
        with ctx.scope(token):
            await asyncio.sleep(0.01)
            return ctx.token()

    async def run() -> list[str | None]:
        return list(await asyncio.gather(request("main/0/10"), request(None), request("main/0/20")))

    assert asyncio.run(run()) == ["main/0/10", None, "main/0/20"]


def test_not_ready_is_the_restarting_server_or_pgbouncer_waiting_to_log_in() -> None:
    import psycopg

    from dbscale.readiness import not_ready

    assert not_ready(psycopg.errors.ProtocolViolation("server login has been failing, try again later"))
    assert not_ready(psycopg.OperationalError("FATAL: the database system is starting up"))
    assert not not_ready(psycopg.errors.UniqueViolation("duplicate key value violates unique constraint"))
    assert not not_ready(ValueError("server login has been failing"))  # not a driver error
