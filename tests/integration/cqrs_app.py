"""Projectors the CQRS tests run in-process and as ``dbscale project run`` workers.

``users_projector`` is the README's example. ``make_tally`` is the crash test's projector: its
handler refuses an event that is not the next version of its aggregate, so a duplicate, a gap or
an out-of-order event stops the projector instead of going unnoticed. The name comes from the
environment (``CQRS_TALLY``) so each test uses its own projector, table and event type.
"""

from __future__ import annotations

import os

from sqlalchemy import BigInteger, Column, Connection, MetaData, Table, Text, insert, text, update

from dbscale import Cluster
from dbscale.cqrs import Event, Projector

metadata = MetaData()
users_read = Table(
    "users_read",
    metadata,
    Column("id", Text, primary_key=True),
    Column("name", Text),
    Column("email", Text),
    Column("plan", Text),
    Column("version", BigInteger, nullable=False),
)
FIELDS = ("name", "email", "plan")


def create_users_read(conn: Connection) -> None:
    users_read.create(conn, checkfirst=True)  # unqualified: lands in the rebuild schema during a rebuild


def users_projector(cluster: Cluster | None = None, name: str = "users_read") -> Projector:
    projector = Projector(name, cluster, tables=["users_read"], setup=create_users_read)

    @projector.on("user_created")
    def created(conn: Connection, event: Event) -> None:
        fields = {k: event.payload.get(k) for k in FIELDS}
        conn.execute(insert(users_read).values(id=event.aggregate_id, version=event.version, **fields))

    @projector.on("user_updated")
    def updated(conn: Connection, event: Event) -> None:
        changed = {k: v for k, v in event.payload.items() if k in FIELDS}  # only the fields the event carries
        stmt = update(users_read).where(users_read.c.id == event.aggregate_id)
        conn.execute(stmt.values(version=event.version, **changed))

    return projector


def make_tally(cluster: Cluster) -> Projector:
    """Projector ``$CQRS_TALLY`` folding ``$CQRS_TALLY`` events (payload ``{"amount": n}``) into table ``$CQRS_TALLY``."""
    name = os.environ["CQRS_TALLY"]

    def setup(conn: Connection) -> None:
        conn.exec_driver_sql(
            f"CREATE TABLE IF NOT EXISTS {name} (aggregate_id text PRIMARY KEY, total bigint NOT NULL, "
            "n bigint NOT NULL, last_version bigint NOT NULL)"
        )

    projector = Projector(name, cluster, tables=[name], setup=setup, batch_size=250)

    @projector.on(name)
    def add(conn: Connection, event: Event) -> None:
        params = {"a": event.aggregate_id, "amount": event.payload["amount"], "v": event.version}
        if event.version == 1:  # a duplicate violates the primary key
            conn.execute(text(f"INSERT INTO {name} VALUES (:a, :amount, 1, 1)"), params)
            return
        result = conn.execute(
            text(
                f"UPDATE {name} SET total = total + :amount, n = n + 1, last_version = :v "
                "WHERE aggregate_id = :a AND last_version = :v - 1"
            ),
            params,
        )
        if result.rowcount != 1:
            raise RuntimeError(f"event {event.id}: {event.aggregate_id} v{event.version} is not the next version")

    return projector
