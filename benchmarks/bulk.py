"""Bulk loading: ``dbscale load`` next to ``psql \\copy``, asyncpg ``copy_records_to_table`` and 1,000-row INSERT batches.

One CSV file of N rows (default 1,000,000; columns bigint, text, integer, numeric(10,2), date) is
loaded into a fresh table by each contender, in one process run, ``--rounds`` times in rotating
order (the table is truncated before each load); medians and ratios. Every contender starts from
the same file:

- ``dbscale load FILE`` (the CLI, a process, as a user runs it): the file read in blocks of 10,000
  whole CSV records sent as is, COPY (FORMAT csv), a commit and a resume record per block, two lanes
  (connections) straight to the primary with psycopg (no SQLAlchemy in the process);
- ``psql \\copy`` (a process): one COPY, one transaction;
- asyncpg ``copy_records_to_table`` (in this process): the file parsed to typed records with the
  ``csv`` module, then one binary COPY;
- the textbook: ``executemany`` INSERT in 1,000-row batches, a commit each (psycopg, typed values).

Then typed Python records already in memory (no file): ``dbscale.bulk_load`` (binary COPY through
psycopg) next to asyncpg ``copy_records_to_table``. Before that, ``dbscale load`` and ``psql \\copy`` alone,
``--duel`` runs each, alternating (steadier than the rotating rounds on a shared machine). Last, peak RSS of ``dbscale load`` for the N-row
file and a 5×N-row file (memory must stay flat: the input is streamed).

    python benchmarks/bulk.py                         # a throwaway LocalTopology (one primary)
    python benchmarks/bulk.py --rows 200000 --rounds 1 --config .dbscale/dbscale.toml
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import datetime
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from decimal import Decimal
from pathlib import Path
from typing import Any

import asyncpg
import psycopg
from _topology import bench_config
from sqlalchemy import text

from dbscale import Cluster, bulk_load
from dbscale.bulk import csv_records

DBSCALE = str(Path(sys.executable).with_name("dbscale"))
COLUMNS = "id bigint, name text, qty integer NOT NULL, price numeric(10,2), day date"
NAMES = ["id", "name", "qty", "price", "day"]


def write_csv(path: Path, rows: int) -> Path:
    with path.open("w") as f:
        for n in range(1, rows + 1):
            f.write(f"{n},item number {n},{n % 1000},{n % 9973}.{n % 100:02d},2024-{n % 12 + 1:02d}-{n % 28 + 1:02d}\n")
    return path


def typed(path: Path) -> Iterator[tuple[Any, ...]]:
    """The file's rows as typed Python values (what asyncpg and the textbook INSERT need)."""
    with path.open(newline="") as f:
        for a, b, c, d, e in csv.reader(f):
            yield int(a), b, int(c), Decimal(d), datetime.date.fromisoformat(e)


def timed(fn: Callable[[], object]) -> float:
    started = time.perf_counter()
    fn()
    return time.perf_counter() - started


def run(args: list[str], env: dict[str, str] | None = None) -> None:
    subprocess.run(args, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)


def peak_rss_mb(args: list[str]) -> float:
    """Run ``args`` to completion; its peak resident memory (MB), read from /proc (``VmHWM``, reset at exec)."""
    child = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    status = Path(f"/proc/{child.pid}/status")
    peak = 0
    while child.poll() is None:
        try:
            for line in status.read_text().splitlines():
                if line.startswith("VmHWM:"):
                    peak = max(peak, int(line.split()[1]))
        except (FileNotFoundError, ProcessLookupError):
            break
        time.sleep(0.05)
    if child.wait() != 0:
        raise SystemExit(f"{args[:3]} exited {child.returncode}")
    return peak / 1024


@contextmanager
def _removed_after(workdir: Path) -> Iterator[None]:
    try:
        yield
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--config", type=Path, help="an existing topology's dbscale.toml (default: start one)")
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--textbook-rounds", type=int, default=1, help="the INSERT batches are slow: fewer rounds")
    parser.add_argument(
        "--duel",
        type=int,
        default=7,
        help="then `dbscale load` and psql \\copy alone, this many runs each, alternating",
    )
    parser.add_argument("--rss-factor", type=int, default=5, help="the big file for the RSS check is this × --rows")
    args = parser.parse_args()

    workdir = Path(tempfile.mkdtemp(prefix="dbscale-bench-bulk-"))
    data = write_csv(workdir / "data.csv", args.rows)
    with (
        bench_config(args.config, "bulk") as config,
        Cluster.from_config(config) as cluster,
        _removed_after(workdir),  # the CSV files go also when the run is interrupted (SIGTERM, Ctrl-C)
    ):
        url = str(cluster.node(f"{cluster.default_group()}-primary").url)
        table = f"bulk_{uuid.uuid4().hex[:8]}"
        with cluster.write() as conn:
            conn.execute(text(f"CREATE TABLE {table} ({COLUMNS})"))

        def fresh() -> None:
            with cluster.write() as conn:
                conn.execute(text(f"TRUNCATE {table}"))
                conn.execute(text("CHECKPOINT"))

        def check() -> None:
            with cluster.write() as conn:
                assert conn.scalar(text(f"SELECT count(*) FROM {table}")) == args.rows

        fresh()
        cli = [DBSCALE, "load", "--table", table, "--config", str(config), "--no-progress"]
        rss_small = peak_rss_mb([*cli[:2], str(data), *cli[2:]])
        big = workdir / "big.csv"
        with big.open("wb") as out, data.open("rb") as src:  # the same rows, rss_factor times (no key: no conflict)
            chunk = src.read()
            for _ in range(args.rss_factor):
                out.write(chunk)
        fresh()
        rss_big = peak_rss_mb([*cli[:2], str(big), *cli[2:]])
        big.unlink()

        def dbscale_cli() -> None:
            run([DBSCALE, "load", str(data), "--table", table, "--config", str(config), "--no-progress"])

        def psql_copy() -> None:
            run(["psql", url, "-qc", f"\\copy {table} FROM '{data}' (FORMAT csv)"])

        def asyncpg_copy() -> None:
            async def go() -> None:
                conn = await asyncpg.connect(url)
                try:
                    await conn.copy_records_to_table(table, records=typed(data), columns=NAMES)
                finally:
                    await conn.close()

            asyncio.run(go())

        def textbook() -> None:
            with psycopg.connect(url) as conn, conn.cursor() as cur:
                batch: list[tuple[Any, ...]] = []
                insert = f"INSERT INTO {table} ({', '.join(NAMES)}) VALUES (%s, %s, %s, %s, %s)"
                for row in typed(data):
                    batch.append(row)
                    if len(batch) == 1_000:
                        cur.executemany(insert, batch)
                        conn.commit()
                        batch = []
                if batch:
                    cur.executemany(insert, batch)
                    conn.commit()

        def dbscale_lib() -> None:
            with data.open("rb") as f:
                bulk_load(cluster, table, csv_records(f), input_format="csv", parallel=2, progress=False)

        from_file: dict[str, Callable[[], None]] = {
            "dbscale load (CLI process)": dbscale_cli,
            "dbscale.bulk_load(csv_records(file)) in a running process": dbscale_lib,
            "psql \\copy": psql_copy,
            "asyncpg copy_records_to_table (csv module)": asyncpg_copy,
        }
        times: dict[str, list[float]] = {name: [] for name in [*from_file, "INSERT batches of 1,000 (executemany)"]}
        order = list(from_file)
        for r in range(args.rounds):
            for name in order[r % len(order) :] + order[: r % len(order)]:
                fresh()
                times[name].append(timed(from_file[name]))
                check()
        for _ in range(args.textbook_rounds):
            fresh()
            times["INSERT batches of 1,000 (executemany)"].append(timed(textbook))
            check()

        duel: dict[str, list[float]] = {"dbscale load (CLI process)": [], "psql \\copy": []}
        for r in range(args.duel):  # the two alone, back to back (the machine's load changes less between them)
            for name in list(duel)[r % 2 :] + list(duel)[: r % 2]:
                fresh()
                duel[name].append(timed(from_file[name]))
                check()

        startup = statistics.median(timed(lambda: run([DBSCALE, "load", "--help"])) for _ in range(3))
        empty = workdir / "empty.csv"
        empty.touch()
        fixed = statistics.median(timed(lambda: run([*cli[:2], str(empty), *cli[2:]])) for _ in range(3))
        records = list(typed(data))

        def lib() -> None:
            bulk_load(cluster, table, records, progress=False)

        def apg_mem() -> None:
            async def go() -> None:
                conn = await asyncpg.connect(url)
                try:
                    await conn.copy_records_to_table(table, records=records, columns=NAMES)
                finally:
                    await conn.close()

            asyncio.run(go())

        in_memory: dict[str, Callable[[], None]] = {
            "dbscale.bulk_load (binary COPY, psycopg)": lib,
            "asyncpg copy_records_to_table": apg_mem,
        }
        mem_times: dict[str, list[float]] = {name: [] for name in in_memory}
        for r in range(args.rounds):
            for name in list(in_memory)[r % 2 :] + list(in_memory)[: r % 2]:
                fresh()
                mem_times[name].append(timed(in_memory[name]))
                check()
        records.clear()

        fresh()
        with cluster.write() as conn:
            conn.execute(text(f"DROP TABLE {table}"))

    psql = statistics.median(times["psql \\copy"])
    print(f"\n## Bulk load of a {args.rows:,}-row CSV (5 typed columns), medians of {args.rounds} rounds\n")
    print("| contender | seconds | rows/s | vs psql \\copy |")
    print("|---|---|---|---|")
    for name, samples in times.items():
        med = statistics.median(samples)
        print(f"| {name} | {med:.2f} | {args.rows / med:,.0f} | {psql / med:.2f}× |")
    ours = statistics.median(times["dbscale load (CLI process)"])
    slow = statistics.median(times["INSERT batches of 1,000 (executemany)"])
    lib = statistics.median(times["dbscale.bulk_load(csv_records(file)) in a running process"])
    print(f"\n`dbscale load` vs psql \\copy: {psql / ours:.2f}×; vs INSERT batches: {slow / ours:.1f}×")
    print(
        f"`dbscale.bulk_load` in a running process vs psql \\copy: {psql / lib:.2f}×; vs INSERT batches: {slow / lib:.1f}×"
    )
    if args.duel:
        a, b = (statistics.median(duel[name]) for name in duel)
        print(
            f"`dbscale load` vs psql \\copy alone, {args.duel} alternating runs each: {a:.2f} s vs {b:.2f} s"
            f" (medians) = {b / a:.2f}×; per-run ratios {', '.join(f'{y / x:.2f}' for x, y in zip(*duel.values(), strict=True))}"
        )
    print(f"`dbscale load --help` (interpreter start and the CLI's imports): {startup:.2f} s")
    print(f"`dbscale load` of an empty file (start, imports, config, connections, resume record): {fixed:.2f} s")
    print(f"\n## Typed records already in memory ({args.rows:,} rows)\n")
    print("| contender | seconds | rows/s |")
    print("|---|---|---|")
    for name, samples in mem_times.items():
        med = statistics.median(samples)
        print(f"| {name} | {med:.2f} | {args.rows / med:,.0f} |")
    print("\n## Peak RSS of `dbscale load`\n")
    print("| input | peak RSS |")
    print("|---|---|")
    print(f"| {args.rows:,} rows | {rss_small:.0f} MB |")
    print(f"| {args.rows * args.rss_factor:,} rows | {rss_big:.0f} MB |")


if __name__ == "__main__":
    main()
