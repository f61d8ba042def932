"""``dbscale load FILE --table T``: bulk load a CSV or JSON-lines file with COPY (:func:`dbscale.bulk_load`).

CSV records go to the server as they are (``COPY … (FORMAT csv)``: the server parses them, as
``psql \\copy`` would), JSON lines are parsed here and sent with text COPY. The progress bar
measures the bytes read against the file's size (so the ETA is real); the summary says what was
loaded, set aside and skipped. The resume record is kept under one id per table and file, so
``--resume`` after a crash or a bad row continues after exactly what is committed.
"""

from __future__ import annotations

import codecs
import enum
import os
import stat
import sys
import zlib
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, ExitStack, nullcontext
from pathlib import Path
from typing import IO, TYPE_CHECKING, Annotated, Any, NoReturn, cast

import typer

from dbscale.errors import BadRowError, BulkLoadError, ConfigError

if TYPE_CHECKING:  # the loader (psycopg) is imported when `load` runs, not when the CLI starts; rich for the bar only
    from rich.console import Console

    from dbscale.bulk.plan import Progress
    from dbscale.bulk.shell import Primaries
    from dbscale.cluster import Cluster
    from dbscale.config import TopologyConfig

DEFAULT_CONFIG = Path(".dbscale/dbscale.toml")


class InputFormat(enum.StrEnum):
    csv = "csv"
    jsonl = "jsonl"


class OnError(enum.StrEnum):
    stop = "stop"
    skip = "skip"


#: The FILE that means standard input.
STDIN = Path("-")


def load_id(table: str, file: Path) -> str:
    """The resume record's id for loading ``file`` into ``table`` (standard input has one id per table; a pipe
    such as ``<(zcat …)`` is named as given, its target changes from run to run)."""
    return f"load:{table}:{'<stdin>' if file == STDIN else file.resolve() if file.is_file() else file}"


def _open_input(file: Path, stack: ExitStack) -> tuple[IO[bytes], Callable[[], int], int | None]:
    """The input's bytes (a ``.gz`` file decompressed as it is read, standard input for ``-``), how far into
    the file the reading is (for the progress bar: compressed bytes of a ``.gz``), and the file's size (None
    when unknown: standard input)."""
    if file == STDIN:
        return sys.stdin.buffer, lambda: 0, None
    raw = stack.enter_context(file.open("rb"))
    regular = stat.S_ISREG(
        os.fstat(raw.fileno()).st_mode
    )  # not a pipe (`<(zcat …)`), whose size and offset mean nothing
    position, size = (raw.tell, file.stat().st_size) if regular else ((lambda: 0), None)
    if file.suffix.lower() == ".gz":
        import gzip  # compressed input only

        unzipped = gzip.GzipFile(fileobj=raw, mode="rb")
        stack.callback(unzipped.close)
        return cast("IO[bytes]", unzipped), position, size
    return raw, position, size


def _format_of(file: Path) -> InputFormat:
    """csv or jsonl from the file name (``.jsonl``, ``.ndjson``, ``.json``, also under ``.gz``); csv for ``-``."""
    name = file.name[:-3] if file.suffix.lower() == ".gz" else file.name
    return InputFormat.jsonl if Path(name).suffix.lower() in (".jsonl", ".ndjson", ".json") else InputFormat.csv


def _skip_byte_order_mark(handle: IO[bytes]) -> None:
    """Skip a UTF-8 byte order mark opening the input (Excel's "CSV UTF-8" writes one): it is not data."""
    peek = getattr(handle, "peek", None)
    if peek is not None and peek(3)[:3] == codecs.BOM_UTF8:
        handle.read(3)


def _jsonl_rows(handle: IO[bytes]) -> Iterator[Any]:
    """Rows of a JSON-lines file: objects (by column name) or arrays; nested values as JSON text (json columns)."""
    import orjson  # JSON lines only: a CSV load does not import it

    for line in handle:
        if not line.strip():
            continue
        try:
            row = orjson.loads(line)
        except orjson.JSONDecodeError as exc:
            yield exc  # a row the loader rejects (it is not a tuple or a mapping) with the reason
            continue
        if isinstance(row, dict):
            yield {k: orjson.dumps(v).decode() if isinstance(v, (dict, list)) else v for k, v in row.items()}
        elif isinstance(row, list):
            yield tuple(orjson.dumps(v).decode() if isinstance(v, (dict, list)) else v for v in row)
        else:
            yield row


class FileProgress:
    """A rich progress bar over the file's bytes: rows loaded, rows/s, ETA (standard input: no total, no ETA)."""

    def __init__(self, position: Callable[[], int], size: int | None, console: Console) -> None:
        from rich.progress import BarColumn, DownloadColumn, TextColumn, TimeElapsedColumn, TimeRemainingColumn
        from rich.progress import Progress as RichProgress

        self._position = position
        self._bar = RichProgress(
            TextColumn("[bold]loading"),
            BarColumn(),
            DownloadColumn(),
            TextColumn("{task.fields[rows]} rows, {task.fields[rate]} rows/s"),
            TimeElapsedColumn(),
            TextColumn("ETA"),
            TimeRemainingColumn(),
            console=console,
        )
        self._task = self._bar.add_task("load", total=size, rows="0", rate="-")

    def __enter__(self) -> Callable[[Progress], None]:
        self._bar.start()
        return self.update

    def __exit__(self, *exc: object) -> None:
        self._bar.stop()

    def update(self, progress: Progress) -> None:
        """Called by the loader after each batch."""
        self._bar.update(
            self._task,
            completed=self._position(),
            rows=f"{progress.loaded:,}",
            rate=f"{progress.rows_per_second:,.0f}",
        )


def load(
    file: Annotated[
        Path,
        typer.Argument(
            help="The CSV or JSON-lines file to load (.gz is decompressed as it is read; - reads standard input).",
            dir_okay=False,  # its existence is checked in the body: typer's exists=True refuses "-" for a Path
        ),
    ],
    table: Annotated[str, typer.Option("--table", help="The target table (it must exist).")],
    fmt: Annotated[
        InputFormat | None, typer.Option("--format", help="csv or jsonl (default: from the file name).")
    ] = None,
    columns: Annotated[
        str | None, typer.Option("--columns", help="Comma-separated target columns, in file order.")
    ] = None,
    header: Annotated[bool, typer.Option("--header", help="The CSV file starts with a header line.")] = False,
    batch_rows: Annotated[
        int,
        typer.Option(
            "--batch-rows",
            min=1,
            help="Rows per COPY and commit. A COPY statement costs the server a few ms besides its rows, so a file"
            " loads faster in larger batches; --resume continues after the last committed one whatever the size.",
        ),
    ] = 50_000,
    parallel: Annotated[
        int,
        typer.Option(
            "--parallel", min=1, help="Connections per group loading side by side (the server parses in each)."
        ),
    ] = 2,
    resume: Annotated[bool, typer.Option("--resume", help="Continue after what an earlier run committed.")] = False,
    on_error: Annotated[OnError, typer.Option("--on-error", help="stop at a bad row, or skip it.")] = OnError.stop,
    reject_file: Annotated[
        Path | None, typer.Option("--reject-file", help="Where skipped rows go (default FILE.rejects.jsonl).")
    ] = None,
    shard_key: Annotated[
        str | None, typer.Option("--shard-key", help="Route rows by this column (cluster.shard_for).")
    ] = None,
    config: Annotated[Path, typer.Option("--config", help="The dbscale.toml of the topology.")] = DEFAULT_CONFIG,
    progress: Annotated[
        bool | None,
        typer.Option("--progress/--no-progress", help="Show the progress bar (default: when stderr is a terminal)."),
    ] = None,
) -> None:
    """Bulk load a CSV or JSON-lines file with COPY: committed per batch, resumable, bad rows named or skipped."""
    from dbscale.bulk.plan import csv_fields, csv_records
    from dbscale.bulk.shell import BulkLoader, Primaries
    from dbscale.config import load_config
    from dbscale_launcher import resume_collection

    resume_collection()  # paused by the launcher for the start-up imports
    if file != STDIN and not file.exists():
        raise ConfigError(f"{file}: no such file (name a CSV or JSON-lines file, or - for standard input)")
    if not config.exists():
        raise ConfigError(f"no topology config at {config} (run `dbscale up` first, or pass --config FILE)")
    topology = load_config(config)
    kind = fmt or _format_of(file)
    if header and kind is InputFormat.jsonl:
        raise ConfigError("--header is for CSV files (JSON lines name their fields)")
    if reject_file is not None and on_error is OnError.stop:
        raise ConfigError("--reject-file needs --on-error skip")
    piped = file == STDIN or not file.is_file()  # standard input, `<(zcat …)`: no place for a default reject file
    if piped and on_error is OnError.skip and reject_file is None:
        raise ConfigError(f"--on-error skip reading {file} (not a file): name the reject file with --reject-file")
    rejects = reject_file or (file.with_name(file.name + ".rejects.jsonl") if on_error is OnError.skip else None)
    names = [c.strip() for c in columns.split(",")] if columns else None
    with ExitStack() as opened:
        try:
            handle, position, size = _open_input(file, opened)
            _skip_byte_order_mark(handle)
            first = handle.readline() if header else b""
        except _READ_ERRORS as exc:
            _unreadable(file, exc, 0)
        if header:
            names = names or [c.strip() for c in csv_fields(first)]
        rows: Any = csv_records(handle) if kind is InputFormat.csv else _jsonl_rows(handle)
        bar: AbstractContextManager[Callable[[Progress], None] | bool]
        if progress is None:  # a bar redrawn into a log file or a pipe is noise: only on a terminal
            progress = sys.stderr.isatty()
        bar = FileProgress(position, size, _stderr()) if progress else nullcontext(False)
        with _target(topology, Primaries) as cluster, bar as callback:
            try:
                loader = BulkLoader(
                    cluster,
                    table,
                    columns=names,
                    batch_rows=batch_rows,
                    parallel=parallel,
                    progress=callback,
                    on_error=on_error.value,
                    resume=load_id(table, file),
                    restart=not resume,
                    reject_file=rejects,
                    shard_key=shard_key,
                    input_format="csv" if kind is InputFormat.csv else "text",
                )
            except BulkLoadError as exc:  # an option the loader refuses (the reject file's path): a usage error
                raise ConfigError(str(exc)) from None
            try:
                result = loader.run(rows)
            except KeyboardInterrupt:
                print(
                    f"dbscale: interrupted after {loader.progress.loaded:,} rows were committed in this run;"
                    " run it again with --resume to continue after exactly what is committed",
                    file=sys.stderr,
                )
                raise typer.Exit(130) from None
            except _READ_ERRORS as exc:
                _unreadable(file, exc, loader.progress.loaded)
            except BadRowError as exc:
                line = exc.row + (1 if header else 0)
                hint = f" (line {line} of {file.name})" if kind is InputFormat.csv else ""
                print(f"dbscale: error: {exc}{hint}", file=sys.stderr)
                raise typer.Exit(1) from None
    _summary(result, table, rejects)


#: What reading the input raises when it cannot go on (a missing permission, a truncated or corrupt .gz).
_READ_ERRORS = (OSError, EOFError, zlib.error)


def _unreadable(file: Path, exc: BaseException, committed: int) -> NoReturn:
    """Stop the command: the input could not be read on (after ``committed`` rows of this run)."""
    print(
        f"dbscale: error: reading {file} failed ({exc}) after {committed:,} rows were committed in this run;"
        " fix the input and run it again with --resume to continue after them",
        file=sys.stderr,
    )
    raise typer.Exit(1) from None


def _target(topology: TopologyConfig, primaries: type[Primaries]) -> Primaries | Cluster:
    """What the load goes through: each group's write endpoint straight from the config (no SQLAlchemy,
    no routers to start: the process starts sooner), or the cluster when a group's primary is elected
    by Patroni and only the router can find it."""
    if primaries.direct(topology):
        return primaries(topology)
    from dbscale.cluster import Cluster

    return Cluster(topology)


def _stderr() -> Console:
    from rich.console import Console

    return Console(stderr=True, highlight=False)


def _summary(result: Progress, table: str, rejects: Path | None) -> None:
    """What was loaded, skipped and set aside: plain lines on stderr (no rich to import for them)."""
    lines = [
        f"loaded {result.loaded:,} rows into {table} in {result.seconds:.1f} s "
        f"({result.rows_per_second:,.0f} rows/s, {result.batches} commits)"
    ]
    if result.skipped:
        lines.append(f"skipped {result.skipped:,} rows committed by an earlier run (--resume)")
    if result.rejected:
        lines.append(f"rejected {result.rejected:,} rows → {rejects}")
    if len(result.per_group) > 1:
        lines.append("per group: " + ", ".join(f"{g} {n:,}" for g, n in sorted(result.per_group.items())))
    print("\n".join(lines), file=sys.stderr)


def register(app: typer.Typer) -> None:
    """Add ``dbscale load`` to the CLI."""
    app.command("load")(load)
