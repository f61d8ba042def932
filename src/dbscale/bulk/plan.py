"""Bulk loading decisions, without I/O: rows to tuples, chunks per target, resume positions, bad-row search.

Theory of operation. Input rows are numbered 1, 2, 3 … in the order they arrive (``Row.number``)
and read ``batch_rows`` at a time (a *chunk*; memory stays bounded). Chunk ``k`` goes to lane
``k % parallel`` of the group each row is routed to (one group unless the table is sharded); a
group's lane is a *target* (``main``, or ``main#1`` with parallel lanes). Each target's batch is one
``COPY`` and one transaction, which also records the target's *resume position*: the number of the
last input row the target has dealt with (loaded or rejected). A target's rows arrive in input
order and its batches commit in that order, so every row of that target numbered at or below its
position is in the table (or in the reject file), and none above it is. Resuming skips, per
target, exactly the rows at or below its recorded position.

A batch that fails is split by :func:`split_failed`: when the server names the row it stopped at,
the rows before it are retried as their own batch, that row is rejected (or reported, with
``on_error="stop"``) and the rest continues; when no row is named (e.g. a constraint checked at
commit), the span is bisected until the bad row is alone. Every span still commits in input order,
so the resume position only moves forward.
"""

from __future__ import annotations

import csv
import re
import uuid
from bisect import bisect_left
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from itertools import islice
from typing import IO, Any, Literal, overload

OnError = Literal["stop", "skip"]
CopyFormat = Literal["binary", "text", "csv"]
InputFormat = Literal["rows", "text", "csv"]

#: Types psycopg dumps in binary COPY from the Python values a caller naturally holds. A column of
#: any other type (enums, domains, arrays of custom types, geometry …) makes the load use text COPY,
#: where the server parses each value from its text form.
BINARY_TYPES = frozenset(
    {
        "smallint",
        "integer",
        "bigint",
        "real",
        "double precision",
        "numeric",
        "boolean",
        "text",
        "character varying",
        "character",
        "bytea",
        "date",
        "timestamp without time zone",
        "timestamp with time zone",
        "time without time zone",
        "interval",
        "uuid",
        "json",
        "jsonb",
    }
)


def copy_format(types: Sequence[str]) -> Literal["binary", "text"]:
    """``binary`` when every column type (``format_type`` spelling, typmod ignored) has a binary dumper, else ``text``."""
    bare = (re.sub(r"\(.*\)", "", t).strip() for t in types)
    return "binary" if all(t in BINARY_TYPES for t in bare) else "text"


@dataclass(frozen=True, slots=True)
class Row:
    """One input row: its 1-based input number and its values (a tuple, or a raw CSV record as bytes)."""

    number: int
    values: tuple[Any, ...] | bytes


@dataclass(frozen=True, slots=True)
class Rejected:
    """A row that cannot be loaded, and why (``column``/``value`` when known)."""

    number: int
    reason: str
    column: str | None = None
    value: Any = None
    data: Any = None

    def describe(self) -> str:
        """``row 7, column 'qty' (value 'abc'): invalid input syntax …``."""
        where = f"row {self.number}"
        if self.column is not None:
            where += f", column {self.column!r}"
            if self.value is not None:
                where += f" (value {self.value!r})"
        return f"{where}: {self.reason}"


def to_values(raw: Any, columns: Sequence[str]) -> tuple[Any, ...]:
    """A row given as a tuple/list (in column order) or a mapping (by column name) as a tuple.

    Raises :class:`ValueError` naming the problem (wrong count, missing or unknown keys). An
    exception in place of a row stands for input that could not be read (e.g. a line that is not
    JSON); its message becomes the reason.
    """
    if isinstance(raw, Exception):
        raise ValueError(f"unreadable input: {raw}")
    if isinstance(raw, Mapping):
        missing = [c for c in columns if c not in raw]
        extra = [k for k in raw if k not in columns]
        if missing or extra:
            parts = []
            if missing:
                parts.append(f"missing {', '.join(map(repr, missing))}")
            if extra:
                parts.append(f"unknown {', '.join(map(repr, map(str, extra)))}")
            raise ValueError(f"keys do not match the columns ({'; '.join(parts)}); expected {list(columns)}")
        return tuple(raw[c] for c in columns)
    if isinstance(raw, (str, bytes)) or not isinstance(raw, Sequence):
        raise ValueError(f"a row must be a tuple, list or mapping, not {type(raw).__name__}")
    if len(raw) != len(columns):
        raise ValueError(f"{len(raw)} values for {len(columns)} columns {list(columns)}")
    return tuple(raw)


def csv_records(lines: Iterable[bytes], chunk: int = 4096) -> Iterator[bytes]:
    """CSV records from lines, or from a binary file: a line with an odd number of quotes continues on the next.

    Lines are taken ``chunk`` at a time; a chunk without any quote passes through as is (no
    Python work per line). Given a binary file (an object with ``read``), the result is a
    :class:`CsvRecords`: the same records one by one, and also in whole blocks
    (:meth:`CsvRecords.blocks`), which is how an unsharded load reads it — no Python work per record.
    """
    if hasattr(lines, "read"):
        return CsvRecords(lines)  # type: ignore[arg-type]
    return _records_of_lines(lines, chunk)


def _records_of_lines(lines: Iterable[bytes], chunk: int = 4096) -> Iterator[bytes]:
    source = iter(lines)
    pending: list[bytes] = []
    quotes = 0
    while block := list(islice(source, chunk)):
        if not pending and b'"' not in b"".join(block):
            if not block[-1].endswith(b"\n"):
                block[-1] += b"\n"
            yield from block
            continue
        for line in block:
            quotes += line.count(b'"')
            pending.append(line)
            if quotes % 2 == 0:
                record, pending, quotes = b"".join(pending), [], 0
                yield record if record.endswith(b"\n") else record + b"\n"
    if pending:  # a quote left open at the end: the rest is one record (the server names what is wrong)
        record = b"".join(pending)
        yield record if record.endswith(b"\n") else record + b"\n"


def _lines(data: bytes) -> list[bytes]:
    """``data`` cut after each newline (``\\n`` only, as a file is read line by line); the tail too."""
    lines = [line + b"\n" for line in data.split(b"\n")]
    lines[-1] = lines[-1][:-1]
    return lines if lines[-1] else lines[:-1]


class CsvBlock(Sequence[bytes]):
    """Whole raw CSV records as one ``bytes`` (what one COPY sends as is); split into records only when asked."""

    __slots__ = ("_records", "data", "length")

    def __init__(self, data: bytes, length: int) -> None:
        self.data = data
        self.length = length
        self._records: list[bytes] | None = None

    def records(self) -> list[bytes]:
        """The records, one ``bytes`` each (split once, on first use: a failed batch, a resumed one)."""
        if self._records is None:
            self._records = list(_records_of_lines(_lines(self.data)))
        return self._records

    def __len__(self) -> int:
        return self.length

    @overload
    def __getitem__(self, index: int) -> bytes: ...
    @overload
    def __getitem__(self, index: slice) -> list[bytes]: ...
    def __getitem__(self, index: int | slice) -> bytes | list[bytes]:
        return self.records()[index]


def csv_data(values: Sequence[Any], lo: int, hi: int) -> bytes:
    """The COPY data of raw CSV records ``values[lo:hi]`` (a whole :class:`CsvBlock` as is, without a copy)."""
    if isinstance(values, CsvBlock) and lo == 0 and hi == len(values):
        return values.data
    return b"".join(values[lo:hi])


class CsvRecords(Iterator[bytes]):
    """The raw CSV records of a binary file: one by one, or in blocks of whole records (:meth:`blocks`)."""

    def __init__(self, file: IO[bytes]) -> None:
        self._file = file
        self._records: Iterator[bytes] | None = None

    def __next__(self) -> bytes:
        if self._records is None:
            self._records = _records_of_lines(self._file)
        return next(self._records)

    def blocks(self, size: int, read_size: int = 1 << 20) -> Iterator[CsvBlock]:
        """Blocks of ``size`` whole records (the last may hold fewer), from where the file is (see :func:`csv_blocks`)."""
        return csv_blocks(self._file.read, size, read_size)


def csv_blocks(read: Callable[[int], bytes], size: int, read_size: int = 1 << 20) -> Iterator[CsvBlock]:
    """Raw CSV from ``read`` in blocks of ``size`` whole records (the last may hold fewer): no Python work per record.

    The data is read ``read_size`` bytes at a time and cut at record ends: a newline outside
    quotes. A stretch whose quoted fields hold no newline (always so for a file without ``"``) has
    a record end at every newline, counted and found with ``bytes.count``/``find``; a stretch with
    a newline inside quotes is split record by record (as :func:`csv_records` does). A last record
    without its newline gets one.
    """
    pieces: list[bytes] = []  # whole records for the next block
    count = 0  # how many
    rest = b""  # what was read after the last record end
    avg = 0.0  # bytes per record so far (to find the n-th newline in few steps)
    while True:
        data = read(read_size)
        if data:
            whole, rest = _cut_at_record_end(rest + data if rest else data)
        else:
            whole, rest = rest, b""
        if whole:
            parts = whole.split(b'"') if b'"' in whole else [whole]
            if len(parts) % 2 == 0 or b"\n" in b"".join(parts[1::2]):  # a newline inside quotes (or a quote left open)
                records = list(_records_of_lines(_lines(whole)))
                while count + len(records) >= size:
                    take, records = records[: size - count], records[size - count :]
                    yield CsvBlock(b"".join([*pieces, *take]), size)
                    pieces, count = [], 0
                if records:
                    pieces.append(b"".join(records))
                    count += len(records)
            else:
                whole = whole if whole.endswith(b"\n") else whole + b"\n"  # the last record, without its newline
                start = 0
                avg = avg or len(whole) / max(1, whole.count(b"\n", 0, 1 << 16))
                while start < len(whole):
                    end, seen = _nth_newline(whole, start, size - count, avg)
                    if end < 0:  # fewer records left than the block needs: they start the next one
                        pieces.append(whole[start:])
                        count += seen
                        break
                    pieces.append(whole[start : end + 1])
                    block = CsvBlock(b"".join(pieces), size)
                    avg = len(block.data) / size
                    yield block
                    pieces, count, start = [], 0, end + 1
        if not data:
            break
    if count:
        yield CsvBlock(b"".join(pieces), count)


def _cut_at_record_end(data: bytes) -> tuple[bytes, bytes]:
    """``data`` as (whole records, the rest): cut after the last newline outside quotes."""
    last = data.rfind(b"\n")
    if last < 0:
        return b"", data
    if b'"' not in data:
        return data[: last + 1], data[last + 1 :]
    head = data[: last + 1]
    parts = head.split(b'"')
    if len(parts) % 2 == 1:  # an even number of quotes before the last newline: it is outside quotes
        return head, data[last + 1 :]
    start = len(head) - len(parts[-1])  # where part i starts (here: the last one)
    for i in range(len(parts) - 1, -1, -1):
        if i % 2 == 0 and (at := parts[i].rfind(b"\n")) >= 0:  # the parts outside quotes have even indexes
            return data[: start + at + 1], data[start + at + 1 :]
        if i:
            start -= len(parts[i - 1]) + 1
    return b"", data


def _nth_newline(data: bytes, start: int, n: int, avg: float) -> tuple[int, int]:
    """The index of the ``n``-th newline at or after ``start``, or -1 and how many there are when fewer.

    ``avg`` (bytes per line, a guess) lets the search jump ahead, counting what it jumps over with
    ``bytes.count``, so the data is scanned about once, whatever ``n``.
    """
    found = 0
    while n > 64:
        end = min(start + int(n * avg * 0.9) + 1, len(data))
        seen = data.count(b"\n", start, end)
        if seen >= n:  # jumped too far: a shorter guess
            avg /= 2
            continue
        n, start, found = n - seen, end, found + seen
        if end == len(data):
            return -1, found
    at = start - 1
    for i in range(n):
        at = data.find(b"\n", at + 1)
        if at < 0:
            return -1, found + i
    return at, found + n


def key_from_text(text: str, type_name: str) -> Any:
    """A shard key read from CSV text, as the Python value the column holds (placement hashes ``42`` and ``"42"`` apart)."""
    bare = re.sub(r"\(.*\)", "", type_name).strip()
    if bare in ("smallint", "integer", "bigint"):
        return int(text)
    if bare == "uuid":
        return uuid.UUID(text)
    return text


def csv_fields(record: bytes) -> list[str]:
    """The fields of one raw CSV record (for routing a row by its shard key, and for reject files)."""
    return next(csv.reader([record.decode().rstrip("\r\n")]), [])


# -- input rows and resume positions ------------------------------------------------------------------


@dataclass(slots=True)
class Progress:
    """What a load did so far (the progress callback gets it after each flush; the load returns it at the end)."""

    read: int = 0
    loaded: int = 0
    rejected: int = 0
    skipped: int = 0
    batches: int = 0
    per_group: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0

    @property
    def rows_per_second(self) -> float:
        """Rows loaded per second of this run (0 before the first batch)."""
        return self.loaded / self.seconds if self.seconds > 0 else 0.0


@dataclass(slots=True)
class Batch:
    """One group's rows of one input chunk: their input numbers (ascending) and values, loaded in one COPY."""

    numbers: Sequence[int]
    values: Sequence[Any]

    def __len__(self) -> int:
        return len(self.values)

    def row(self, index: int) -> Row:
        """Row ``index`` of the batch (with its input number)."""
        return Row(self.numbers[index], self.values[index])

    def before(self, number: int) -> Batch:
        """The rows numbered below ``number``."""
        cut = bisect_left(self.numbers, number)
        return Batch(self.numbers[:cut], self.values[:cut])


@dataclass(slots=True)
class Chunk:
    """One chunk of input: each target's batch (input order kept), the rows that could not be converted."""

    batches: dict[str, Batch]
    rejected: list[Rejected]


def convert_rows(
    raw: Sequence[Any], first: int, convert: Callable[[Any], Any], width: int | None
) -> tuple[Sequence[int], Sequence[Any], list[Rejected]]:
    """Convert one chunk: numbers, values, rejected rows.

    Fast path (no Python call per row): every row already is a tuple of ``width`` values (or
    ``width`` is None: raw CSV records, checked by the server).
    """
    if width is None or (set(map(type, raw)) == {tuple} and set(map(len, raw)) == {width}):
        return range(first, first + len(raw)), raw, []
    numbers: list[int] = []
    values: list[Any] = []
    rejected: list[Rejected] = []
    for number, item in enumerate(raw, first):
        try:
            values.append(convert(item))
        except ValueError as exc:
            rejected.append(Rejected(number, str(exc), data=item))
            continue
        numbers.append(number)
    return numbers, values, rejected


def target_name(group: str, lane: int, lanes: int) -> str:
    """The name a group's lane loads and records its position under: ``main``, or ``main#1`` with parallel lanes."""
    return group if lanes == 1 else f"{group}#{lane}"


def group_of(target: str) -> str:
    """The group of a target name (see :func:`target_name`)."""
    return target.split("#", 1)[0]


def previous_lane(target: str) -> str:
    """The target of the lane before ``target`` in the same group (``main#2`` → ``main#1``), ``""`` for the first."""
    group, _, lane = target.partition("#")
    return f"{group}#{int(lane) - 1}" if lane and int(lane) > 0 else ""


def chunks(
    raw_rows: Iterable[Any],
    size: int,
    convert: Callable[[Any], Any],
    width: int | None,
    group_for: Callable[[Row], str] | None,
    default_group: str,
    positions: Mapping[str, int],
    progress: Progress,
    lanes: int = 1,
) -> Iterator[Chunk]:
    """Number the input rows, convert them and route them, ``size`` rows at a time (bounded memory).

    Chunk ``k`` (rows ``k·size+1 … (k+1)·size``) goes to lane ``k % lanes`` of each group, so a lane's
    rows are fixed by ``size`` and ``lanes`` alone and its batches commit in input order. The
    batches are keyed by target (:func:`target_name`); rows at or below their target's recorded
    resume position are left out (``progress.skipped``). ``group_for`` None: every row goes to
    ``default_group`` (no per-row routing cost); then raw CSV records of a file
    (:class:`CsvRecords`) are read as whole blocks (:class:`CsvBlock`: no Python work per record).
    """
    pieces: Iterator[Sequence[Any]]
    if group_for is None and isinstance(raw_rows, CsvRecords):
        pieces = raw_rows.blocks(size)
    else:
        source = iter(raw_rows)
        pieces = iter(lambda: list(islice(source, size)), [])
    first = 1
    for raw in pieces:
        last = first + len(raw) - 1
        lane = ((first - 1) // size) % lanes
        progress.read = last
        if group_for is None:
            target = target_name(default_group, lane, lanes)
            floor = positions.get(target, 0)
            if floor >= last:
                progress.skipped += len(raw)
                first = last + 1
                yield Chunk({}, [])  # keeps one chunk per lane in step
                continue
            start = first
            if floor >= first:
                raw, progress.skipped, start = raw[floor - first + 1 :], progress.skipped + floor - first + 1, floor + 1
            numbers, values, rejected = convert_rows(raw, start, convert, width)
            first = last + 1
            yield Chunk({target: Batch(numbers, values)} if values else {}, rejected)
            continue
        numbers, values, rejected = convert_rows(raw, first, convert, width)
        first = last + 1
        routed: dict[str, tuple[list[int], list[Any]]] = {}
        for number, value in zip(numbers, values, strict=True):
            target = target_name(group_for(Row(number, value)), lane, lanes)
            if number <= positions.get(target, 0):
                progress.skipped += 1
                continue
            target_numbers, target_values = routed.setdefault(target, ([], []))
            target_numbers.append(number)
            target_values.append(value)
        yield Chunk({target: Batch(*pair) for target, pair in routed.items()}, rejected)


# -- failed batches -------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Split:
    """What to do after a span ``rows[lo:hi]`` failed: spans to retry in order, and the row (index) to reject."""

    before: tuple[int, int] | None
    reject: int | None
    after: list[tuple[int, int]]


def split_failed(lo: int, hi: int, failed_at: int | None) -> Split:
    """Plan the retry of the failed span ``[lo, hi)``.

    ``failed_at`` is the index (absolute, ``lo ≤ i < hi``) of the row the server named, or None.
    Named: retry ``[lo, i)``, reject ``i``, continue with ``[i+1, hi)``. Not named: reject the row
    if it is alone, else bisect into two halves retried in order.
    """
    if failed_at is not None and lo <= failed_at < hi:
        return Split(
            (lo, failed_at) if failed_at > lo else None, failed_at, [(failed_at + 1, hi)] if failed_at + 1 < hi else []
        )
    if hi - lo <= 1:
        return Split(None, lo, [])
    mid = (lo + hi) // 2
    return Split(None, None, [(lo, mid), (mid, hi)])


_CONTEXT = re.compile(r'COPY [^,]+, line (\d+)(?:, column ([^:]+?))?(?:: "(.*)")?$', re.MULTILINE | re.DOTALL)
_KEY = re.compile(r"Key \(([^)]*)\)=\((.*)\)")


@dataclass(frozen=True, slots=True)
class Located:
    """Where the server says a COPY failed: the 1-based line within the COPY data, and column/value if said."""

    line: int | None
    column: str | None
    value: str | None


def locate(context: str | None, detail: str | None, column: str | None) -> Located:
    """Parse PostgreSQL's error fields (CONTEXT ``COPY t, line 3, column qty: "abc"``, DETAIL ``Key (id)=(5) …``)."""
    line = value = None
    if context:
        match = _CONTEXT.search(context)
        if match:
            line = int(match.group(1))
            column = column or (match.group(2) or None)
            value = match.group(3) if match.group(2) else None  # without a column, the quoted text is the whole line
    if detail and column is None:
        key = _KEY.search(detail)
        if key:
            column, value = key.group(1), key.group(2)
    return Located(line, column, value)


def value_of(row: Row, columns: Sequence[str], column: str | None, fallback: str | None) -> Any:
    """The value of ``column`` in ``row`` (a typed tuple), else the server's quoted value."""
    if column is not None and isinstance(row.values, tuple) and column in columns:
        return row.values[list(columns).index(column)]
    return fallback


__all__ = [
    "BINARY_TYPES",
    "Batch",
    "Chunk",
    "CopyFormat",
    "CsvBlock",
    "CsvRecords",
    "InputFormat",
    "Located",
    "OnError",
    "Progress",
    "Rejected",
    "Row",
    "Split",
    "chunks",
    "convert_rows",
    "copy_format",
    "csv_blocks",
    "csv_data",
    "csv_fields",
    "csv_records",
    "group_of",
    "key_from_text",
    "locate",
    "previous_lane",
    "split_failed",
    "target_name",
    "to_values",
    "value_of",
]
