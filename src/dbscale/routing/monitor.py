"""Health monitors: a background thread (sync) or task (asyncio) probing every node of a group.

Each node gets one dedicated autocommit connection (not from the pools, so a full pool never
blinds the monitor), reused between rounds and reopened after a failure. A round probes the due
nodes concurrently with :data:`~dbscale.routing.core.CHECK_SQL`, bounded by a timeout, and folds
the results into the router's state with :meth:`GroupRouterBase.apply_round`.

The write endpoint (PgBouncer) is checked by logging in through it, on a fresh connection each
round and without a query: a query would wait inside PgBouncer for the primary, whose health the
PostgreSQL checks already tell. A refusal of the configured credentials is reported as
:class:`~dbscale.routing.core.Refused` (permanent, no ban), any other error as itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import wait as wait_futures

import psycopg

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


class _Prober:
    """One node's monitor connection (sync)."""

    def __init__(self, conninfo: str, timeout: float, endpoint: bool = False) -> None:
        self.conninfo = conninfo
        self.timeout = timeout
        self.endpoint = endpoint
        self.lock = threading.Lock()
        self.conn: psycopg.Connection[tuple[object, ...]] | None = None

    def probe(self) -> CheckResult:
        if not self.lock.acquire(blocking=False):
            return TimeoutError("the previous health check of this node is still running")
        try:
            if self.endpoint:
                kwargs = _connect_kwargs(self.timeout)
                del kwargs["options"]  # PgBouncer ignores startup options
                psycopg.connect(self.conninfo, **kwargs).close()  # type: ignore[arg-type]
                return ENDPOINT_UP
            if self.conn is None or self.conn.closed:
                self.conn = psycopg.connect(self.conninfo, **_connect_kwargs(self.timeout))  # type: ignore[arg-type]
            row = self.conn.execute(CHECK_SQL).fetchone()
            if row is None:
                raise RuntimeError("health check returned no row")
            return parse_check_row(row)
        except Exception as exc:
            self.close()
            return _failed(exc)
        finally:
            self.lock.release()

    def close(self) -> None:
        conn, self.conn = self.conn, None
        if conn is not None:
            with contextlib.suppress(Exception):
                conn.close()


class SyncMonitor:
    """Background health checks for one group, in a daemon thread."""

    def __init__(self, router: GroupRouterBase, conninfo: Mapping[str, str], timeout: float) -> None:
        self.router = router
        self.timeout = timeout
        endpoint = router.settings.endpoint
        self._probers = {name: _Prober(url, timeout, name == endpoint) for name, url in conninfo.items()}
        self._pool = ThreadPoolExecutor(
            max_workers=len(self._probers), thread_name_prefix=f"dbscale-check-{router.name}"
        )
        self._round_lock = threading.Lock()
        self._kick = threading.Event()
        self._stop = threading.Event()
        self._first = threading.Event()
        self._thread: threading.Thread | None = None
        self._start_lock = threading.Lock()

    def run_round(self) -> GroupState:
        """Probe every due node now and return the new state (also usable without the thread).

        A new monitor's first round is confirmed by a second one when it could not judge a replica's
        lag (:func:`~dbscale.routing.core.needs_confirmation`).
        """
        state = self._round()
        if needs_confirmation(state):
            time.sleep(CONFIRM_DELAY)
            state = self._round()
        self._first.set()
        return state

    def _round(self) -> GroupState:
        with self._round_lock:
            due = [n for n in self.router.due_checks() if n in self._probers]
            futures = {n: self._pool.submit(self._probers[n].probe) for n in due}
            # one deadline for the whole round: hung nodes must not add up their timeouts
            done, _ = wait_futures(futures.values(), timeout=self.timeout + 0.5)
            results: dict[str, CheckResult] = {
                name: fut.result()
                if fut in done
                else TimeoutError(f"health check took longer than {self.timeout:.1f}s")
                for name, fut in futures.items()
            }
            return self.router.apply_round(results)

    def start(self, wait: float | None = None) -> None:
        """Start the thread (idempotent); optionally wait up to ``wait`` seconds for the first round."""
        with self._start_lock:
            if self._thread is None and not self._stop.is_set():
                self._thread = threading.Thread(
                    target=self._run, name=f"dbscale-monitor-{self.router.name}", daemon=True
                )
                self._thread.start()
        if wait:
            self._first.wait(wait)

    def kick(self) -> None:
        """Run the next round now instead of at the end of the interval."""
        self._kick.set()

    def _run(self) -> None:
        interval = self.router.settings.health_interval
        while not self._stop.is_set():
            with contextlib.suppress(Exception):  # a bug in one round must not end monitoring
                self.run_round()
            self._kick.wait(interval)
            self._kick.clear()

    def stop(self) -> None:
        """Stop the thread and close the monitor connections. Idempotent."""
        self._stop.set()
        self._kick.set()
        thread = self._thread
        if thread is not None:
            thread.join(self.timeout + 2)
        self._pool.shutdown(wait=False, cancel_futures=True)
        for prober in self._probers.values():
            if prober.lock.acquire(timeout=0.1):
                try:
                    prober.close()
                finally:
                    prober.lock.release()


class AsyncMonitor:
    """Background health checks for one group, as an asyncio task on the running loop."""

    def __init__(self, router: GroupRouterBase, conninfo: Mapping[str, str], timeout: float) -> None:
        self.router = router
        self.timeout = timeout
        self._conninfo = dict(conninfo)
        self._conns: dict[str, psycopg.AsyncConnection[tuple[object, ...]]] = {}
        self._task: asyncio.Task[None] | None = None
        self._kick: asyncio.Event | None = None
        self._first: asyncio.Event | None = None
        self._round_lock: asyncio.Lock | None = None
        self._stopped = False

    async def _probe(self, name: str) -> NodeCheck:
        if name == self.router.settings.endpoint:
            kwargs = _connect_kwargs(self.timeout)
            del kwargs["options"]  # PgBouncer ignores startup options
            await (await psycopg.AsyncConnection.connect(self._conninfo[name], **kwargs)).close()  # type: ignore[arg-type]
            return ENDPOINT_UP
        conn = self._conns.get(name)
        if conn is None or conn.closed:
            conn = await psycopg.AsyncConnection.connect(self._conninfo[name], **_connect_kwargs(self.timeout))  # type: ignore[arg-type]
            self._conns[name] = conn
        cur = await conn.execute(CHECK_SQL)
        row = await cur.fetchone()
        if row is None:
            raise RuntimeError("health check returned no row")
        return parse_check_row(row)

    async def _probe_bounded(self, name: str) -> CheckResult:
        try:
            return await asyncio.wait_for(self._probe(name), self.timeout + 0.5)
        except Exception as exc:
            conn = self._conns.pop(name, None)
            if conn is not None:
                with contextlib.suppress(Exception):
                    await conn.close()
            return _failed(exc)

    async def run_round(self) -> GroupState:
        """Probe every due node now and return the new state (see :meth:`SyncMonitor.run_round`)."""
        state = await self._round()
        if needs_confirmation(state):
            await asyncio.sleep(CONFIRM_DELAY)
            state = await self._round()
        if self._first is not None:
            self._first.set()
        return state

    async def _round(self) -> GroupState:
        if self._round_lock is None:
            self._round_lock = asyncio.Lock()
        async with self._round_lock:
            due = [n for n in self.router.due_checks() if n in self._conninfo]
            checks = await asyncio.gather(*(self._probe_bounded(n) for n in due))
            return self.router.apply_round(dict(zip(due, checks, strict=True)))

    async def start(self, wait: float | None = None) -> None:
        """Start the task on the running loop (idempotent); optionally wait for the first round."""
        if self._task is None and not self._stopped:
            self._kick = asyncio.Event()
            self._first = asyncio.Event()
            self._task = asyncio.get_running_loop().create_task(self._run(), name=f"dbscale-monitor-{self.router.name}")
        if wait and self._first is not None:
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._first.wait(), wait)

    def kick(self) -> None:
        """Run the next round now."""
        if self._kick is not None:
            self._kick.set()

    async def _run(self) -> None:
        assert self._kick is not None
        interval = self.router.settings.health_interval
        while not self._stopped:
            with contextlib.suppress(Exception):
                await self.run_round()
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._kick.wait(), interval)
            self._kick.clear()

    async def stop(self) -> None:
        """Cancel the task and close the monitor connections. Idempotent."""
        self._stopped = True
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        conns, self._conns = list(self._conns.values()), {}
        for conn in conns:
            with contextlib.suppress(Exception):
                await conn.close()


__all__ = ["AsyncMonitor", "SyncMonitor"]
