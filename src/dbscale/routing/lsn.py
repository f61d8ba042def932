"""PostgreSQL log sequence numbers and the portable causal tokens built from them (pure).

An LSN is a 64-bit WAL position that PostgreSQL prints as two hex halves, ``16/B374D848``. A causal
token names the write positions a reader must have seen, one per group, as text a web application
can carry in a cookie or header:

* ``main/16/B374D848`` — LSN mode: a replica is fresh enough once its replay LSN reaches it;
* ``main/@1712345678.250`` — time mode (``read_your_writes = "delay:2s"``): the wall-clock time of
  the write; reads go to the primary until the delay has passed.

Several groups are joined with commas: ``main/0/3000060,shard0/0/1A2B3C``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TypeVar

from dbscale.errors import InvalidCausalToken

_LSN = re.compile(r"^([0-9A-Fa-f]{1,8})/([0-9A-Fa-f]{1,8})$")
_GROUP = re.compile(r"^[A-Za-z][A-Za-z0-9_-]{0,62}$")
_MAX_LSN = (1 << 64) - 1
_T = TypeVar("_T", int, float)


def parse_lsn(text: str) -> int:
    """Return the integer position of an LSN written as ``X/Y`` (two hex numbers of up to 8 digits)."""
    match = _LSN.match(text.strip()) if isinstance(text, str) else None
    if match is None:
        raise InvalidCausalToken(f"{text!r} is not a PostgreSQL LSN (expected two hex numbers like '16/B374D848')")
    return (int(match.group(1), 16) << 32) | int(match.group(2), 16)


def format_lsn(value: int) -> str:
    """Render an integer WAL position the way PostgreSQL does (``16/B374D848``)."""
    if not 0 <= value <= _MAX_LSN:
        raise ValueError(f"LSN {value} is outside 0..2**64-1")
    return f"{value >> 32:X}/{value & 0xFFFFFFFF:X}"


@dataclass(frozen=True, slots=True)
class Mark:
    """What one group's reader must have seen: a WAL position (``lsn``) or a write time (``at``)."""

    lsn: int | None = None
    at: float | None = None

    def merge(self, other: Mark) -> Mark:
        """The later of two marks, field by field (marks only ever move forward)."""
        return Mark(_max_opt(self.lsn, other.lsn), _max_opt(self.at, other.at))


def _max_opt(a: _T | None, b: _T | None) -> _T | None:
    if a is None:
        return b
    if b is None:
        return a
    return max(a, b)


def format_token(marks: Mapping[str, Mark]) -> str:
    """Render per-group marks as one token string (groups sorted, so equal tokens compare equal)."""
    parts: list[str] = []
    for group in sorted(marks):
        mark = marks[group]
        if mark.lsn is not None:
            parts.append(f"{group}/{format_lsn(mark.lsn)}")
        if mark.at is not None:
            parts.append(f"{group}/@{mark.at:.3f}")
    return ",".join(parts)


def parse_token(token: str) -> dict[str, Mark]:
    """Parse a token from :func:`format_token`; raise :class:`InvalidCausalToken` naming the bad part."""
    if not isinstance(token, str):
        raise InvalidCausalToken(f"a causal token is a string, not {type(token).__name__}")
    marks: dict[str, Mark] = {}
    text = token.strip()
    if not text:
        return marks
    if len(text) > 4096:
        raise InvalidCausalToken("causal token is longer than 4096 characters; pass the string causal_token() returned")
    for part in text.split(","):
        group, sep, rest = part.strip().partition("/")
        if not sep or not _GROUP.match(group):
            raise InvalidCausalToken(
                f"{_shown(part)} is not a causal token part (expected 'group/X/Y' or 'group/@time')"
            )
        if rest.startswith("@"):
            try:
                at = float(rest[1:])
            except ValueError:
                at = float("nan")
            if not at >= 0 or at == float("inf"):
                raise InvalidCausalToken(f"{_shown(part)}: the time after '@' must be seconds since the epoch")
            mark = Mark(at=at)
        else:
            try:
                mark = Mark(lsn=parse_lsn(rest))
            except InvalidCausalToken:
                raise InvalidCausalToken(
                    f"{_shown(part)}: expected 'group/X/Y' with a hex LSN like main/0/3000060"
                ) from None
        marks[group] = marks[group].merge(mark) if group in marks else mark
    return marks


def merge_tokens(*tokens: str | None) -> str:
    """One token naming every position the given tokens name (per group, the later mark wins).

    Parts are parsed one by one, so a long chain of markers joined by commas stays readable;
    ``None`` and ``""`` are skipped. Raises :class:`InvalidCausalToken` for a malformed part.
    """
    marks: dict[str, Mark] = {}
    for token in tokens:
        for part in (token or "").split(","):
            for group, mark in parse_token(part).items():
                marks[group] = marks[group].merge(mark) if group in marks else mark
    return format_token(marks)


def merge_marker(chain: str, *tokens: str | None) -> tuple[str, list[str]]:
    """Like :func:`merge_tokens` over ``tokens`` and the comma-joined ``chain``, skipping malformed parts.

    A marker chain lives in Redis, where anything may have written; one foreign part must not void the
    valid positions beside it (an invalidation appends to the chain, so a voided chain would stay voided).
    Returns the merged token and the malformed parts that were skipped.
    """
    merged = merge_tokens(*tokens)
    bad: list[str] = []
    for part in chain.split(","):
        try:
            merged = merge_tokens(merged, part)
        except InvalidCausalToken:
            bad.append(part)
    return merged, bad


def _shown(part: str) -> str:
    return repr(part if len(part) <= 60 else part[:57] + "...")


#: PostgreSQL's default WAL page and segment sizes (compile-time / initdb settings).
WAL_PAGE = 8192
WAL_SEGMENT = 16 * 1024 * 1024
_SHORT_HEADER = 24
_LONG_HEADER = 40


def record_boundary(insert_lsn: int) -> int:
    """Map ``pg_current_wal_insert_lsn()`` to the end of the last record written before it.

    When the insert position sits at the start of a WAL page it points past the page header
    (24 bytes, 40 at a segment start), a position no replica's replay LSN ever reports while the
    primary is idle. Everything before it ends at the page boundary, so that is the position to wait
    for.
    """
    if insert_lsn % WAL_SEGMENT == _LONG_HEADER:
        return insert_lsn - _LONG_HEADER
    if insert_lsn % WAL_PAGE == _SHORT_HEADER and insert_lsn % WAL_SEGMENT != _SHORT_HEADER:
        return insert_lsn - _SHORT_HEADER
    return insert_lsn


__all__ = [
    "InvalidCausalToken",
    "Mark",
    "format_lsn",
    "format_token",
    "merge_marker",
    "merge_tokens",
    "parse_lsn",
    "parse_token",
    "record_boundary",
]
