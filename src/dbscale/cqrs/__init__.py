"""CQRS: an event log written in the command's own transaction, and projectors that fold it into read models.

Theory of operation
-------------------
**Appending.** ``cluster.events.append(conn, type, payload, aggregate_id=...)`` runs one statement
in the caller's ``cluster.write()`` transaction, so the event exists if and only if the command
commits. The statement advances the aggregate's row in ``dbscale_event_streams`` (the per-aggregate
lock and version counter: ``expected_version`` is a compare-and-set on it, a mismatch raises
``ConcurrencyError``) and inserts the event into ``dbscale_events``. Appenders to different
aggregates take no common lock. A statement trigger sends ``NOTIFY dbscale_events`` (delivered at
commit).

**Reading without skipping (the xid8 technique).** A ``bigserial`` id is taken at insert but becomes
visible at commit, so event 11 can be seen before event 10; a reader remembering "last id" skips 10
forever. Each event instead stores ``tx``: the appending transaction's id (``pg_current_xact_id()``,
an ``xid8``). Projectors read in ``(tx, id)`` order and only events with
``tx < pg_snapshot_xmin(pg_current_snapshot())`` — every transaction below that horizon has
finished, so nothing can still appear before the rows read, and a transaction still open has an
id at or above the horizon, hence above every position already passed. Writers take no lock for
this; a long-running writer transaction holds the horizon (and so the projector) back, which shows
as lag, never as a skip. Proven by ``tests/integration/test_cqrs_ordering.py`` (with a "last id"
control that does skip) and the model test ``tests/unit/test_cqrs_core.py``.

**Per-aggregate order.** Transaction ids are assigned at a transaction's first write, not at its
append, so a transaction A with a lower id could append version 2 after B (higher id) appended
version 1. The append therefore stores ``tx = greatest(own xid, previous event's tx)`` for the
aggregate (kept in the stream row). The stored ``tx`` is never below the real one, so the horizon
argument holds unchanged, and an aggregate's events are in version order in ``(tx, id)`` order;
:func:`~dbscale.cqrs.core.plan_batch` checks it.

**Exactly once.** A batch runs in one transaction on the target: lock the projector's checkpoint row
(``SELECT ... FOR UPDATE``), fetch the next events after it, run the handlers, store the new
checkpoint, commit. A crash anywhere loses the whole batch or none of it; a second instance that
slips past the lease waits on the row lock and then skips what the first applied.

**Running.** ``run_once()`` catches up in bounded batches; ``run()`` holds a lease (a session
advisory lock on the target primary — a standby worker takes over when the holder's connection
dies), catches up, then waits for a notification or ``poll_interval`` (the fallback when a
notification is lost). ``rebuild()`` replays the whole log into fresh tables in a side schema and
swaps them in with the checkpoint in one transaction.
"""

from dbscale.cqrs.aio import AsyncHandler, AsyncProjector, AsyncSetup
from dbscale.cqrs.core import Event, Position, ProjectionStatus
from dbscale.cqrs.log import EventLog
from dbscale.cqrs.log_aio import Appended, AsyncEventLog
from dbscale.cqrs.sync import Handler, Projector, Setup
from dbscale.errors import ConcurrencyError, CqrsError, ProjectionError

__all__ = [
    "Appended",
    "AsyncEventLog",
    "AsyncHandler",
    "AsyncProjector",
    "AsyncSetup",
    "ConcurrencyError",
    "CqrsError",
    "Event",
    "EventLog",
    "Handler",
    "Position",
    "ProjectionError",
    "ProjectionStatus",
    "Projector",
    "Setup",
]
