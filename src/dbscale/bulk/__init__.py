"""Bulk loading with COPY: fast, resumable, shard-aware (:func:`bulk_load`, :func:`bulk_load_async`, ``dbscale load``)."""

from dbscale.bulk.aio import AsyncBulkLoader, bulk_load_async
from dbscale.bulk.plan import Progress, csv_records
from dbscale.bulk.shell import BulkLoader, bulk_load

__all__ = ["AsyncBulkLoader", "BulkLoader", "Progress", "bulk_load", "bulk_load_async", "csv_records"]
