"""CQRS on the real topology: append in the command's transaction, the users_read example, failures, rebuild, lag."""

from __future__ import annotations

import asyncio
import statistics
import threading
import time
import uuid
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Connection, text
from sqlalchemy.ext.asyncio import AsyncConnection

from dbscale import AsyncCluster, Cluster
from dbscale.cqrs import AsyncProjector, ConcurrencyError, Event, ProjectionError, Projector

from .cqrs_app import users_projector

pytestmark = pytest.mark.integration


@pytest.fixture
def cluster(topology_config_path: Path) -> Iterator[Cluster]:
    with Cluster.from_config(topology_config_path) as cluster:
        cluster.install()
        cluster.install()  # idempotent
        yield cluster


def uid(prefix: str = "t") -> str:
    return f"{prefix}{uuid.uuid4().hex[:10]}"


def rows(cluster: Cluster, sql: str, **params: Any) -> list[tuple[Any, ...]]:
    with cluster.write() as conn:
        return [tuple(r) for r in conn.execute(text(sql), params)]


def test_event_exists_iff_the_command_commits_and_expected_version_conflicts(cluster: Cluster) -> None:
    agg = uid("agg")
    with cluster.write() as conn:
        first = cluster.events.append(conn, "noted", {"x": 1}, aggregate_id=agg, expected_version=0)
    assert first.version == 1
    with pytest.raises(RuntimeError), cluster.write() as conn:
        cluster.events.append(conn, "noted", {"x": 2}, aggregate_id=agg)
        raise RuntimeError("the command fails after appending")
    with cluster.write() as conn, pytest.raises(ConcurrencyError) as info:
        cluster.events.append(conn, "noted", {"x": 3}, aggregate_id=agg, expected_version=0)
    assert (info.value.expected, info.value.actual) == (0, 1)
    assert "reload it and retry" in str(info.value)
    with cluster.write() as conn:
        assert cluster.events.append(conn, "noted", {"x": 4}, aggregate_id=agg, expected_version=1).version == 2
    assert rows(
        cluster, "SELECT version, payload->>'x' FROM dbscale_events WHERE aggregate_id = :a ORDER BY id", a=agg
    ) == [
        (1, "1"),
        (2, "4"),
    ]


def test_concurrent_expected_version_one_wins(cluster: Cluster) -> None:
    agg = uid("agg")
    with cluster.write() as conn:
        cluster.events.append(conn, "noted", {}, aggregate_id=agg)
    outcomes: list[str] = []
    barrier = threading.Barrier(4)

    def command() -> None:
        try:
            with cluster.write() as conn:
                barrier.wait()
                cluster.events.append(conn, "noted", {}, aggregate_id=agg, expected_version=1)
                time.sleep(0.05)
            outcomes.append("ok")
        except ConcurrencyError:
            outcomes.append("conflict")

    threads = [threading.Thread(target=command) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(outcomes) == ["conflict"] * 3 + ["ok"]


def users_fixture(cluster: Cluster) -> tuple[Projector, list[str]]:
    with cluster.write() as conn:
        conn.exec_driver_sql("DROP TABLE IF EXISTS users_read")
        conn.execute(text("DELETE FROM dbscale_projections WHERE name = 'users_read'"))
    ids = [uid("user") for _ in range(3)]
    with cluster.write() as conn:
        for i, user in enumerate(ids):
            payload = {"name": f"n{i}", "email": f"{i}@example.com", "plan": "free"}
            cluster.events.append(conn, "user_created", payload, aggregate_id=user, expected_version=0)
    return users_projector(cluster), ids


def test_users_read_partial_update_changes_only_the_fields_it_carries(cluster: Cluster) -> None:
    projector, (ada, bob, _) = users_fixture(cluster)
    with cluster.write() as conn:
        cluster.events.append(conn, "user_updated", {"email": "ada@example.com"}, aggregate_id=ada)
        cluster.events.append(conn, "user_updated", {"plan": "pro", "name": "Bob"}, aggregate_id=bob)
    assert projector.run_once() >= 5
    got = {r[0]: r[1:] for r in rows(cluster, "SELECT id, name, email, plan, version FROM users_read")}
    assert got[ada] == ("n0", "ada@example.com", "free", 2)
    assert got[bob] == ("Bob", "1@example.com", "pro", 2)
    assert projector.run_once() == 0
    status = projector.status()
    assert status.lag_events == 0 and status.error is None
    assert cluster.metrics.value("projection_events_total", projector="users_read") >= 5


def test_rebuild_gives_the_live_read_model_and_swaps_atomically(cluster: Cluster) -> None:
    projector, ids = users_fixture(cluster)
    with cluster.write() as conn:
        for i in range(200):
            cluster.events.append(conn, "user_updated", {"name": f"name{i}"}, aggregate_id=ids[i % 3])
    projector.run_once()
    live = rows(cluster, "SELECT * FROM users_read ORDER BY id")
    before = projector.status().position
    seen: list[tuple[int, int]] = []
    assert projector.rebuild(lambda done, total: seen.append((done, total))) >= 203
    assert rows(cluster, "SELECT * FROM users_read ORDER BY id") == live
    assert projector.status().position >= before
    assert seen and seen[-1][0] == seen[-1][1]
    assert rows(cluster, "SELECT count(*) FROM pg_namespace WHERE nspname LIKE 'dbscale_rebuild_%'") == [(0,)]
    # the live projector continues from the rebuilt checkpoint: nothing twice, nothing lost
    with cluster.write() as conn:
        cluster.events.append(conn, "user_updated", {"email": "after@rebuild"}, aggregate_id=ids[0])
    assert projector.run_once() == 1
    assert rows(cluster, "SELECT email FROM users_read WHERE id = :i", i=ids[0]) == [("after@rebuild",)]


def failing_projector(cluster: Cluster, kind: str, bad: str, **kw: Any) -> tuple[Projector, list[str]]:
    with cluster.write() as conn:
        conn.exec_driver_sql(f"CREATE TABLE {kind} (payload text)")
        for p in ("a", "b", bad, "c"):
            cluster.events.append(conn, kind, {"p": p}, aggregate_id=uid())
    projector = Projector(kind, cluster, **kw)

    @projector.on(kind)
    def handle(conn: Connection, event: Event) -> None:
        if event.payload["p"] == bad:
            raise ValueError("cannot project this one")
        conn.execute(text(f"INSERT INTO {kind} VALUES (:p)"), {"p": event.payload["p"]})

    return projector, ["a", "b", "c"]


def test_failing_handler_stops_with_the_event_id_and_the_error(cluster: Cluster) -> None:
    kind = uid()
    projector, _ = failing_projector(cluster, kind, "boom")
    bad_id = rows(cluster, "SELECT id FROM dbscale_events WHERE type = :t AND payload->>'p' = 'boom'", t=kind)[0][0]
    with pytest.raises(ProjectionError) as info:
        projector.run_once()
    assert info.value.event_id == bad_id and isinstance(info.value.error, ValueError)
    assert f"stopped at event {bad_id}" in str(info.value) and "cannot project this one" in str(info.value)
    assert rows(cluster, f"SELECT payload FROM {kind}") == [("a",), ("b",)]  # before it: applied; after: nothing
    status = projector.status()
    assert status.failed_event == bad_id and "ValueError" in (status.error or "")
    with pytest.raises(ProjectionError):  # and it stays stopped there
        projector.run_once()
    assert rows(cluster, f"SELECT count(*) FROM {kind}") == [(2,)]


def test_dead_letter_option_records_the_event_and_goes_on(cluster: Cluster) -> None:
    kind = uid()
    projector, good = failing_projector(cluster, kind, "boom", on_error="dead_letter")
    assert projector.run_once() >= 4  # the log is shared: other tests' events pass too
    assert sorted(r[0] for r in rows(cluster, f"SELECT payload FROM {kind}")) == good
    dead = rows(cluster, "SELECT payload->>'p', error FROM dbscale_dead_letters WHERE projector = :n", n=kind)
    assert dead == [("boom", "ValueError: cannot project this one")]
    assert cluster.metrics.value("projection_dead_letters_total", projector=kind) == 1


def measure_lag(cluster: Cluster, projector: Projector, kind: str, n: int) -> list[float]:
    committed: dict[int, float] = {}
    lags: list[float] = []

    @projector.after_commit
    def applied(events: Sequence[Event]) -> None:
        now = time.perf_counter()
        lags.extend(now - committed[e.id] for e in events if e.id in committed)

    runner = threading.Thread(target=projector.run, daemon=True)
    runner.start()
    try:
        time.sleep(1.0)  # lease, LISTEN
        for i in range(n):
            with cluster.write() as conn:
                if kind.startswith("quiet"):
                    conn.exec_driver_sql("SET LOCAL session_replication_role = replica")  # no trigger: no NOTIFY
                event_id = cluster.events.append(conn, kind, {"i": i}, aggregate_id=uid()).id
            committed[event_id] = time.perf_counter()
            deadline = time.monotonic() + 5
            while len(lags) <= i:
                assert time.monotonic() < deadline, "event not projected"
                time.sleep(0.001)
    finally:
        projector.stop()
        runner.join(5)
    return lags


def test_notify_wakes_the_projector_p50_lag_under_50ms(cluster: Cluster) -> None:
    kind = uid("lag")
    projector = Projector(kind, cluster, poll_interval=2.0)
    projector.on(kind)(lambda conn, event: None)
    lags = measure_lag(cluster, projector, kind, 30)
    assert statistics.median(lags) < 0.050, sorted(lags)


def test_polling_catches_events_whose_notification_was_lost(cluster: Cluster) -> None:
    kind = uid("quiet")
    projector = Projector(kind, cluster, poll_interval=0.3)
    projector.on(kind)(lambda conn, event: None)
    lags = measure_lag(cluster, projector, kind, 5)
    assert len(lags) == 5 and max(lags) < 1.5


def test_async_append_and_projector(topology_config_path: Path) -> None:
    kind = uid("async")

    async def scenario() -> tuple[int, list[str]]:
        async with AsyncCluster.from_config(topology_config_path) as acl:
            await acl.install()
            async with acl.write() as conn:
                await conn.exec_driver_sql(f"CREATE TABLE {kind} (agg text, version bigint)")
                for i in range(5):
                    await acl.events.append(conn, kind, {"i": i}, aggregate_id=kind, expected_version=i)
            async with acl.write() as conn:
                with pytest.raises(ConcurrencyError):
                    await acl.events.append(conn, kind, {}, aggregate_id=kind, expected_version=2)
            projector = AsyncProjector(kind, acl)

            @projector.on(kind)
            async def handle(conn: AsyncConnection, event: Event) -> None:
                await conn.execute(
                    text(f"INSERT INTO {kind} VALUES (:a, :v)"), {"a": event.aggregate_id, "v": event.version}
                )

            applied = await projector.run_once()
            task = asyncio.create_task(projector.run())
            await asyncio.sleep(0.5)
            async with acl.write() as conn:
                await acl.events.append(conn, kind, {"i": 5}, aggregate_id=kind)
            for _ in range(200):
                if (await projector.status()).lag_events == 0:
                    break
                await asyncio.sleep(0.01)
            projector.stop()
            await asyncio.wait_for(task, 5)
            async with acl.write() as conn:
                result = await conn.execute(text(f"SELECT version FROM {kind} ORDER BY version"))
                versions = [str(v) for v in result.scalars()]
            statuses = {s.name: s for s in await acl.events.projections()}
            assert statuses[kind].applied >= 6 and statuses[kind].lag_events == 0
            return applied, versions

    applied, versions = asyncio.run(scenario())
    assert applied >= 5  # the log is shared with other tests
    assert versions == ["1", "2", "3", "4", "5", "6"]


def test_read_model_on_another_group(cluster: Cluster) -> None:
    kind = uid("remote")
    with cluster.write("shard0") as conn:
        conn.exec_driver_sql(f"CREATE TABLE IF NOT EXISTS {kind} (agg text PRIMARY KEY)")
    with cluster.write() as conn:
        cluster.events.append(conn, kind, {}, aggregate_id=kind)
    projector = Projector(kind, cluster, target="shard0")
    projector.on(kind)(lambda conn, e: conn.execute(text(f"INSERT INTO {kind} VALUES (:a)"), {"a": e.aggregate_id}))
    assert projector.run_once() >= 1
    with cluster.write("shard0") as conn:
        assert conn.execute(text(f"SELECT agg FROM {kind}")).all() == [(kind,)]
        assert conn.execute(text("SELECT last_id > 0 FROM dbscale_projections WHERE name = :n"), {"n": kind}).scalar()


def test_rebuild_while_the_live_projector_runs_and_commands_append(cluster: Cluster) -> None:
    projector, ids = users_fixture(cluster)
    expected = {user: f"n{i}" for i, user in enumerate(ids)}
    errors: list[BaseException] = []
    stop = threading.Event()

    def commands() -> None:
        i = 0
        try:
            while not stop.is_set():
                user = ids[i % 3]
                with cluster.write() as conn:
                    cluster.events.append(conn, "user_updated", {"name": f"v{i}"}, aggregate_id=user)
                expected[user] = f"v{i}"
                i += 1
                time.sleep(0.002)
        except BaseException as exc:
            errors.append(exc)

    def live() -> None:
        try:
            projector.run()
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=commands), threading.Thread(target=live)]
    for t in threads:
        t.start()
    time.sleep(1.0)
    rebuilder = users_projector(cluster)  # a second instance, as `dbscale project rebuild` would be
    rebuilder.rebuild()
    time.sleep(0.5)
    stop.set()
    threads[0].join()
    deadline = time.monotonic() + 10
    while projector.status().lag_events:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    projector.stop()
    threads[1].join(5)
    assert not errors, errors
    got = dict(rows(cluster, "SELECT id, name FROM users_read"))
    assert {u: got[u] for u in ids} == expected
    versions = dict(rows(cluster, "SELECT aggregate_id, max(version) FROM dbscale_events GROUP BY 1"))
    got_versions = dict(rows(cluster, "SELECT id, version FROM users_read"))  # earlier tests' users are in the log too
    assert {u: got_versions[u] for u in ids} == {u: versions[u] for u in ids}
