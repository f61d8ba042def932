"""Health monitors: every node of a group probed in the background.

Each node gets one dedicated autocommit connection (not from the pools, so a full pool never
blinds the monitor), reused between rounds and reopened after a failure. A round probes the due
nodes concurrently with :data:`~dbscale.routing.core.CHECK_SQL` under one deadline (hung nodes do
not add up their timeouts), and folds the results into the router's state with
:meth:`GroupRouterBase.apply_round`.

The write endpoint (PgBouncer) is checked by logging in through it, on a fresh connection each
round and without a query: a query would wait inside PgBouncer for the primary, whose health the
PostgreSQL checks already tell. A refusal of the configured credentials is reported as
:class:`~dbscale.routing.core.Refused` (permanent, no ban), any other error as itself.

The asyncio source is ``monitor_aio.py`` (the monitor runs as a task on the running loop);
``monitor.py`` is generated from it by ``scripts/unasync.py`` (a daemon thread, probes in a
thread pool); what differs lives in :mod:`dbscale._compat`.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Mapping

import psycopg

from dbscale._compat import (
    AEvent,
    ALock,
    ARunner,
    AWorkers,
    aacquire,
    aevent_wait,
    ajoin,
    asleep,
    aspawn,
    atry_acquire,
)
from dbscale.routing.core import (
    CHECK_SQL,
    CONFIRM_DELAY,
    CheckResult,
    GroupState,
    NodeCheck,
    Refused,
    needs_confirmation,
    parse_check_row,
)
from dbscale.routing.errors import failure_kind, refusal_reason
from dbscale.routing.group import GroupRouterBase

#: What a passing check of the write endpoint reports (it has no role or WAL position of its own).
ENDPOINT_UP = NodeCheck(in_recovery=False, lsn=None)


def _failed(exc: Exception) -> CheckResult:
    return Refused(refusal_reason(exc)) if failure_kind(exc) == "refused" else exc


def _connect_kwargs(timeout: float) -> dict[str, object]:
    ms = max(100, int(timeout * 1000))
    return {
        "autocommit": True,
        "connect_timeout": max(2, round(timeout)),
        "options": f"-c statement_timeout={ms} -c idle_in_transaction_session_timeout={ms * 4}",
        "application_name": "dbscale-monitor",
        "prepare_threshold": None,  # the endpoint may be PgBouncer in transaction mode
    }


class AsyncProber:
    """One node's monitor connection; at most one probe of a node runs at a time."""

    def __init__(self, conninfo: str, timeout: float, endpoint: bool = False) -> None:
        self.conninfo = conninfo
        self.timeout = timeout
        self.endpoint = endpoint
        self.lock = ALock()
        self.conn: psycopg.AsyncConnection[tuple[object, ...]] | None = None

    async def probe(self) -> CheckResult:
        if not await atry_acquire(self.lock):
            return TimeoutError("the previous health check of this node is still running")
        try:
            if self.endpoint:
                kwargs = _connect_kwargs(self.timeout)
                del kwargs["options"]  # PgBouncer ignores startup options
                await (await psycopg.AsyncConnection.connect(self.conninfo, **kwargs)).close()  # type: ignore[arg-type]
                return ENDPOINT_UP
            if self.conn is None or self.conn.closed:
                self.conn = await psycopg.AsyncConnection.connect(self.conninfo, **_connect_kwargs(self.timeout))  # type: ignore[arg-type]
            row = await (await self.conn.execute(CHECK_SQL)).fetchone()
            if row is None:
                raise RuntimeError("health check returned no row")
            return parse_check_row(row)
        except Exception as exc:
            await self.close()
            return _failed(exc)
        except BaseException:  # cancelled by the round's deadline (or interrupted): drop the connection
            await self.close()
            raise
        finally:
            self.lock.release()

    async def close(self) -> None:
        conn, self.conn = self.conn, None
        if conn is not None:
            with contextlib.suppress(Exception):
                await conn.close()


class AsyncMonitor:
    """Background health checks for one group."""

    def __init__(self, router: GroupRouterBase, conninfo: Mapping[str, str], timeout: float) -> None:
        self.router = router
        self.timeout = timeout
        endpoint = router.settings.endpoint
        self._probers = {name: AsyncProber(url, timeout, name == endpoint) for name, url in conninfo.items()}
        self._workers = AWorkers(len(self._probers), f"dbscale-check-{router.name}")
        self._round_lock = ALock()
        self._kick = AEvent()
        self._first = AEvent()
        self._stopped = False
        self._runner: ARunner | None = None
        self._start_lock = threading.Lock()  # held without awaiting: start() is idempotent across threads

    def renewed(self) -> AsyncMonitor:
        """A new, unstarted monitor of the same nodes (a forked child's: this one's runner and connections
        belong to the parent; see :mod:`dbscale.forks`). Makes no connection, takes no lock."""
        conninfo = {name: prober.conninfo for name, prober in self._probers.items()}
        return AsyncMonitor(self.router, conninfo, self.timeout)

    async def run_round(self) -> GroupState:
        """Probe every due node now and return the new state (also usable without the background runner).

        A new monitor's first round is confirmed by a second one when it could not judge a replica's
        lag (:func:`~dbscale.routing.core.needs_confirmation`).
        """
        state = await self._round()
        if needs_confirmation(state):
            await asleep(CONFIRM_DELAY)
            state = await self._round()
        self._first.set()
        return state

    async def _round(self) -> GroupState:
        async with self._round_lock:
            due = [n for n in self.router.due_checks() if n in self._probers]
            done = await self._workers.run({n: self._probers[n].probe for n in due}, self.timeout + 0.5)
            late = TimeoutError(f"health check took longer than {self.timeout:.1f}s")
            return self.router.apply_round({name: done.get(name, late) for name in due})

    async def start(self, wait: float | None = None) -> None:
        """Start the background runner (idempotent); optionally wait up to ``wait`` seconds for the first round."""
        with self._start_lock:
            if self._runner is None and not self._stopped:
                self._runner = aspawn(self._run, f"dbscale-monitor-{self.router.name}")
        if wait:
            await aevent_wait(self._first, wait)

    def kick(self) -> None:
        """Run the next round now instead of at the end of the interval."""
        self._kick.set()

    async def _run(self) -> None:
        interval = self.router.settings.health_interval
        while not self._stopped:
            with contextlib.suppress(Exception):  # a bug in one round must not end monitoring
                await self.run_round()
            await aevent_wait(self._kick, interval)
            self._kick.clear()

    async def stop(self) -> None:
        """Stop the background runner and close the monitor connections. Idempotent."""
        self._stopped = True
        self._kick.set()
        runner, self._runner = self._runner, None
        if runner is not None:
            await ajoin(runner, self.timeout + 2)
        self._workers.close()
        for prober in self._probers.values():
            if await aacquire(prober.lock, 0.1):
                try:
                    await prober.close()
                finally:
                    prober.lock.release()


__all__ = ["AsyncMonitor"]
