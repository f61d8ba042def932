"""Log lines for routing events: bans, readmissions, writer changes and failovers, once per event.

The routers swap immutable :class:`~dbscale.routing.core.GroupState` snapshots; comparing the one
before a change with the one after tells what happened, so each event is logged once however many
requests observed it (a dead node failing fifty in-flight reads is one ban, one line). Loggers:
``dbscale.routing`` (turn it up with ``logging.getLogger("dbscale").setLevel(logging.INFO)``).
"""

from __future__ import annotations

import logging

from dbscale.routing.core import GroupState

log = logging.getLogger("dbscale.routing")


def log_changes(group: str, before: GroupState, after: GroupState, now: float) -> None:
    """Log what changed between two snapshots of ``group`` (``now``: the routers' monotonic clock)."""
    for name, view in after.views.items():
        old = before.views.get(name)
        if old is None or view.ban is old.ban:
            continue
        if view.ban.strikes > old.ban.strikes:
            seconds = (view.ban.until or now) - now
            log.warning(
                "routing: %s banned for %.0fs (ban #%d): %s",
                _node(group, name),
                seconds,
                view.ban.strikes,
                view.ban.reason,
            )
        elif old.ban.phase(now) != "ok" and view.ban.phase(now) == "ok":
            log.warning("routing: %s readmitted after a passing health check", _node(group, name))
    if after.writer == before.writer:
        return
    if after.writer is None:
        log.warning(
            "routing: group %s has no writer (%s is gone); writes fail until one is found", group, before.writer
        )
    elif before.writer is None and before.rounds == 0:
        log.info("routing: group %s writes to %s", group, after.writer)
    elif before.writer is None:
        log.warning("routing: group %s writes to %s again", group, after.writer)
    else:
        log.warning("routing: failover in group %s: writes move from %s to %s", group, before.writer, after.writer)


def _node(group: str, name: str) -> str:
    return name if name.startswith(f"{group}-") else f"{group}/{name}"


__all__ = ["log_changes"]
