"""The generated CQRS sync shells match their asyncio sources, and the package exports both."""

from __future__ import annotations

import dbscale
from dbscale.cqrs import aio, log, log_aio, sync


def test_generated_classes_have_the_same_methods() -> None:
    pairs = [(aio.AsyncProjector, sync.Projector), (log_aio.AsyncEventLog, log.EventLog)]
    for source, twin in pairs:
        assert {n for n in vars(source) if not n.startswith("__")} == {n for n in vars(twin) if not n.startswith("__")}
    assert log.Appended is not log_aio.Appended and log.Appended._fields == log_aio.Appended._fields


def test_public_names() -> None:
    assert dbscale.cqrs.Projector is sync.Projector and dbscale.cqrs.AsyncProjector is aio.AsyncProjector
    assert issubclass(dbscale.ConcurrencyError, dbscale.CqrsError) and issubclass(
        dbscale.ProjectionError, dbscale.DbscaleError
    )
