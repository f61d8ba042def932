"""Parsing of human-written durations (``250ms``, ``2s``, ``5m``) and sizes (``16MB``)."""

from __future__ import annotations

import math
import re
from typing import Literal

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(us|µs|ms|s|m|h|d)?\s*$")
_DURATION_UNITS = {
    "us": 1e-6,
    "µs": 1e-6,
    "ms": 1e-3,
    "s": 1.0,
    "m": 60.0,
    "h": 3600.0,
    "d": 86400.0,
}
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(b|kb|mb|gb|kib|mib|gib)?\s*$", re.IGNORECASE)
_SIZE_UNITS = {
    "b": 1,
    "kb": 1000,
    "mb": 1000**2,
    "gb": 1000**3,
    "kib": 1024,
    "mib": 1024**2,
    "gib": 1024**3,
}


def parse_duration(value: str | float | int) -> float:
    """Return seconds for ``value``: a number of seconds, or a string like ``250ms``, ``2s``, ``5m``, ``1h``.

    Raises ``ValueError`` with the accepted forms when the value cannot be read.
    """
    if isinstance(value, bool):
        raise ValueError(f"{value!r} is not a duration (use e.g. 250ms, 2s, 5m)")
    if isinstance(value, int | float):
        seconds = float(value)
    else:
        match = _DURATION.match(value)
        if match is None:
            raise ValueError(f"{value!r} is not a duration (use e.g. 250ms, 2s, 5m, 1h, or a number of seconds)")
        seconds = float(match.group(1)) * _DURATION_UNITS[match.group(2) or "s"]
    if not math.isfinite(seconds):  # TOML reads nan and inf as floats
        raise ValueError(f"{value!r} is not a finite duration (use e.g. 250ms, 2s, 5m)")
    if seconds < 0:
        raise ValueError(f"{value!r} is negative; durations must be >= 0")
    return seconds


def parse_size(value: str | int) -> int:
    """Return bytes for ``value``: an integer, or a string like ``512kB``, ``16MB``, ``1GiB``."""
    if isinstance(value, bool):
        raise ValueError(f"{value!r} is not a size (use e.g. 16MB, 512kB, or a number of bytes)")
    if isinstance(value, int):
        size = value
    else:
        match = _SIZE.match(value)
        if match is None:
            raise ValueError(f"{value!r} is not a size (use e.g. 16MB, 512kB, 1GiB, or a number of bytes)")
        size = int(float(match.group(1)) * _SIZE_UNITS[(match.group(2) or "b").lower()])
    if size < 0:
        raise ValueError(f"{value!r} is negative; sizes must be >= 0")
    return size


def format_duration(seconds: float) -> str:
    """Render seconds compactly (``250ms``, ``2s``, ``5m``) for display."""
    if seconds < 1:
        return f"{seconds * 1000:.12g}ms"
    if seconds < 60 or seconds % 60:
        return f"{seconds:.12g}s"
    if seconds < 3600 or seconds % 3600:
        return f"{seconds / 60:.12g}m"
    return f"{seconds / 3600:.12g}h"


ReadYourWrites = Literal["lsn", "delay", "off"]


def parse_read_your_writes(text: str) -> tuple[ReadYourWrites, float]:
    """``"lsn"`` → ("lsn", 0); ``"delay:2s"`` → ("delay", 2.0); ``"off"`` → ("off", 0)."""
    mode = text.strip().lower()
    if mode.startswith("delay:"):
        return "delay", parse_duration(mode.removeprefix("delay:").strip())
    if mode in ("lsn", "off"):
        return ("lsn" if mode == "lsn" else "off"), 0.0
    raise ValueError(f"read_your_writes: {text!r} is not 'lsn', 'off' or 'delay:<duration>'")
