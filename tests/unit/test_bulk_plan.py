"""The bulk loader's pure decisions: CSV records, chunks and resume skipping, failed-batch splitting, error parsing."""

from __future__ import annotations

from collections import deque

import pytest
from hypothesis import given
from hypothesis import strategies as st

from dbscale.bulk.plan import (
    CsvBlock,
    Progress,
    Rejected,
    Row,
    chunks,
    copy_format,
    csv_blocks,
    csv_data,
    csv_fields,
    csv_records,
    key_from_text,
    locate,
    previous_lane,
    split_failed,
    to_values,
)


def lines(text: str) -> list[bytes]:
    return text.encode().splitlines(keepends=True)


def test_csv_records_join_quoted_newlines_and_pass_plain_lines_through() -> None:
    plain = lines("1,a\n2,b\n3,c")
    assert list(csv_records(plain, chunk=2)) == [b"1,a\n", b"2,b\n", b"3,c\n"]
    quoted = lines('1,"x\ny"\n2,"say ""hi"""\n3,z\n')
    assert list(csv_records(quoted, chunk=2)) == [b'1,"x\ny"\n', b'2,"say ""hi"""\n', b"3,z\n"]
    assert csv_fields(b'2,"say ""hi"""\n') == ["2", 'say "hi"']


@given(st.lists(st.tuples(st.integers(0, 99), st.text('ab,"\n ', max_size=6)), max_size=30), st.integers(1, 5))
def test_csv_records_agree_with_the_csv_module(rows: list[tuple[int, str]], chunk: int) -> None:
    import csv
    import io

    buffer = io.StringIO()
    csv.writer(buffer, lineterminator="\n").writerows(rows)
    records = list(csv_records(lines(buffer.getvalue()), chunk=chunk))
    assert [csv_fields(r) for r in records] == [[str(n), s] for n, s in rows]


def csv_text(rows: list[tuple[int, str]]) -> bytes:
    import csv
    import io

    buffer = io.StringIO()
    csv.writer(buffer, lineterminator="\n").writerows(rows)
    return buffer.getvalue().encode()


def read_blocks(data: bytes, size: int, read_size: int) -> list[CsvBlock]:
    import io

    return list(csv_blocks(io.BytesIO(data).read, size, read_size))


@given(
    st.lists(st.tuples(st.integers(0, 10**6), st.text('ab,"\n ', max_size=8)), max_size=40),
    st.integers(1, 7),
    st.integers(1, 40),
    st.booleans(),
)
def test_csv_blocks_cut_whole_records_as_csv_records_does(
    rows: list[tuple[int, str]], size: int, read_size: int, last_newline: bool
) -> None:
    """Blocks of ``size`` records, cut only at record ends (whatever the read size), agree with csv_records."""
    data = csv_text(rows)
    if not last_newline:
        data = data[:-1]
    blocks = read_blocks(data, size, read_size)
    expected = list(csv_records(lines(data.decode())))
    assert [len(b) for b in blocks[:-1]] == [size] * (len(blocks) - 1) and all(0 < len(b) <= size for b in blocks)
    assert [r for b in blocks for r in b.records()] == expected
    assert b"".join(b.data for b in blocks) == b"".join(expected)
    assert [csv_fields(r) for b in blocks for r in b] == [[str(n), s] for n, s in rows]


def test_csv_blocks_of_a_plain_file_are_its_bytes_cut_every_size_lines() -> None:
    data = b"".join(b"%d,item %d\n" % (n, n) for n in range(1, 10_001))
    blocks = read_blocks(data, 1_000, 4_096)
    assert [len(b) for b in blocks] == [1_000] * 10
    assert blocks[3].data.startswith(b"3001,") and blocks[3].data.endswith(b"4000,item 4000\n")
    assert csv_data(blocks[3], 0, 1_000) is blocks[3].data
    assert csv_data(blocks[3], 1, 3) == b"3002,item 3002\n3003,item 3003\n"


def test_csv_records_of_a_file_reads_blocks_or_records_and_chunks_resume_inside_a_block() -> None:
    import io

    data = b"".join(b'%d,"a\nb"\n' % n if n % 10 == 0 else b"%d,x\n" % n for n in range(1, 101))
    assert list(csv_records(io.BytesIO(data))) == list(csv_records(lines(data.decode())))
    progress = Progress()
    seen: list[tuple[int, bytes]] = []
    for chunk in chunks(csv_records(io.BytesIO(data)), 30, bytes, None, None, "g", {"g": 45}, progress):
        for batch in chunk.batches.values():
            seen.extend(zip(batch.numbers, batch.values, strict=True))
    assert progress.skipped == 45 and [n for n, _ in seen] == list(range(46, 101))
    assert seen[4] == (50, b'50,"a\nb"\n') and seen[5] == (51, b"51,x\n")


def test_to_values_takes_tuples_and_mappings_and_names_what_is_wrong() -> None:
    assert to_values({"b": 2, "a": 1}, ["a", "b"]) == (1, 2)
    assert to_values([1, 2], ["a", "b"]) == (1, 2)
    with pytest.raises(ValueError, match="3 values for 2 columns"):
        to_values((1, 2, 3), ["a", "b"])
    with pytest.raises(ValueError, match="missing 'b'; unknown 'c'"):
        to_values({"a": 1, "c": 3}, ["a", "b"])
    with pytest.raises(ValueError, match="unreadable input"):
        to_values(ValueError("not JSON"), ["a"])


def test_copy_format_is_binary_only_when_every_type_has_a_binary_dumper() -> None:
    assert copy_format(["bigint", "numeric(10,2)", "character varying(20)", "date"]) == "binary"
    assert copy_format(["bigint", "mood"]) == "text"


def test_key_from_text_gives_the_value_the_column_holds() -> None:
    assert key_from_text("42", "bigint") == 42
    assert key_from_text("42", "text") == "42"


def run_chunks(
    rows: list[tuple[int, ...]], size: int, positions: dict[str, int], *, groups: int = 1
) -> tuple[dict[str, list[int]], Progress]:
    progress = Progress()
    route = None if groups == 1 else (lambda row: f"g{row.values[0] % groups}")
    seen: dict[str, list[int]] = {}
    for chunk in chunks(rows, size, tuple, 1, route, "g0", positions, progress):
        for group, batch in chunk.batches.items():
            assert len(batch) <= size
            seen.setdefault(group, []).extend(batch.numbers)
    return seen, progress


def test_chunks_skip_exactly_what_each_group_committed() -> None:
    rows = [(n,) for n in range(1, 101)]
    seen, progress = run_chunks(rows, 7, {"g0": 30})
    assert seen == {"g0": list(range(31, 101))} and progress.skipped == 30 and progress.read == 100
    seen, progress = run_chunks(rows, 7, {"g0": 40, "g1": 10}, groups=2)
    assert seen["g0"] == [n for n in range(41, 101) if n % 2 == 0]
    assert seen["g1"] == [n for n in range(11, 101) if n % 2 == 1]


def test_chunks_reject_rows_that_cannot_be_converted() -> None:
    progress = Progress()
    out = list(chunks([(1, 2), (3,), (4, 5)], 10, lambda r: to_values(r, ["a", "b"]), 2, None, "g", {}, progress))
    assert [b.numbers for b in out[0].batches.values()] == [[1, 3]]
    assert [(r.number, r.reason) for r in out[0].rejected] == [(2, "1 values for 2 columns ['a', 'b']")]


@given(st.integers(1, 60).flatmap(lambda n: st.tuples(st.just(n), st.sets(st.integers(0, n - 1)), st.booleans())))
def test_splitting_commits_every_good_row_once_in_order_and_rejects_exactly_the_bad(
    case: tuple[int, set[int], bool],
) -> None:
    """Simulate COPY: a span fails at its first bad row (named by the server, or not); the split loses nothing."""
    n, bad, named = case
    committed: list[int] = []
    rejected: list[int] = []
    work: deque[tuple[int, int] | int] = deque([(0, n)])
    attempts = 0
    while work:
        item = work.popleft()
        if isinstance(item, int):
            rejected.append(item)
            continue
        lo, hi = item
        attempts += 1
        first_bad = next((i for i in range(lo, hi) if i in bad), None)
        if first_bad is None:
            committed.extend(range(lo, hi))
            continue
        split = split_failed(lo, hi, first_bad if named else None)
        retry: list[tuple[int, int] | int] = [split.before] if split.before else []
        if split.reject is not None:
            retry.append(split.reject)
        work.extendleft(reversed([*retry, *split.after]))
    assert committed == [i for i in range(n) if i not in bad]
    assert rejected == sorted(bad)
    if named:
        assert attempts <= 2 * len(bad) + 1


def test_locate_reads_postgres_copy_context_and_key_detail() -> None:
    where = locate('COPY t, line 3, column qty: "abc"', None, None)
    assert (where.line, where.column, where.value) == (3, "qty", "abc")
    where = locate("COPY t, line 7", "Key (id)=(5) already exists.", None)
    assert (where.line, where.column, where.value) == (7, "id", "5")
    assert locate(None, None, "name").column == "name"
    # a NOT NULL violation names the column in its own field; the context quotes the whole line, not a value
    where = locate('COPY t, line 1: "1,a"', None, "qty")
    assert (where.line, where.column, where.value) == (1, "qty", None)


def test_rejected_describes_row_column_and_value() -> None:
    bad = Rejected(500_001, 'invalid input syntax for type integer: "x"', "qty", "x")
    assert bad.describe() == "row 500001, column 'qty' (value 'x'): invalid input syntax for type integer: \"x\""
    assert Row(1, (1,)).number == 1


def test_lanes_take_alternate_chunks_and_resume_per_lane() -> None:
    rows = [(n,) for n in range(1, 51)]
    progress = Progress()
    positions = {"g#0": 20, "g#1": 10}  # lane 0 (chunks 1-10, 21-30, …) committed chunk 1; lane 1 nothing
    seen: dict[str, list[int]] = {}
    for chunk in chunks(rows, 10, tuple, 1, None, "g", positions, progress, lanes=2):
        for target, batch in chunk.batches.items():
            seen.setdefault(target, []).extend(batch.numbers)
    assert seen == {"g#0": [*range(21, 31), *range(41, 51)], "g#1": [*range(11, 21), *range(31, 41)]}
    assert progress.skipped == 10
    assert (previous_lane("g#1"), previous_lane("g#0"), previous_lane("g")) == ("g#0", "", "")
