"""Outages end cleanly, on the real topology: a SIGKILLed or stopped primary, a killed PgBouncer,
a wrong password.

Each full-size outage (60 s, 40 s, 20 s) is marked ``slow``; its twin in the default suite runs the
same test with an 8 s outage and ``max_lag`` scaled down below it, so that "reads keep working
while the primary is down" is still tested past the point where they used to stop (max_lag after
the last write).
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import tomli_w
from sqlalchemy import text

from dbscale import AsyncCluster, AuthenticationFailed, Cluster, PrimaryUnavailable
from dbscale.local import LocalTopology

from .helpers import replicated_table

pytestmark = pytest.mark.integration

INTERVAL = 1.0  # health_interval of every cluster here (the default)
WRITE_TIMEOUT = 5.0  # the default; the local PgBouncer's query_wait_timeout is the same 5 s


@dataclass(frozen=True)
class Outage:
    seconds: float
    max_lag: float


SHORT = Outage(8.0, 3.0)


def outages(full: float) -> list[Any]:
    return [
        pytest.param(SHORT, id=f"{SHORT.seconds:.0f}s"),
        pytest.param(Outage(full, 10.0), id=f"{full:.0f}s", marks=pytest.mark.slow),
    ]


@pytest.fixture
def table(topology_config_path: Path) -> Iterator[str]:
    """100 rows ``(id bigserial, w, n)``: w = -1 until a write marks the row."""
    with replicated_table(
        topology_config_path,
        "id bigserial PRIMARY KEY, w int NOT NULL, n int NOT NULL",
        "INSERT INTO {name} (w, n) SELECT -1, g FROM generate_series(1, 100) g",
    ) as name:
        yield name


def cluster_for(path: Path, outage: Outage, **main: Any) -> Cluster:
    settings = {"health_interval": INTERVAL, "max_lag": outage.max_lag, "write_timeout": WRITE_TIMEOUT, **main}
    return Cluster.from_config(path, groups={"main": settings})


def port_of(conn: Any) -> int:
    """The port the write's connection went to (PgBouncer's or the primary's)."""
    return int(conn.connection.driver_connection.info.port)


@dataclass
class Load:
    """Reader and writer threads on one cluster; every outcome is recorded with its time."""

    cluster: Cluster
    table: str
    readers: int = 4
    writers: int = 0
    stop: threading.Event = field(default_factory=threading.Event)
    read_ok: int = 0
    read_failures: list[tuple[float, BaseException]] = field(default_factory=list)
    writes: list[tuple[float, float, int | None, BaseException | None]] = field(default_factory=list)
    acked: list[tuple[int, int]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)
    threads: list[threading.Thread] = field(default_factory=list)

    def __enter__(self) -> Load:
        self.threads = [threading.Thread(target=self._read) for _ in range(self.readers)]
        self.threads += [threading.Thread(target=self._write, args=(w,)) for w in range(self.writers)]
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(60)

    def _read(self) -> None:
        while not self.stop.is_set():
            try:
                with self.cluster.read() as conn:
                    assert conn.execute(text(f"SELECT count(*) FROM {self.table} WHERE w = -1")).scalar_one() == 100
                with self.lock:
                    self.read_ok += 1
            except BaseException as exc:
                with self.lock:
                    self.read_failures.append((time.monotonic(), exc))
            time.sleep(0.005)

    def _write(self, w: int) -> None:
        n = 0
        while not self.stop.is_set():
            n += 1
            started = time.monotonic()
            port: int | None = None
            error: BaseException | None = None
            try:
                with self.cluster.write() as conn:
                    conn.execute(text(f"INSERT INTO {self.table} (w, n) VALUES (:w, :n)"), {"w": w, "n": n})
                    port = port_of(conn)
                with self.lock:
                    self.acked.append((w, n))
            except PrimaryUnavailable as exc:
                error = exc
            except BaseException as exc:  # anything else is a bug: recorded, and the test fails on it
                error = exc
            with self.lock:
                self.writes.append((started, time.monotonic(), port, error))
            time.sleep(0.02)

    def first_write_after(self, moment: float, port: int | None = None) -> float:
        """Seconds from ``moment`` to the first commit that started after it (through ``port`` if given)."""
        with self.lock:
            ends = [e for s, e, p, err in self.writes if err is None and s >= moment and (port is None or p == port)]
        assert ends, "no write succeeded"
        return min(ends) - moment


def wait_for(predicate: Callable[[], bool], timeout: float, what: str) -> float:
    started = time.monotonic()
    while not predicate():
        assert time.monotonic() - started < timeout, what
        time.sleep(0.01)
    return time.monotonic() - started


def status_json(config_path: Path, tmp_path: Path, max_lag: float) -> dict[str, dict[str, Any]]:
    """`dbscale status --json` in a new process, with the test's max_lag."""
    import tomllib

    doc = tomllib.loads(config_path.read_text())
    doc["groups"]["main"]["max_lag"] = f"{max_lag}s"
    path = tmp_path / "dbscale.toml"
    path.write_text(tomli_w.dumps(doc))
    out = subprocess.run(
        [sys.executable, "-m", "dbscale.cli", "status", "--json", "--config", str(path)],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert out.returncode in (0, 1), out.stderr  # 1: degraded (a node is down), the JSON is printed all the same
    return {n["name"]: n for n in json.loads(out.stdout)["nodes"]}


@pytest.mark.parametrize("outage", outages(60.0))
def test_primary_sigkilled_reads_never_fail_and_writes_resume_through_pgbouncer(
    restore_topology: LocalTopology, topology_config_path: Path, table: str, tmp_path: Path, outage: Outage
) -> None:
    topo = restore_topology
    bouncer_port = topo.node("pgbouncer-main").port
    with cluster_for(topology_config_path, outage) as cluster, Load(cluster, table, readers=4) as load:
        cluster.start()
        wait_for(lambda: load.read_ok > 50, 30, "reads never started")
        killed_at = time.monotonic()
        topo.kill("main-primary")
        # well past max_lag after the last write (the point where reads used to stop)
        time.sleep(outage.seconds / 2)
        # a new Cluster, started without a primary
        with cluster_for(topology_config_path, outage) as fresh, fresh.read() as conn:
            assert conn.execute(text(f"SELECT count(*) FROM {table}")).scalar_one() >= 100
            assert conn.node in ("main-replica1", "main-replica2")
        nodes = status_json(topology_config_path, tmp_path, outage.max_lag)
        assert [nodes[r]["router"] for r in ("main-replica1", "main-replica2")] == ["reads", "reads"]
        assert nodes["main-primary"]["router"].startswith("banned")
        durations = []
        for _ in range(2):
            started = time.monotonic()
            with pytest.raises(PrimaryUnavailable, match="the primary is down") as info, cluster.write() as conn:
                conn.execute(text(f"INSERT INTO {table} (w, n) VALUES (-2, 0)"))
            durations.append(time.monotonic() - started)
            assert "\n" not in str(info.value)
        assert max(durations) <= WRITE_TIMEOUT + 1.0
        time.sleep(max(0.0, killed_at + outage.seconds - time.monotonic()))
        topo.start("main-primary")
        restarted = time.monotonic()
        while True:  # writes through PgBouncer succeed within 3 s of the restart
            try:
                with cluster.write() as conn:
                    conn.execute(text(f"INSERT INTO {table} (w, n) VALUES (-3, 0)"))
                    port = port_of(conn)
                break
            except PrimaryUnavailable:
                assert time.monotonic() - restarted < 3.0, "no write within 3 s of the restart"
        back_after = time.monotonic() - restarted
        time.sleep(1.0)
    print(f"kill {outage.seconds:.0f}s: write errors {durations}, first write {back_after:.2f}s after restart")
    assert back_after < 3.0 and port == bouncer_port
    assert load.read_failures == []
    assert load.read_ok > 100


@pytest.mark.parametrize("outage", outages(40.0))
def test_primary_stopped_under_writers_writes_are_bounded_and_resume_reads_never_fail(
    restore_topology: LocalTopology, topology_config_path: Path, table: str, outage: Outage
) -> None:
    topo = restore_topology
    with cluster_for(topology_config_path, outage) as cluster, Load(cluster, table, readers=4, writers=4) as load:
        cluster.start()
        wait_for(lambda: len(load.acked) > 40 and load.read_ok > 40, 30, "load never started")
        stopped_at = time.monotonic()
        topo.stop("main-primary")
        time.sleep(max(0.0, stopped_at + outage.seconds - time.monotonic()))
        topo.start("main-primary")
        restarted = time.monotonic()
        wait_for(lambda: len([w for w in load.writes if w[0] >= restarted and w[3] is None]) >= 8, 30, "no writes")
        time.sleep(1.0)
    longest = max(end - start for start, end, _, _ in load.writes)
    back = load.first_write_after(restarted)
    errors = [err for _, _, _, err in load.writes if err is not None]
    print(
        f"stop {outage.seconds:.0f}s: {len(load.writes)} writes, {len(errors)} refused, longest call {longest:.2f}s, "
        f"first write {back:.2f}s after restart, {load.read_ok} reads"
    )
    assert all(isinstance(e, PrimaryUnavailable) for e in errors)
    assert longest <= WRITE_TIMEOUT + 1.0
    assert back <= 2 * INTERVAL
    assert load.read_failures == []
    with cluster_for(topology_config_path, outage) as check, check.write() as conn:  # nothing acknowledged was lost
        rows = set(conn.execute(text(f"SELECT w, n FROM {table} WHERE w >= 0")).tuples())
    assert set(load.acked) <= rows


@pytest.mark.parametrize("outage", outages(20.0))
def test_pgbouncer_killed_never_bans_the_primary_nor_fails_reads(
    restore_topology: LocalTopology, topology_config_path: Path, table: str, outage: Outage
) -> None:
    topo = restore_topology
    bouncer_port = topo.node("pgbouncer-main").port
    with cluster_for(topology_config_path, outage) as cluster, Load(cluster, table, readers=4, writers=4) as load:
        cluster.start()
        wait_for(lambda: len(load.acked) > 40 and load.read_ok > 40, 30, "load never started")
        killed_at = time.monotonic()
        topo.kill("pgbouncer-main")
        time.sleep(max(0.0, killed_at + outage.seconds - time.monotonic()))
        assert cluster.router().state.writer == "main-primary"
        topo.start("pgbouncer-main")
        returned = time.monotonic()
        wait_for(
            lambda: len([w for w in load.writes if w[0] >= returned and w[2] == bouncer_port]) >= 4, 30, "no writes"
        )
        time.sleep(0.5)
    metrics = cluster.metrics
    during = [w for w in load.writes if killed_at + 1.0 <= w[0] <= returned]
    back = load.first_write_after(returned, port=bouncer_port)
    print(
        f"pgbouncer {outage.seconds:.0f}s: {len(during)} writes during the outage "
        f"({sum(w[3] is None for w in during)} ok), back through PgBouncer {back:.2f}s after it returned"
    )
    assert metrics.value("bans_total", group="main", node="main-primary") == 0
    assert metrics.value("bans_total", group="main", node="pgbouncer-main") >= 1
    assert load.read_failures == []
    assert back <= 2 * INTERVAL
    assert during and all(err is None for _, _, _, err in during)  # meanwhile, straight to the primary


def wrong_password(config_path: Path) -> dict[str, Any]:
    import tomllib

    main = tomllib.loads(config_path.read_text())["groups"]["main"]
    password = main["primary"].split("@")[0].rsplit(":", 1)[1]

    def swap(url: str) -> str:
        return url.replace(f":{password}@", ":not-the-password@")

    return {
        "primary": swap(main["primary"]),
        "replicas": [swap(u) for u in main["replicas"]],
        "pgbouncer": swap(main["pgbouncer"]),
        "_password": password,
    }


def test_wrong_password_fails_fast_naming_the_cause(topology_config_path: Path) -> None:
    main = wrong_password(topology_config_path)
    password = main.pop("_password")
    for action in ("write", "read"):
        with Cluster.from_config(topology_config_path, groups={"main": main}) as cluster:
            started = time.monotonic()
            with pytest.raises(AuthenticationFailed) as info, getattr(cluster, action)() as conn:
                conn.execute(text("SELECT 1"))
            took = time.monotonic() - started
            message = str(info.value)
            assert took < 1.0, f"{action} took {took:.2f}s"
            assert "password authentication failed" in message and "main-" in message
            assert password not in message and "not-the-password" not in message and "\n" not in message
            assert cluster.metrics.value("bans_total", group="main", node="main-primary") == 0

    async def run() -> list[float]:
        took = []
        for action in ("write", "read"):
            async with AsyncCluster.from_config(topology_config_path, groups={"main": main}) as acl:
                started = time.monotonic()
                with pytest.raises(AuthenticationFailed, match="password authentication failed"):
                    async with getattr(acl, action)() as conn:
                        await conn.execute(text("SELECT 1"))
                took.append(time.monotonic() - started)
        return took

    assert max(asyncio.run(run())) < 1.0
