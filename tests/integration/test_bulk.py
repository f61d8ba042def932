"""Bulk loading on the real topology: bad rows named, resume exact, skip to a reject file, SIGKILL, shards.

The CLI runs as a subprocess (as a user runs it), so a killed loader is a real killed process.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import logging
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from sqlalchemy import text

import dbscale
from dbscale import AsyncCluster, Cluster
from dbscale.bulk import BulkLoader, bulk_load, bulk_load_async
from dbscale.cli_load import load_id
from dbscale.sharding.placement import HashMod

pytestmark = pytest.mark.integration

DBSCALE = str(Path(sys.executable).with_name("dbscale"))
COLUMNS = "id bigint PRIMARY KEY, name text NOT NULL, qty integer NOT NULL, price numeric(10,2), day date"


def csv_line(n: int, qty: object = None) -> str:
    return f"{n},item {n},{n % 1000 if qty is None else qty},{n % 97}.50,2024-01-{n % 28 + 1:02d}\n"


def write_csv(path: Path, rows: int, bad: dict[int, str] | None = None, header: bool = True) -> Path:
    """``rows`` data rows; ``bad`` maps a row number to the whole (bad) line for it."""
    bad = bad or {}
    with path.open("w") as f:
        if header:
            f.write("id,name,qty,price,day\n")
        for n in range(1, rows + 1):
            f.write(bad.get(n, csv_line(n)))
    return path


@pytest.fixture
def cluster(topology_config_path: Path) -> Iterator[Cluster]:
    with Cluster.from_config(topology_config_path) as c:
        yield c


@pytest.fixture
def target(cluster: Cluster) -> Iterator[str]:
    """A fresh table on every group (the shard groups too); dropped after."""
    name = f"bulk_{uuid.uuid4().hex[:8]}"
    for group in cluster.config.groups:
        with cluster.write(group) as conn:
            conn.execute(text(f"CREATE TABLE {name} ({COLUMNS})"))
    yield name
    for group in cluster.config.groups:
        with cluster.write(group) as conn:
            conn.execute(text(f"DROP TABLE IF EXISTS {name}"))


@contextlib.contextmanager
def extra_table(cluster: Cluster, name: str, columns: str = COLUMNS) -> Iterator[str]:
    """Another table on the default group (``name`` as SQL text, quoted if need be); dropped after."""
    with cluster.write() as conn:
        conn.execute(text(f"CREATE TABLE {name} ({columns})"))
    try:
        yield name
    finally:
        with cluster.write() as conn:
            conn.execute(text(f"DROP TABLE IF EXISTS {name}"))


def counts(cluster: Cluster, table: str, group: str | None = None) -> tuple[int, int]:
    """(rows, distinct ids) of ``table`` on ``group``'s primary."""
    with cluster.write(group) as conn:
        row = conn.execute(text(f"SELECT count(*), count(DISTINCT id) FROM {table}")).one()
    return int(row[0]), int(row[1])


def load_cli(config: Path, *args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [DBSCALE, "load", *map(str, args), "--config", str(config), "--no-progress"],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )


def bad_row_then_resume(config: Path, cluster: Cluster, table: str, tmp_path: Path, rows: int, batch: int) -> None:
    """The acceptance scenario: the bad row is the first of a batch; fix the file; --resume finishes exactly."""
    bad_at = rows // 2 + 1
    data = write_csv(tmp_path / "in.csv", rows, {bad_at: f"{bad_at},oops,not-a-number,1.00,2024-01-01\n"})
    first = load_cli(config, data, "--table", table, "--header", "--batch-rows", batch)
    assert first.returncode == 1, first.stderr
    assert f"row {bad_at}, column 'qty' (value 'not-a-number')" in first.stderr
    assert f"line {bad_at + 1} of in.csv" in first.stderr
    assert counts(cluster, table) == (rows // 2, rows // 2)

    write_csv(data, rows)  # fixed
    second = load_cli(config, data, "--table", table, "--header", "--batch-rows", batch, "--resume")
    assert second.returncode == 0, second.stderr
    assert f"skipped {rows // 2:,} rows" in second.stderr
    assert counts(cluster, table) == (rows, rows)


def test_a_bad_row_is_named_the_rows_before_it_are_committed_and_resume_finishes_exactly(
    topology_config_path: Path, cluster: Cluster, target: str, tmp_path: Path
) -> None:
    bad_row_then_resume(topology_config_path, cluster, target, tmp_path, 50_000, 5_000)


@pytest.mark.slow
def test_a_bad_row_at_500001_of_1m_then_resume_gives_exactly_1m(
    topology_config_path: Path, cluster: Cluster, target: str, tmp_path: Path
) -> None:
    bad_row_then_resume(topology_config_path, cluster, target, tmp_path, 1_000_000, 10_000)


def test_skip_sends_three_bad_rows_to_the_reject_file_and_loads_the_rest(
    topology_config_path: Path, cluster: Cluster, target: str, tmp_path: Path
) -> None:
    bad = {
        1_234: "1234,wrong type,12x,1.00,2024-01-01\n",  # not an integer
        5_000: "5000,no qty,,1.00,2024-01-01\n",  # qty NULL: NOT NULL violated
        7_777: "7777,too,many,1.00,2024-01-01,extra\n",  # wrong column count
    }
    data = write_csv(tmp_path / "in.csv", 10_000, bad)
    rejects = tmp_path / "rejects.jsonl"
    result = load_cli(
        topology_config_path, data, "--table", target, "--header", "--batch-rows", 1_000,
        "--on-error", "skip", "--reject-file", rejects,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "rejected 3 rows" in result.stderr
    assert counts(cluster, target) == (9_997, 9_997)
    lines = [orjson.loads(line) for line in rejects.read_bytes().splitlines()]
    records = {r["row"]: r for r in lines}  # in the order the lanes found them: each names its input row
    assert len(lines) == 3 and sorted(records) == [1_234, 5_000, 7_777]
    assert records[1_234]["column"] == "qty" and "integer" in records[1_234]["reason"]
    assert records[5_000]["column"] == "qty" and "null" in records[5_000]["reason"]
    assert "extra data" in records[7_777]["reason"]
    assert records[7_777]["data"] == bad[7_777].strip()


@pytest.mark.parametrize("how", [signal.SIGKILL, signal.SIGINT], ids=["sigkill", "ctrl-c"])
def test_a_loader_killed_mid_load_then_resumed_loads_exactly_the_input(
    topology_config_path: Path, cluster: Cluster, target: str, tmp_path: Path, how: signal.Signals
) -> None:
    """SIGKILL (a crash) or Ctrl-C mid-load, then ``--resume``: exactly the input. Ctrl-C exits 130 saying how
    many rows this run committed and that ``--resume`` continues after them."""
    rows = 300_000
    data = write_csv(tmp_path / "big.csv", rows, header=False)
    args = [
        DBSCALE,
        "load",
        str(data),
        "--table",
        target,
        "--batch-rows",
        "2000",
        "--config",
        str(topology_config_path),
    ]
    loader = subprocess.Popen([*args, "--no-progress"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    position = 0
    deadline = time.monotonic() + 120
    try:
        while position == 0 and time.monotonic() < deadline and loader.poll() is None:
            time.sleep(0.01)
            with cluster.write() as conn:
                if conn.scalar(text("SELECT to_regclass('dbscale_bulk_loads')")) is None:  # the loader makes it
                    continue
                found = conn.execute(
                    text("SELECT max(position) FROM dbscale_bulk_loads WHERE starts_with(load_id, :id)"),
                    {"id": load_id(target, data)},
                ).scalar()
            position = int(found or 0)
    finally:
        loader.send_signal(how)
        _, said = loader.communicate(timeout=60)
    assert 0 < position < rows, f"the loader was not caught mid-load (position {position})"
    loaded, distinct = counts(cluster, target)
    assert loaded == distinct and loaded < rows
    if how == signal.SIGINT:
        assert loader.returncode == 130, said
        reported = int(said.split("interrupted after ")[1].split(" rows")[0].replace(",", ""))
        assert 0 < reported <= loaded and "--resume" in said, said

    resumed = load_cli(topology_config_path, data, "--table", target, "--batch-rows", 2000, "--resume")
    assert resumed.returncode == 0, resumed.stderr
    assert counts(cluster, target) == (rows, rows)


@pytest.mark.parametrize("node", ["pgbouncer-main", "main-primary"])
def test_the_endpoint_killed_mid_load_then_resumed_loads_exactly_the_input(
    topology_config_path: Path, restore_topology: Any, target: str, tmp_path: Path, node: str
) -> None:
    """The node behind ``dbscale load`` dies mid-load (SIGKILL: PgBouncer, which its lanes write through, or
    the primary itself, COMMITs in flight): the load stops with an error saying what this run committed;
    once the node is back, ``--resume`` loads exactly the rest — no batch twice, none missing."""
    import psycopg

    rows = 200_000
    data = write_csv(tmp_path / "big.csv", rows, header=False)
    primary = restore_topology.url("main-primary")  # counted on the primary itself, not through the dying path

    def committed() -> int:
        with psycopg.connect(primary, connect_timeout=5) as conn:
            return int((conn.execute(f"SELECT count(*) FROM {target}").fetchone() or [0])[0])

    common = ["--table", target, "--batch-rows", "2000", "--parallel", "2", "--resume"]
    loader = subprocess.Popen(
        [DBSCALE, "load", str(data), *common, "--config", str(topology_config_path), "--no-progress"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 120
    try:
        while committed() == 0 and time.monotonic() < deadline and loader.poll() is None:
            time.sleep(0.01)
        restore_topology.kill(node)
        _, said = loader.communicate(timeout=120)
    finally:
        if loader.poll() is None:
            loader.kill()
    assert loader.returncode == 1, said
    assert "rows committed in this run" in said or "rows were committed in this run" in said, said
    restore_topology.up()
    before = committed()
    assert 0 < before < rows, before
    resumed = load_cli(topology_config_path, data, *common)
    assert resumed.returncode == 0, resumed.stderr
    with psycopg.connect(primary) as conn:
        assert conn.execute(f"SELECT count(*), count(DISTINCT id) FROM {target}").fetchone() == (rows, rows)


def test_wrong_credentials_are_said_at_once_not_retried(
    topology_config_path: Path, target: str, tmp_path: Path, local_topology: Any
) -> None:
    """A password the server refuses is an error at once (as ``cluster.write()`` raises AuthenticationFailed),
    not a wait of ``write_timeout`` for a writer that will never accept it."""
    config = tmp_path / "wrong.toml"
    config.write_text(topology_config_path.read_text().replace(local_topology.password, "not-the-password"))
    data = write_csv(tmp_path / "small.csv", 10, header=False)
    started = time.monotonic()
    said = load_cli(config, data, "--table", target)
    assert said.returncode == 1, said.stderr
    assert "refused the connection" in said.stderr and "retrying will not help" in said.stderr, said.stderr
    assert "Traceback" not in said.stderr
    assert time.monotonic() - started < 4.0  # write_timeout is 5 s


def test_library_loads_tuples_and_dicts_binary_and_names_a_bad_python_value(cluster: Cluster, target: str) -> None:
    day = datetime.date(2024, 5, 1)
    result = bulk_load(cluster, target, ((n, f"n{n}", n, None, day) for n in range(1, 2_001)), progress=False)
    assert (result.loaded, result.batches) == (2_000, 1)
    more = [{"id": n, "name": "d", "qty": 1, "price": None, "day": None} for n in range(2_001, 2_101)]
    assert bulk_load(cluster, target, more, batch_rows=30, progress=False).batches == 4
    with pytest.raises(dbscale.BadRowError) as caught:
        bulk_load(cluster, target, [(3_000, "x", 1, None, None), (3_001, "y", "many", None, None)], progress=False)
    assert (caught.value.row, caught.value.column, caught.value.value) == (2, "qty", "many")
    assert counts(cluster, target) == (2_101, 2_101)  # the row before the bad one is committed


def test_parallel_lanes_commit_nothing_after_a_bad_row_and_resume_exactly(cluster: Cluster, target: str) -> None:
    """Lane 0 holds the bad row (first of chunk 3); lane 1's later chunk 4 runs beside it but must not commit."""
    rows = [(n, "p", "bad" if n == 2_001 else n, None, None) for n in range(1, 4_001)]
    with pytest.raises(dbscale.BadRowError) as caught:
        bulk_load(cluster, target, rows, batch_rows=1_000, parallel=2, resume="lanes", restart=True, progress=False)
    assert (caught.value.row, caught.value.column) == (2_001, "qty")
    assert counts(cluster, target) == (2_000, 2_000)
    fixed = [(n, "p", n, None, None) for n in range(1, 4_001)]
    again = bulk_load(cluster, target, fixed, batch_rows=1_000, parallel=2, resume="lanes", progress=False)
    assert (again.loaded, again.skipped) == (2_000, 2_000)
    assert counts(cluster, target) == (4_000, 4_000)


def test_free_running_lanes_stop_at_a_bad_row_mid_block_and_resume_exactly(
    topology_config_path: Path, cluster: Cluster, target: str, tmp_path: Path
) -> None:
    """Three lanes, each taking its next block as soon as its last one is committed: the bad row in the
    middle of block 6 (lane 2) is named, every row before it is committed and none after it, whatever
    the other lanes had under way; --resume then loads exactly the rest."""
    rows, bad_at = 12_000, 5_501
    data = write_csv(tmp_path / "in.csv", rows, {bad_at: f"{bad_at},oops,NaN-ish,1.00,2024-01-01\n"})
    args = ("--table", target, "--header", "--batch-rows", 1_000, "--parallel", 3)
    first = load_cli(topology_config_path, data, *args)
    assert first.returncode == 1, first.stderr
    assert f"row {bad_at}, column 'qty'" in first.stderr and f"line {bad_at + 1} of in.csv" in first.stderr
    assert counts(cluster, target) == (bad_at - 1, bad_at - 1)
    write_csv(data, rows)
    second = load_cli(topology_config_path, data, *args, "--resume")
    assert second.returncode == 0, second.stderr
    assert counts(cluster, target) == (rows, rows)


def test_free_running_lanes_commit_what_was_read_before_an_input_error(cluster: Cluster, target: str) -> None:
    """The input fails while block 4 is read: blocks 1-3 (both lanes) are committed, then the error is raised."""

    def rows() -> Iterator[tuple[object, ...]]:
        for n in range(1, 10_001):
            if n == 3_500:
                raise OSError("input unreadable at row 3500")
            yield (n, "r", n, None, None)

    with pytest.raises(OSError, match="row 3500"):
        bulk_load(cluster, target, rows(), batch_rows=1_000, parallel=2, resume="input", restart=True, progress=False)
    assert counts(cluster, target) == (3_000, 3_000)


def test_free_running_async_lanes_skip_bad_rows_and_stop_at_one(
    topology_config_path: Path, target: str, cluster: Cluster, tmp_path: Path
) -> None:
    """The asyncio loader with three lanes: skip sets two bad rows aside and loads the rest; stop names the first
    bad row with nothing after it committed."""
    rows = [(n, "a", "bad" if n in (1_234, 4_321) else n, None, None) for n in range(1, 6_001)]

    async def main() -> tuple[int, int, int]:
        async with AsyncCluster.from_config(topology_config_path) as acl:
            skipped = await bulk_load_async(
                acl,
                target,
                rows,
                batch_rows=500,
                parallel=3,
                on_error="skip",
                reject_file=tmp_path / "r.jsonl",
                progress=False,
            )
            with pytest.raises(dbscale.BadRowError) as caught:
                await bulk_load_async(
                    acl, f"{target}_b", rows, batch_rows=500, parallel=3, resume="s", restart=True, progress=False
                )
            return skipped.loaded, skipped.rejected, caught.value.row

    with extra_table(cluster, f"{target}_b"):
        assert asyncio.run(main()) == (5_998, 2, 1_234)
        assert counts(cluster, target) == (5_998, 5_998)
        assert counts(cluster, f"{target}_b") == (1_233, 1_233)
        assert len((tmp_path / "r.jsonl").read_text().splitlines()) == 2


def test_the_async_twin_loads_and_resumes(topology_config_path: Path, target: str, cluster: Cluster) -> None:
    async def main() -> tuple[int, int]:
        async with AsyncCluster.from_config(topology_config_path) as acl:
            rows = [(n, "a", n, None, None) for n in range(1, 1_001)]
            first = await bulk_load_async(acl, target, rows[:600], progress=False, resume="a1", restart=True)
            again = await bulk_load_async(acl, target, rows, progress=False, resume="a1", batch_rows=100)
            return first.loaded, again.loaded

    assert asyncio.run(main()) == (600, 400)
    assert counts(cluster, target) == (1_000, 1_000)


def test_a_type_without_binary_dumper_goes_through_text_copy(cluster: Cluster) -> None:
    name = f"bulk_{uuid.uuid4().hex[:8]}"
    with cluster.write() as conn:
        conn.execute(text(f"CREATE TYPE {name}_mood AS ENUM ('happy', 'sad')"))
        conn.execute(text(f"CREATE TABLE {name} (id int, mood {name}_mood)"))
    try:
        result = bulk_load(cluster, name, [(1, "happy"), (2, "sad")], progress=False)
        assert result.loaded == 2
        with cluster.write() as conn:
            assert conn.execute(text(f"SELECT mood::text FROM {name} ORDER BY id")).scalars().all() == ["happy", "sad"]
    finally:
        with cluster.write() as conn:
            conn.execute(text(f"DROP TABLE {name}; DROP TYPE {name}_mood"))


def test_jsonl_through_the_cli(topology_config_path: Path, cluster: Cluster, target: str, tmp_path: Path) -> None:
    data = tmp_path / "in.jsonl"
    data.write_bytes(
        b"".join(
            orjson.dumps({"id": n, "name": f"j{n}", "qty": n, "price": "1.25", "day": "2024-02-03"}) + b"\n"
            for n in range(1, 501)
        )
    )
    result = load_cli(topology_config_path, data, "--table", target, "--batch-rows", 100)
    assert result.returncode == 0, result.stderr
    assert "loaded 500 rows" in result.stderr
    with cluster.write() as conn:
        assert conn.execute(text(f"SELECT day FROM {target} WHERE id = 7")).scalar() == datetime.date(2024, 2, 3)


def test_the_progress_bar_is_drawn_on_a_terminal_or_when_asked(
    topology_config_path: Path, cluster: Cluster, target: str, tmp_path: Path
) -> None:
    data = write_csv(tmp_path / "in.csv", 300)

    def load(*flags: str) -> str:
        with cluster.write() as conn:
            conn.execute(text(f"TRUNCATE {target}"))
        done = subprocess.run(
            [DBSCALE, "load", str(data), "--table", target, "--header", "--config", str(topology_config_path), *flags],
            capture_output=True,  # stderr is a pipe, not a terminal
            text=True,
            timeout=120,
            check=True,
        )
        assert "loaded 300 rows" in done.stderr
        return done.stderr

    assert "rows/s" not in load().split("loaded 300 rows")[0]  # a pipe: no bar by default
    assert "rows/s" in load("--progress").split("loaded 300 rows")[0]  # asked for: drawn anyway

    import pty  # stderr a terminal: drawn by default

    with cluster.write() as conn:
        conn.execute(text(f"TRUNCATE {target}"))
    leader, follower = pty.openpty()
    shown = b""
    try:
        loader = subprocess.Popen(
            [DBSCALE, "load", str(data), "--table", target, "--header", "--config", str(topology_config_path)],
            stdout=subprocess.DEVNULL,
            stderr=follower,
        )
        os.close(follower)
        with contextlib.suppress(OSError):  # EIO once the loader exited and all it wrote is read
            while chunk := os.read(leader, 65536):
                shown += chunk
        assert loader.wait(timeout=120) == 0, shown
    finally:
        os.close(leader)
    assert b"rows/s" in shown.split(b"loaded 300 rows")[0] and b"loaded 300 rows" in shown


def test_rows_routed_through_the_group_seam_land_on_their_shard_groups(cluster: Cluster, target: str) -> None:
    """The seam sharded loads use (``group_for``), driven by a hand-made placement over the two shard groups."""
    placement = HashMod(["shard0", "shard1"])
    rows = [(n, "s", n, None, None) for n in range(1, 5_001)]
    loader = BulkLoader(
        cluster, target, batch_rows=1_000, progress=False, group_for=lambda row: placement.node_for(row.values[0])
    )
    result = loader.run(rows)
    assert result.loaded == 5_000 and set(result.per_group) == {"shard0", "shard1"}
    for group in ("shard0", "shard1"):
        with cluster.write(group) as conn:
            ids = conn.execute(text(f"SELECT id FROM {target}")).scalars().all()
        assert ids and all(placement.node_for(i) == group for i in ids)
        assert len(ids) == result.per_group[group]
    assert counts(cluster, target, "main") == (0, 0)


def test_a_sharded_table_loads_every_row_onto_the_shard_cluster_shard_for_names(cluster: Cluster, target: str) -> None:
    rows = [(n, "s", n, None, None) for n in range(1, 5_001)]
    result = bulk_load(cluster, target, rows, shard_key="id", batch_rows=1_000, progress=False)  # default scheme
    assert result.loaded == 5_000
    for group in result.per_group:
        with cluster.write(group) as conn:
            ids = conn.execute(text(f"SELECT id FROM {target}")).scalars().all()
        assert ids and all(cluster.shard_for(i) == group for i in ids)
    assert sum(result.per_group.values()) == 5_000
    assert set(result.per_group) == {"shard0", "shard1"}  # the session topology's shard groups


def test_the_loader_refuses_what_cannot_work(cluster: Cluster, target: str) -> None:
    with pytest.raises(dbscale.BulkLoadError, match="does not exist"):
        bulk_load(cluster, "no_such_table", [], progress=False)
    with pytest.raises(dbscale.BulkLoadError, match="has no column 'nope'"):
        bulk_load(cluster, target, [], columns=["id", "nope"], progress=False)
    with pytest.raises(dbscale.BulkLoadError, match="on_error"):
        bulk_load(cluster, target, [], on_error="ignore", progress=False)  # type: ignore[arg-type]
    rows = [(1, "a", 1, None, None), (2, "b", None, None, None)]  # row 2 breaks NOT NULL
    with pytest.raises(dbscale.BulkLoadError, match="'/no/such/dir', which does not exist"):  # before any row
        bulk_load(cluster, target, rows, on_error="skip", reject_file="/no/such/dir/r.jsonl", progress=False)
    assert counts(cluster, target) == (0, 0)
    with pytest.raises(dbscale.BulkLoadError, match=r"cannot write row 2 to the reject file '/dev/full' \(No space"):
        bulk_load(cluster, target, rows, on_error="skip", reject_file="/dev/full", progress=False)


def test_a_resume_id_recorded_for_another_table_is_refused(cluster: Cluster, target: str) -> None:
    """Resuming from another table's record would skip rows this table never got: refused, naming both."""
    with extra_table(cluster, f"{target}_other") as other:
        rows = [(n, "a", n, None, None) for n in range(1, 101)]
        load_id = f"shared-{target}"
        assert bulk_load(cluster, target, rows, resume=load_id, restart=True, progress=False).loaded == 100
        with pytest.raises(dbscale.BulkLoadError, match=f"a load into '{target}', not '{other}'.*resume id of its own"):
            bulk_load(cluster, other, rows, resume=load_id, progress=False)
        assert counts(cluster, other) == (0, 0)
        assert bulk_load(cluster, other, rows, resume=load_id, restart=True, progress=False).loaded == 100


def test_the_cli_routes_a_sharded_load_to_the_shard_cluster_shard_for_names(
    topology_config_path: Path, cluster: Cluster, target: str, tmp_path: Path
) -> None:
    """``dbscale load --shard-key`` (psycopg straight to each group's write endpoint, no cluster): same placement."""
    data = write_csv(tmp_path / "in.csv", 3_000, header=True)
    result = load_cli(
        topology_config_path, data, "--table", target, "--header", "--shard-key", "id", "--batch-rows", 500
    )
    assert result.returncode == 0, result.stderr
    assert "loaded 3,000 rows" in result.stderr
    total = 0
    for group in ("shard0", "shard1"):
        with cluster.write(group) as conn:
            ids = conn.execute(text(f"SELECT id FROM {target}")).scalars().all()
        assert ids and all(cluster.shard_for(i) == group for i in ids)
        total += len(ids)
    assert total == 3_000 and counts(cluster, target, "main") == (0, 0)


def test_a_successful_load_ends_its_process_without_the_teardown(
    topology_config_path: Path, cluster: Cluster, target: str, tmp_path: Path
) -> None:
    """``dbscale load`` that succeeded skips the interpreter's teardown (dbscale_launcher.QUICK_EXIT): exit
    handlers still run and every line is out; a failed load exits the usual way, with its status. The
    garbage collector, paused by the launcher for the start-up imports, is back on for the load, with
    what those imports made frozen."""
    data = write_csv(tmp_path / "in.csv", 1_000)
    script = (
        "import atexit, gc, sys\n"
        "atexit.register(lambda: print(f'collector on {gc.isenabled()}, frozen {gc.get_freeze_count() > 0}', file=sys.stderr))\n"
        "class Finalized:\n"
        "    def __del__(self, err=sys.stderr): print('finalized', file=err)  # sys may be gone by then\n"
        "keep = Finalized()  # a module global: only the interpreter's teardown finalizes it\n"
        "atexit.register(lambda: print('exit handler', file=sys.stderr))\n"
        "from dbscale_launcher import main\n"
        "sys.argv = ['dbscale', *sys.argv[1:]]\n"
        "main()\n"
    )

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        command = [sys.executable, "-c", script, *args, "--config", str(topology_config_path), "--no-progress"]
        return subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)

    done = run("load", str(data), "--table", target, "--header")
    assert done.returncode == 0, done.stderr
    assert "loaded 1,000 rows" in done.stderr and "exit handler" in done.stderr
    assert "finalized" not in done.stderr  # no teardown
    assert "collector on True, frozen True" in done.stderr
    assert counts(cluster, target) == (1_000, 1_000)

    failed = run("load", str(data), "--table", target, "--header")  # the same ids again: a key violation
    assert failed.returncode == 1, failed.stderr
    assert "duplicate key" in failed.stderr and "exit handler" in failed.stderr
    assert "finalized" in failed.stderr  # the usual exit
    assert counts(cluster, target) == (1_000, 1_000)


def test_direct_lanes_open_one_connection_each_blocking_and_asyncio(
    topology_config_path: Path, target: str, cluster: Cluster
) -> None:
    """What ``dbscale load`` loads through (``Primaries``, and its asyncio twin): a lane's connection is opened
    once however many callers ask at the same moment (the lanes open theirs as they start, while the reader
    cuts the first batch), and every lane loads on its own server backend."""
    from concurrent.futures import ThreadPoolExecutor

    from dbscale.bulk.aio import AsyncPrimaries
    from dbscale.bulk.shell import Primaries
    from dbscale.config import load_config

    config = load_config(topology_config_path)
    lanes = {"main#0", "main#1", "main#2"}
    with Primaries(config) as direct:
        with ThreadPoolExecutor(8) as pool:
            asked = list(pool.map(lambda _: direct.connection("main#1"), range(8)))
        assert len({id(conn) for conn in asked}) == 1
        rows = [(n, "a", n, None, None) for n in range(1, 5_001)]
        assert bulk_load(direct, target, rows, batch_rows=1_000, parallel=3, progress=False).loaded == 5_000
        assert set(direct._connections) == lanes
        assert len({conn.info.backend_pid for conn in direct._connections.values()}) == 3

    async def twin() -> tuple[int, int, int]:
        async with AsyncPrimaries(config) as direct:
            asked = await asyncio.gather(*(direct.connection("main#2") for _ in range(8)))
            rows = [(n, "a", n, None, None) for n in range(5_001, 10_001)]
            loaded = await bulk_load_async(direct, target, rows, batch_rows=1_000, parallel=3, progress=False)
            assert set(direct._connections) == lanes
            backends = {conn.info.backend_pid for conn in direct._connections.values()}
            return len({id(conn) for conn in asked}), loaded.loaded, len(backends)

    assert asyncio.run(twin()) == (1, 5_000, 3)
    assert counts(cluster, target) == (10_000, 10_000)


def test_a_lane_transaction_cancelled_before_begin_answers_leaves_no_open_transaction(
    topology_config_path: Path,
) -> None:
    """Cancelled while its BEGIN is on the wire, a lane's transaction leaves its connection idle or closed —
    never inside a transaction the next batch would run in."""
    from dbscale.bulk.aio import AsyncPrimaries
    from dbscale.config import load_config

    async def main() -> list[str]:
        states = []
        async with AsyncPrimaries(load_config(topology_config_path)) as direct:
            for _ in range(5):
                conn = await direct.connection("main")

                async def begin() -> None:
                    async with direct.transaction("main"):
                        await asyncio.sleep(60)

                task = asyncio.create_task(begin())
                await asyncio.sleep(0)  # the task ran to its first wait: BEGIN's answer
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
                states.append("closed" if conn.closed else conn.info.transaction_status.name)
        return states

    assert set(asyncio.run(main())) <= {"IDLE", "closed"}


@pytest.mark.parametrize("through", ["cluster", "direct"])
def test_async_loads_cancelled_at_random_points_then_resumed_load_exactly_the_input(
    topology_config_path: Path, target: str, cluster: Cluster, through: str, caplog: pytest.LogCaptureFixture
) -> None:
    """``bulk_load_async`` with three lanes, cancelled at random moments (mid-COPY, mid-commit, while the
    reader waits) eight times, then run to the end with the same resume id: exactly the input, each row
    once (the resume record is in each batch's transaction, so a batch is committed with it or not at all),
    and the connections a cancelled load held are not handed to the next one mid-COPY (nor to a pool
    whose reset then fails on them: no error logged)."""
    import random

    from dbscale.bulk.aio import AsyncPrimaries
    from dbscale.config import load_config

    total = 120_000
    rows = [(n, f"row {n}", n % 100, None, None) for n in range(1, total + 1)]
    rng = random.Random(1234)
    config = load_config(topology_config_path)
    options: dict[str, Any] = {"batch_rows": 500, "parallel": 3, "resume": f"cancelled-{target}", "progress": False}

    async def load(acl: AsyncCluster) -> int:
        if through == "direct":
            async with AsyncPrimaries(config) as direct:
                return (await bulk_load_async(direct, target, rows, **options)).loaded
        return (await bulk_load_async(acl, target, rows, **options)).loaded

    async def main() -> tuple[list[int], int]:
        committed = [0]
        async with AsyncCluster.from_config(topology_config_path) as acl:

            async def rows_in() -> int:
                async with acl.write() as conn:
                    return int(await conn.scalar(text(f"SELECT count(*) FROM {target}")))

            for _ in range(8):
                task = asyncio.create_task(load(acl))
                deadline = time.monotonic() + 60
                while not task.done() and await rows_in() == committed[-1] and time.monotonic() < deadline:
                    await asyncio.sleep(0.005)  # until this attempt has committed a batch (a slow machine too)
                await asyncio.sleep(rng.uniform(0.0, 0.03))
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
                committed.append(await rows_in())
            return committed[1:], await load(acl)

    committed, last = asyncio.run(main())
    noise = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING and r.name != "dbscale.routing"]
    assert noise == []
    assert sum(0 < n < total for n in committed) >= 3, committed  # cut off mid-load, after progress
    assert committed == sorted(committed) and last == total - committed[-1]
    assert counts(cluster, target) == (total, total)


def test_a_blocking_load_interrupted_in_process_returns_after_its_lanes_ended_and_resumes_exactly(
    cluster: Cluster, target: str
) -> None:
    """Ctrl-C reaches the calling thread, not the lanes: ``bulk_load`` raises KeyboardInterrupt only once
    no lane thread can still commit, so the caller that catches it and loads again resumes exactly."""
    import threading

    rows = [(n, f"row {n}", n, None, None) for n in range(1, 60_001)]

    def interrupt(progress: Any) -> None:
        if progress.batches == 3:  # a lane's thread: Ctrl-C as the terminal sends it, to the main thread
            signal.pthread_kill(threading.main_thread().ident or 0, signal.SIGINT)

    with pytest.raises(KeyboardInterrupt):
        bulk_load(cluster, target, rows, batch_rows=500, parallel=3, resume="ctrl-c", progress=interrupt)
        time.sleep(30)  # had the load ended first, the interrupt lands here and the count below fails
    lanes_left = [t.name for t in threading.enumerate() if t.name.startswith("dbscale-bulk")]
    assert lanes_left == []
    committed = counts(cluster, target)[0]
    assert 0 < committed < 60_000
    rest = bulk_load(cluster, target, rows, batch_rows=500, parallel=3, resume="ctrl-c", progress=False)
    assert rest.loaded == 60_000 - committed
    assert counts(cluster, target) == (60_000, 60_000)


def test_a_resumed_load_waits_for_a_batch_whose_commit_is_still_in_flight(cluster: Cluster, target: str) -> None:
    """A killed or cancelled loader's last batch can commit after its client is gone. A load resumed
    meanwhile must not read the position before it (and load that batch again): it waits until the batch
    has committed — or rolled back — and resumes after whatever landed."""
    import threading

    from dbscale.bulk.base import RECORD_PROGRESS

    rows = [(n, f"row {n}", n, None, None) for n in range(1, 1_001)]
    assert bulk_load(cluster, target, rows[:500], batch_rows=100, resume="late", progress=False).loaded == 500
    with cluster.write() as conn:  # the lost client's batch 501–600, sent and not yet committed
        raw = conn.connection.driver_connection
        raw.execute(RECORD_PROGRESS, ["late", target, 600, 100, 0, 100, 1, "late"])
        with raw.cursor().copy(f"COPY {target} (id, name, qty) FROM STDIN") as copy:
            for n in range(501, 601):
                copy.write_row((n, f"row {n}", n))
        resumed: list[Any] = []
        loader = threading.Thread(
            target=lambda: resumed.append(
                bulk_load(cluster, target, rows, batch_rows=100, resume="late", progress=False)
            )
        )
        loader.start()
        time.sleep(1.0)
        assert loader.is_alive(), "the resumed load did not wait for the batch in flight"
        assert counts(cluster, target) == (500, 500)
    loader.join(60)  # the batch committed as the block ended
    assert resumed and resumed[0].loaded == 400
    assert counts(cluster, target) == (1_000, 1_000)


@pytest.mark.parametrize("through", ["cluster", "direct"])
def test_a_batch_left_open_by_a_vanished_client_is_named_not_waited_for_forever(
    topology_config_path: Path, cluster: Cluster, target: str, monkeypatch: pytest.MonkeyPatch, through: str
) -> None:
    """A client cut off by the network leaves its batch's transaction open until the server notices (hours
    with default keepalives): the resumed load waits ``resume_wait``, then names the backend and how to end
    it, instead of hanging with no word."""
    from dbscale.bulk.base import RECORD_PROGRESS
    from dbscale.bulk.shell import Primaries
    from dbscale.config import load_config

    monkeypatch.setattr(BulkLoader, "resume_wait", "1s")
    load_id = f"gone-{target}"
    rows = [(n, f"row {n}", n, None, None) for n in range(1, 201)]
    assert bulk_load(cluster, target, rows[:100], batch_rows=100, resume=load_id, progress=False).loaded == 100
    with cluster.write() as conn:  # the vanished client's batch
        raw = conn.connection.driver_connection
        raw.execute(RECORD_PROGRESS, [load_id, target, 200, 100, 0, 100, 1, load_id])
        backend = (raw.execute("SELECT pg_backend_pid()").fetchone() or [0])[0]  # PgBouncer's pid is not it
        with Primaries(load_config(topology_config_path)) as direct:
            loader: Any = direct if through == "direct" else cluster
            with pytest.raises(dbscale.BulkLoadError) as caught:
                bulk_load(loader, target, rows, batch_rows=100, resume=load_id, progress=False)
        message = str(caught.value)
        assert "still open on group 'main' after 1s" in message
        assert f"SELECT pg_terminate_backend({backend})" in message, message
        raw.rollback()  # the batch never lands: the resumed load loads it
    assert bulk_load(cluster, target, rows, batch_rows=100, resume=load_id, progress=False).loaded == 100
    assert counts(cluster, target) == (200, 200)


def test_a_utf8_byte_order_mark_is_not_data(
    topology_config_path: Path, cluster: Cluster, target: str, tmp_path: Path
) -> None:
    """Excel's "CSV UTF-8" starts the file with a byte order mark: it is skipped, not read as part of the
    first column's name (``--header``) or of the first value (CSV without a header, JSON lines)."""
    bom = b"\xef\xbb\xbf"
    with_header = tmp_path / "excel.csv"
    with_header.write_bytes(bom + b"id,name,qty,price,day\r\n1,a,1,1.00,2024-01-01\r\n2,b,2,2.00,2024-01-02\r\n")
    bare = tmp_path / "bare.csv"
    bare.write_bytes(bom + b"3,c,3,3.00,2024-01-03\n")
    lines = tmp_path / "rows.jsonl"
    lines.write_bytes(bom + b'{"id": 4, "name": "d", "qty": 4, "price": null, "day": null}\n')
    for args in ((with_header, "--header"), (bare,), (lines,)):
        done = load_cli(topology_config_path, *args, "--table", target)
        assert done.returncode == 0, done.stderr
    with cluster.write() as conn:
        assert conn.execute(text(f"SELECT id, name FROM {target} ORDER BY id")).all() == [
            (1, "a"),
            (2, "b"),
            (3, "c"),
            (4, "d"),
        ]


def test_table_names_are_read_as_sql_reads_them(cluster: Cluster) -> None:
    """``--table`` / ``table=`` is SQL name syntax, as in ``psql \\copy``: ``schema.t``, ``"MixedCase"`` (an
    unquoted name folds to lower case); a name that is not SQL name syntax is refused, not sent."""
    name = f"Bulk_{uuid.uuid4().hex[:8]}"
    with extra_table(cluster, f'"{name}"', "id int, note text"):
        assert bulk_load(cluster, f'"{name}"', [(1, "quoted")], progress=False).loaded == 1
        assert bulk_load(cluster, f'public."{name}"', [(2, "qualified")], progress=False).loaded == 1
        with pytest.raises(dbscale.BulkLoadError, match="does not exist"):  # folds to lower case: another table
            bulk_load(cluster, name, [(3, "unquoted")], progress=False)
        with pytest.raises(dbscale.BulkLoadError, match="is not a table name"):
            bulk_load(cluster, f'"{name}"; DROP TABLE x', [(4, "injected")], progress=False)
        with cluster.write() as conn:
            assert conn.execute(text(f'SELECT id, note FROM "{name}" ORDER BY id')).all() == [
                (1, "quoted"),
                (2, "qualified"),
            ]


def test_gzip_files_and_standard_input(
    topology_config_path: Path, cluster: Cluster, target: str, tmp_path: Path
) -> None:
    """``FILE.csv.gz`` / ``FILE.jsonl.gz`` are decompressed as they are read (the format from the name under
    ``.gz``); ``-`` reads standard input, stops at a bad row like a file, and ``--resume`` with the input piped
    again continues after exactly what is committed."""
    import gzip

    data = write_csv(tmp_path / "in.csv", 3_000)
    (tmp_path / "in.csv.gz").write_bytes(gzip.compress(data.read_bytes()))
    (tmp_path / "in.jsonl.gz").write_bytes(
        gzip.compress(b'{"id": 3001, "name": "j", "qty": 1, "price": "2.50", "day": "2024-02-03"}\n')
    )
    for name in ("in.csv.gz", "in.jsonl.gz"):
        done = load_cli(
            topology_config_path, tmp_path / name, "--table", target, *(["--header"] if "csv" in name else [])
        )
        assert done.returncode == 0, done.stderr
    assert counts(cluster, target) == (3_001, 3_001)

    with cluster.write() as conn:
        conn.execute(text(f"TRUNCATE {target}"))
    lines = [csv_line(n) for n in range(1, 2_001)]
    broken = [*lines[:1_500], "1501,x,oops,1.00,2024-01-01\n", *lines[1_501:]]

    def piped(rows: list[str], *more: str) -> subprocess.CompletedProcess[str]:
        command = [
            DBSCALE,
            "load",
            "-",
            "--table",
            target,
            "--batch-rows",
            "500",
            "--config",
            str(topology_config_path),
        ]
        return subprocess.run(
            [*command, "--no-progress", *more], input="".join(rows), capture_output=True, text=True, timeout=120
        )

    stopped = piped(broken)
    assert stopped.returncode == 1 and "row 1501, column 'qty'" in stopped.stderr, stopped.stderr
    assert counts(cluster, target) == (1_500, 1_500)
    resumed = piped(lines, "--resume")
    assert resumed.returncode == 0 and "skipped 1,500 rows" in resumed.stderr, resumed.stderr
    assert counts(cluster, target) == (2_000, 2_000)
    refused = piped(lines, "--on-error", "skip")
    assert refused.returncode == 2 and "--reject-file" in refused.stderr


def test_an_unreadable_input_says_what_is_committed_and_a_named_pipe_loads(
    topology_config_path: Path, cluster: Cluster, target: str, tmp_path: Path
) -> None:
    """A .gz cut short (a partial download) stops with one line naming the file, the reason and the rows this run
    committed, and ``--resume`` on the whole file finishes exactly; a file that is not gzip is refused the same
    way before anything loads; a named pipe (``<(zcat …)``) loads like a file."""
    import gzip
    import threading

    whole = gzip.compress(write_csv(tmp_path / "in.csv", 200_000, header=False).read_bytes())  # MBs: read in blocks
    data = tmp_path / "in.csv.gz"
    data.write_bytes(whole[: len(whole) // 2])
    cut = load_cli(topology_config_path, data, "--table", target, "--batch-rows", 20_000)
    assert cut.returncode == 1 and "Traceback" not in cut.stderr, cut.stderr
    committed = counts(cluster, target)[0]
    assert f"reading {data} failed (Compressed file ended" in cut.stderr
    assert f"after {committed:,} rows were committed in this run" in cut.stderr and 0 < committed < 200_000
    data.write_bytes(whole)
    resumed = load_cli(topology_config_path, data, "--table", target, "--batch-rows", 20_000, "--resume")
    assert resumed.returncode == 0, resumed.stderr
    assert counts(cluster, target) == (200_000, 200_000)

    plain = tmp_path / "plain.csv.gz"
    plain.write_bytes(b"1,a,1,1.00,2024-01-01\n")
    refused = load_cli(topology_config_path, plain, "--table", target, "--header")
    assert refused.returncode == 1 and "Not a gzipped file" in refused.stderr and "after 0 rows" in refused.stderr

    with cluster.write() as conn:
        conn.execute(text(f"TRUNCATE {target}"))
    pipe = tmp_path / "fifo.csv"
    os.mkfifo(pipe)
    feeder = threading.Thread(target=lambda: pipe.write_text("".join(csv_line(n) for n in range(1, 1_001))))
    feeder.start()
    piped = load_cli(topology_config_path, pipe, "--table", target)
    feeder.join(timeout=60)
    assert piped.returncode == 0, piped.stderr
    assert counts(cluster, target) == (1_000, 1_000)
