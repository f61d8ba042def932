"""Bulk loading with COPY: fast, resumable, shard-aware (:func:`bulk_load`, :func:`bulk_load_async`, ``dbscale load``).

The names are imported on first use (PEP 562): ``dbscale load`` imports the blocking loader alone.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from dbscale.bulk.aio import AsyncBulkLoader, bulk_load_async
    from dbscale.bulk.plan import Progress, csv_records
    from dbscale.bulk.shell import BulkLoader, bulk_load

_WHERE = {
    "AsyncBulkLoader": "dbscale.bulk.aio",
    "bulk_load_async": "dbscale.bulk.aio",
    "Progress": "dbscale.bulk.plan",
    "csv_records": "dbscale.bulk.plan",
    "BulkLoader": "dbscale.bulk.shell",
    "bulk_load": "dbscale.bulk.shell",
}


def __getattr__(name: str) -> Any:
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = globals()[name] = getattr(importlib.import_module(module), name)
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_WHERE])


__all__ = ["AsyncBulkLoader", "BulkLoader", "Progress", "bulk_load", "bulk_load_async", "csv_records"]
