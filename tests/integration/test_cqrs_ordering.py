"""Never skipping: writers commit out of id order while a projector runs; a "last id" reader (control) skips.

Each writer transaction takes its xid first, sleeps, appends, then sleeps 0-20 ms before COMMIT, so
commits land out of id order and out of xid order, and an aggregate's next version is often
appended by a transaction with a lower xid than the previous version's. The projector's handler
records every event id under a primary key (a second application fails the batch) and refuses an
event that is not its aggregate's next version.
"""

from __future__ import annotations

import random
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import Connection, text

from dbscale import Cluster
from dbscale.cqrs import Event, Projector

pytestmark = pytest.mark.integration

WRITERS = 8
AGGREGATES = 40


@pytest.fixture
def cluster(topology_config_path: Path) -> Iterator[Cluster]:
    with Cluster.from_config(topology_config_path) as cluster:
        cluster.install()
        yield cluster


def control_reader(cluster: Cluster, kind: str, seen: set[int], done: threading.Event) -> None:
    """The textbook projector: ``WHERE id > last ORDER BY id``, remembering the highest id seen."""
    engine = cluster.engine("main-primary")
    last = 0
    with engine.connect() as conn:
        while True:
            finished = done.is_set()
            rows = conn.execute(
                text("SELECT id FROM dbscale_events WHERE id > :last AND type = :t ORDER BY id"),
                {"last": last, "t": kind},
            ).all()
            conn.rollback()
            for (event_id,) in rows:
                seen.add(event_id)
                last = max(last, event_id)
            if finished:
                return
            time.sleep(0.002)


def run_ordering(cluster: Cluster, total: int) -> None:
    kind = f"ord{uuid.uuid4().hex[:8]}"
    with cluster.write() as conn:
        conn.exec_driver_sql(f"CREATE TABLE {kind} (event_id bigint PRIMARY KEY, aggregate_id text, version bigint)")
    projector = Projector(kind, cluster, batch_size=200)
    last_version: dict[str, int] = {}
    out_of_order: list[str] = []

    @projector.on(kind)
    def record(conn: Connection, event: Event) -> None:
        conn.execute(
            text(f"INSERT INTO {kind} VALUES (:id, :a, :v)"),
            {"id": event.id, "a": event.aggregate_id, "v": event.version},
        )
        if event.version != last_version.get(event.aggregate_id, 0) + 1:
            out_of_order.append(f"{event.aggregate_id} v{event.version} after v{last_version.get(event.aggregate_id)}")
            raise RuntimeError("out of version order")
        last_version[event.aggregate_id] = event.version  # no batch rolls back unless this test already failed

    appended: list[int] = []
    lock = threading.Lock()
    errors: list[BaseException] = []

    def writer(seed: int, count: int) -> None:
        rng = random.Random(seed)
        try:
            for _ in range(count):
                with cluster.write() as conn:
                    conn.exec_driver_sql("SELECT pg_current_xact_id()")  # take the xid now, append later
                    time.sleep(rng.uniform(0, 0.005))
                    agg = f"{kind}-{rng.randrange(AGGREGATES)}"
                    result = cluster.events.append(conn, kind, {"n": 1}, aggregate_id=agg)
                    time.sleep(rng.uniform(0, 0.020))
                with lock:
                    appended.append(result.id)
        except BaseException as exc:
            errors.append(exc)

    def run() -> None:
        try:
            projector.run()
        except BaseException as exc:
            errors.append(exc)

    runner = threading.Thread(target=run, daemon=True)
    seen: set[int] = set()
    done = threading.Event()
    control = threading.Thread(target=control_reader, args=(cluster, kind, seen, done), daemon=True)
    runner.start()
    control.start()
    threads = [threading.Thread(target=writer, args=(i, total // WRITERS)) for i in range(WRITERS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    done.set()
    control.join()
    assert not errors, errors
    deadline = time.monotonic() + 30
    while projector.status().lag_events and runner.is_alive():
        assert time.monotonic() < deadline, "projector did not catch up"
        time.sleep(0.05)
    projector.stop()
    runner.join(10)
    assert not runner.is_alive()
    assert not errors, errors

    with cluster.write() as conn:
        applied = [r[0] for r in conn.execute(text(f"SELECT event_id FROM {kind} ORDER BY event_id"))]
        versions = conn.execute(
            text(f"SELECT aggregate_id, array_agg(version ORDER BY version) FROM {kind} GROUP BY 1")
        ).all()
        conn.exec_driver_sql(f"DROP TABLE {kind}")
        conn.execute(text("DELETE FROM dbscale_projections WHERE name = :n"), {"n": kind})
    assert not out_of_order, out_of_order[:5]
    assert len(appended) == total
    assert applied == sorted(appended)  # every event once (the primary key forbids twice)
    for _, vs in versions:
        assert vs == list(range(1, len(vs) + 1))
    skipped = set(appended) - seen
    assert skipped, "the last-id control skipped nothing: commits did not land out of order, the test proves nothing"


def test_projector_never_skips_while_commits_land_out_of_order(cluster: Cluster) -> None:
    run_ordering(cluster, 2_000)


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_projector_never_skips_20000_events(cluster: Cluster) -> None:
    run_ordering(cluster, 20_000)
