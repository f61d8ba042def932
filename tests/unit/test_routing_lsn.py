"""LSNs and causal tokens: parse/format round trips, ordering, garbage rejected with a clear error."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from dbscale.routing.context import CausalContext
from dbscale.routing.lsn import (
    InvalidCausalToken,
    Mark,
    format_lsn,
    format_token,
    merge_marker,
    merge_tokens,
    parse_lsn,
    parse_token,
    record_boundary,
)

lsns = st.integers(min_value=0, max_value=2**64 - 1)
groups = st.from_regex(r"\A[A-Za-z][A-Za-z0-9_-]{0,10}\Z")


@given(lsns)
def test_lsn_round_trip(value: int) -> None:
    assert parse_lsn(format_lsn(value)) == value


@given(lsns, lsns)
def test_lsn_order_is_numeric_not_textual(a: int, b: int) -> None:
    # "9/0" < "10/0" numerically though not as text: comparisons must use parsed values
    assert (parse_lsn(format_lsn(a)) < parse_lsn(format_lsn(b))) == (a < b)


def test_lsn_matches_postgres_rendering() -> None:
    assert parse_lsn("16/B374D848") == (0x16 << 32) | 0xB374D848
    assert format_lsn(0x3000060) == "0/3000060"
    assert parse_lsn("0/3000060") < parse_lsn("10/0")


@given(st.dictionaries(groups, st.builds(Mark, lsn=lsns), min_size=1, max_size=4))
def test_token_round_trip(marks: dict[str, Mark]) -> None:
    assert parse_token(format_token(marks)) == marks


def test_token_carries_group_and_time_marks() -> None:
    token = format_token({"main": Mark(lsn=0x3000060), "shard0": Mark(at=1712345678.25)})
    assert token == "main/0/3000060,shard0/@1712345678.250"
    assert parse_token(token) == {"main": Mark(lsn=0x3000060), "shard0": Mark(at=1712345678.25)}


@pytest.mark.parametrize(
    "garbage",
    [
        "0/3000060",
        "main",
        "main/",
        "main/xyz/1",
        "main/0/",
        "main/123456789/0",
        "1main/0/1",
        "main/@",
        "main/@-1",
        "main/@nan",
        "main/0/1,",
        "main/0/1;drop",
    ],
)
def test_garbage_tokens_raise_clear_error(garbage: str) -> None:
    with pytest.raises(InvalidCausalToken, match=r"causal token|LSN|expected|epoch"):
        parse_token(garbage)


def test_non_string_token_rejected() -> None:
    with pytest.raises(InvalidCausalToken):
        parse_token(12345)  # type: ignore[arg-type]


def test_empty_token_means_no_marks() -> None:
    assert parse_token("") == {}


@given(lsns, lsns)
def test_marks_merge_to_the_later(a: int, b: int) -> None:
    assert Mark(lsn=a).merge(Mark(lsn=b)).lsn == max(a, b)


def test_record_boundary_strips_page_header_only() -> None:
    page_start = 5 * 8192
    assert record_boundary(page_start + 24) == page_start
    assert record_boundary(16 * 1024 * 1024 + 40) == 16 * 1024 * 1024
    assert record_boundary(page_start + 25) == page_start + 25
    assert record_boundary(page_start) == page_start


def test_context_marks_are_per_cluster_and_merge_with_carried_token() -> None:
    a, b = CausalContext(), CausalContext()
    assert a.token() is None
    a.record("main", Mark(lsn=100))
    a.record("main", Mark(lsn=50))  # never moves backwards
    assert a.token() == "main/0/64"
    assert b.token() is None  # a second cluster object does not see the first's writes
    carried = a.token()
    assert b.mark_for("main", carried) == Mark(lsn=100)
    assert b.mark_for("shard0", carried) is None
    b.record("main", Mark(lsn=200))
    assert b.mark_for("main", carried) == Mark(lsn=200)


def test_context_is_per_thread() -> None:
    import threading

    ctx = CausalContext()
    ctx.record("main", Mark(lsn=1))
    seen: list[str | None] = []
    t = threading.Thread(target=lambda: seen.append(ctx.token()))
    t.start()
    t.join()
    assert seen == [None]


@given(st.dictionaries(groups, lsns, max_size=3), st.dictionaries(groups, lsns, max_size=3))
def test_merge_tokens_keeps_the_later_mark_per_group(a: dict[str, int], b: dict[str, int]) -> None:
    ta = format_token({g: Mark(lsn=v) for g, v in a.items()})
    tb = format_token({g: Mark(lsn=v) for g, v in b.items()})
    merged = parse_token(merge_tokens(ta, None, tb, ""))
    assert {g: m.lsn for g, m in merged.items()} == {g: max(a.get(g, 0), b.get(g, 0)) for g in {*a, *b}}
    assert merge_tokens(ta, tb) == merge_tokens(tb, ta)  # canonical: order does not matter


def test_merge_tokens_reads_long_marker_chains_part_by_part() -> None:
    chain = ",".join(f"main/0/{i:X}" for i in range(1, 600))  # > 4096 characters: too long for parse_token
    assert len(chain) > 4096
    assert merge_tokens(chain, "main/@5.000") == "main/0/257,main/@5.000"
    assert merge_tokens(None, "") == ""
    with pytest.raises(InvalidCausalToken):
        merge_tokens("main/0/1,garbage")


def test_merge_marker_skips_foreign_parts_and_keeps_the_valid_positions() -> None:
    good_a = format_token({"main": Mark(lsn=0x3000060)})
    good_b = format_token({"shard0": Mark(lsn=0x1000)})
    mine = format_token({"main": Mark(lsn=0x10)})
    chain = ",".join([good_a, "\x00junk", good_b, "main/zz"])
    merged, bad = merge_marker(chain, mine)
    assert parse_token(merged) == {"main": Mark(lsn=0x3000060), "shard0": Mark(lsn=0x1000)}
    assert bad == ["\x00junk", "main/zz"]
    with pytest.raises(InvalidCausalToken):  # the strict merge voids the whole chain: why markers use this one
        merge_tokens(mine, chain)
