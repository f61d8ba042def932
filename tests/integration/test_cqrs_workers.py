"""``dbscale project run`` workers: SIGKILLed during a catch-up, and a standby taking over the lease.

The projector is ``tests.integration.cqrs_app:make_tally``: its handler refuses any event that is
not the next version of its aggregate, so a batch applied twice or a skipped event stops it.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from sqlalchemy import text

from dbscale import Cluster

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
DBSCALE = str(Path(sys.executable).with_name("dbscale"))


@pytest.fixture
def cluster(topology_config_path: Path) -> Iterator[Cluster]:
    with Cluster.from_config(topology_config_path) as cluster:
        cluster.install()
        yield cluster


def start_worker(config: Path, name: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [DBSCALE, "project", "run", "tests.integration.cqrs_app:make_tally", "--config", str(config)],
        cwd=ROOT,
        env={**os.environ, "CQRS_TALLY": name},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )


def start_at_head(cluster: Cluster, name: str) -> None:
    """Start projector ``name`` after everything in the log now (the session's log is shared and large)."""
    with cluster.write() as conn:
        conn.execute(
            text(
                "INSERT INTO dbscale_projections (name, last_tx, last_id) "
                "SELECT :n, coalesce(max(tx), '0'), coalesce(max(id), 0) FROM dbscale_events"
            ),
            {"n": name},
        )


def append_tally(cluster: Cluster, name: str, total: int, per_txn: int = 200) -> dict[str, tuple[int, int]]:
    """Append ``total`` events over 100 aggregates; return the fold: aggregate -> (sum, count)."""
    rng = random.Random(7)
    fold: dict[str, tuple[int, int]] = {}
    if total:
        start_at_head(cluster, name)
    for start in range(0, total, per_txn):
        with cluster.write() as conn:
            for _ in range(min(per_txn, total - start)):
                agg, amount = f"{name}-k{rng.randrange(100)}", rng.randrange(1, 1000)
                cluster.events.append(conn, name, {"amount": amount}, aggregate_id=agg)
                s, n = fold.get(agg, (0, 0))
                fold[agg] = (s + amount, n + 1)
    return fold


def applied(cluster: Cluster, name: str) -> int:
    """Events folded into the read model so far (0 before the worker created its table)."""
    with cluster.write() as conn:
        if not conn.execute(text("SELECT to_regclass(:n) IS NOT NULL"), {"n": name}).scalar():
            return 0
        return int(conn.execute(text(f"SELECT coalesce(sum(n), 0) FROM {name}")).scalar_one())


def read_model(cluster: Cluster, name: str) -> dict[str, tuple[int, int]]:
    with cluster.write() as conn:
        return {a: (int(s), int(n)) for a, s, n in conn.execute(text(f"SELECT aggregate_id, total, n FROM {name}"))}


def wait_for(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, what
        time.sleep(0.02)


def stop(worker: subprocess.Popen[bytes]) -> str:
    if worker.poll() is None:
        worker.send_signal(signal.SIGTERM)
    try:
        _, err = worker.communicate(timeout=15)
    except subprocess.TimeoutExpired:
        worker.kill()
        _, err = worker.communicate()
    return err.decode(errors="replace")


def crash_run(cluster: Cluster, config: Path, total: int) -> None:
    name = f"tally{uuid.uuid4().hex[:8]}"
    fold = append_tally(cluster, name, total)
    kills = 0
    for fraction in (0.2, 0.45, 0.7):
        worker = start_worker(config, name)
        try:
            wait_for(
                lambda w=worker, f=fraction: applied(cluster, name) >= f * total or w.poll() is not None,  # type: ignore[misc]
                120,
                "no progress",
            )
            assert worker.poll() is None, stop(worker)
            worker.send_signal(signal.SIGKILL)
            worker.wait(10)
            kills += 1
        finally:
            if worker.poll() is None:
                worker.kill()
    assert kills == 3
    assert applied(cluster, name) < total  # the catch-up was really interrupted
    worker = start_worker(config, name)
    try:
        wait_for(lambda: applied(cluster, name) >= total or worker.poll() is not None, 180, "did not finish")
    finally:
        log = stop(worker)
    assert "Traceback" not in log, log
    assert read_model(cluster, name) == fold
    # and a rebuild from the whole log (the CLI, with its progress bar) gives the same read model
    rebuilt = subprocess.run(
        [DBSCALE, "project", "rebuild", "tests.integration.cqrs_app:make_tally", "--config", str(config)],
        cwd=ROOT,
        env={**os.environ, "CQRS_TALLY": name},
        capture_output=True,
        text=True,
        check=False,
    )
    assert rebuilt.returncode == 0, rebuilt.stderr
    assert f"{name}: rebuilt from" in rebuilt.stdout
    assert read_model(cluster, name) == fold


def test_worker_sigkilled_three_times_during_catch_up(cluster: Cluster, topology_config_path: Path) -> None:
    crash_run(cluster, topology_config_path, 3_000)


@pytest.mark.slow
@pytest.mark.timeout(1200)
def test_worker_sigkilled_three_times_during_50000_event_catch_up(cluster: Cluster, topology_config_path: Path) -> None:
    crash_run(cluster, topology_config_path, 50_000)


def test_standby_worker_takes_over_after_sigkill(cluster: Cluster, topology_config_path: Path) -> None:
    name = f"tally{uuid.uuid4().hex[:8]}"
    fold = append_tally(cluster, name, 50)
    active = start_worker(topology_config_path, name)
    standby: subprocess.Popen[bytes] | None = None
    try:
        wait_for(lambda: applied(cluster, name) >= 50, 30, "the first worker did not project")
        standby = start_worker(topology_config_path, name)
        time.sleep(2.0)  # the standby is up and polling for the lease
        assert standby.poll() is None
        active.send_signal(signal.SIGKILL)
        active.wait(10)
        killed = time.monotonic()
        extra = {f"{name}-late{i}": (i + 1, 1) for i in range(5)}
        with cluster.write() as conn:
            for agg, (amount, _) in extra.items():
                cluster.events.append(conn, name, {"amount": amount}, aggregate_id=agg)
        wait_for(lambda: applied(cluster, name) >= 55, 10, "the standby did not take over")
        took_over = time.monotonic() - killed
    finally:
        if active.poll() is None:
            active.kill()
        log = stop(standby) if standby is not None else ""
    assert took_over < 10.0, took_over  # ~1-3 s on a quiet machine; 7.6 s seen at load average 9 on 2 cores
    assert "lease acquired" in log, log
    assert read_model(cluster, name) == {**fold, **extra}
    shown = subprocess.run(
        [DBSCALE, "project", "status", "--config", str(topology_config_path), "--json"],
        capture_output=True,
        check=True,
        text=True,
    )
    status = {p["name"]: p for p in json.loads(shown.stdout)["projectors"]}[name]
    assert status["applied"] >= 55 and status["error"] is None
