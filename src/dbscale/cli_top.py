"""``dbscale top``: a live view of a topology — per node, per cache tier, per projector.

It observes from outside, so it works against any ``dbscale.toml``: every tick it runs one health
round of dbscale's own router (roles, health, bans, replay lag), reads the servers' own counters
(``pg_stat_statements`` or ``pg_stat_database`` for queries/s, ``pg_stat_activity`` for connections
in use and waiting, PgBouncer's ``SHOW POOLS``, Redis ``INFO``), the projectors' checkpoints when
the event log exists, and, with ``--metrics-url``, an application's Prometheus endpoint (its L1 and
L2 hits per tier, pool waits, breaker trips). Rates are differences between two ticks.
"""

from __future__ import annotations

import contextlib
import os
import select
import sys
import termios
import time
import tty
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
import redis
from prometheus_client.parser import text_string_to_metric_families
from rich.console import Console, Group
from rich.live import Live
from rich.table import Table
from sqlalchemy import text
from sqlalchemy.exc import SQLAlchemyError

from dbscale.cluster import Cluster
from dbscale.config import libpq_conninfo, load_config, mask_url, node_urls

_QUERIES = text(
    "SELECT CASE WHEN to_regclass('pg_stat_statements') IS NOT NULL "
    "THEN (SELECT coalesce(sum(calls), 0) FROM pg_stat_statements) "
    "ELSE (SELECT xact_commit + xact_rollback FROM pg_stat_database WHERE datname = current_database()) END"
)
_ACTIVITY = text(
    "SELECT count(*) FILTER (WHERE state = 'active'), count(*) FILTER (WHERE state LIKE 'idle%'), "
    "count(*) FILTER (WHERE wait_event_type IN ('Lock', 'LWLock', 'IPC')), "
    "current_setting('max_connections')::int FROM pg_stat_activity WHERE backend_type = 'client backend'"
)


@dataclass
class Tick:
    """One observation: counters (for rates), per-node rows, cache rows, projector rows."""

    at: float
    counters: dict[str, float] = field(default_factory=dict)
    nodes: list[dict[str, Any]] = field(default_factory=list)
    cache: list[tuple[str, str, str]] = field(default_factory=list)
    projectors: list[tuple[str, str, str]] = field(default_factory=list)


def _rate(now: Tick, before: Tick | None, key: str) -> str:
    if before is None or key not in now.counters or key not in before.counters:
        return "…"
    dt = now.at - before.at
    return f"{max(0.0, now.counters[key] - before.counters[key]) / dt:,.0f}" if dt > 0 else "…"


def _pct(hits: float, misses: float) -> str:
    return "-" if hits + misses == 0 else f"{hits / (hits + misses) * 100:.1f}%"


def _pgbouncer_pools(url: str) -> str:
    try:
        with psycopg.connect(
            libpq_conninfo(url), dbname="pgbouncer", autocommit=True, connect_timeout=1, prepare_threshold=None
        ) as conn:
            rows = conn.execute("SHOW POOLS").fetchall()
            names = [c.name for c in conn.execute("SHOW POOLS").description or []]
    except psycopg.Error as exc:
        return f"? ({str(exc).strip().splitlines()[0][:40]})"
    pools = [dict(zip(names, r, strict=False)) for r in rows if r[0] != "pgbouncer"]
    active = sum(int(p.get("cl_active", 0)) for p in pools)
    waiting = sum(int(p.get("cl_waiting", 0)) for p in pools)
    servers = sum(int(p.get("sv_active", 0)) + int(p.get("sv_idle", 0)) for p in pools)
    return f"clients {active} active, {waiting} waiting; {servers} server conns"


def _app_metrics(urls: list[str]) -> dict[str, float]:
    """Summed samples of the applications' Prometheus endpoints (label sets folded as ``name{k=v}``)."""
    out: dict[str, float] = {}
    for url in urls:
        try:
            with urllib.request.urlopen(url, timeout=1) as response:
                body = response.read().decode()
        except OSError:
            continue
        for family in text_string_to_metric_families(body):
            for s in family.samples:
                key = s.name + "".join(f"{{{k}={v}}}" for k, v in sorted(s.labels.items()))
                out[key] = out.get(key, 0.0) + s.value
    return out


def observe(cluster: Cluster, metrics_urls: list[str]) -> Tick:
    """One tick: everything ``top`` shows, read now."""
    tick = Tick(at=time.monotonic())
    cluster.refresh()
    routing = {row["node"]: row for row in _routing_rows(cluster)}
    for node in cluster.nodes:
        row: dict[str, Any] = {"node": node.name, "group": node.group, "role": node.role}
        r = routing.get(node.name, {})
        row["health"] = "banned" if r.get("banned") else ("up" if r.get("healthy", True) else "down")
        lag_b, lag_s = r.get("lag_bytes"), r.get("lag_seconds")
        row["lag"] = "-" if lag_b is None else f"{lag_b} B / {0.0 if lag_s is None else lag_s:.2f} s"
        if node.role == "pgbouncer":
            row["pool"] = _pgbouncer_pools(node.url)
        else:
            try:
                with cluster.engine(node.name, read_only=True).connect() as conn:
                    tick.counters[f"q:{node.name}"] = float(conn.scalar(_QUERIES) or 0)
                    active, idle, waiting, limit = conn.execute(_ACTIVITY).one()
                row["pool"] = f"{active} active, {idle} idle (max {limit}); {waiting} waiting"
            except SQLAlchemyError as exc:
                row["health"], row["pool"] = "down", str(getattr(exc, "orig", None) or exc).strip().splitlines()[0][:50]
        tick.nodes.append(row)
    _observe_cache(cluster, tick, metrics_urls)
    with contextlib.suppress(SQLAlchemyError):
        for p in cluster.events.projections():
            tick.projectors.append((p.name, str(p.lag_events), f"{p.lag_seconds:.2f} s"))
    return tick


def _routing_rows(cluster: Cluster) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    for group in cluster.config.groups:
        rows.extend(cluster.router(group).status())
    return rows


def _observe_cache(cluster: Cluster, tick: Tick, metrics_urls: list[str]) -> None:
    url = cluster.config.cache.redis_url
    if url is not None:
        cluster.cache.get("dbscale:top:probe")  # keeps this view's breaker in step with Redis
        breaker = cluster.cache.core.breaker.state.value
        try:
            client = redis.Redis.from_url(node_urls(str(url))[0], socket_timeout=1, socket_connect_timeout=1)
            info: dict[str, Any] = client.info("stats")  # type: ignore[assignment]
            clients = client.info("clients")["connected_clients"]  # type: ignore[index]
            client.close()
            hits, misses = float(info["keyspace_hits"]), float(info["keyspace_misses"])
            tick.counters["redis:ops"] = float(info["total_commands_processed"])
            tick.cache.append(
                (
                    f"Redis {mask_url(str(url))}",
                    f"server hit rate {_pct(hits, misses)}",
                    f"{clients} clients, breaker {breaker}",
                )
            )
        except (redis.RedisError, OSError) as exc:
            tick.cache.append((f"Redis {mask_url(str(url))}", "[red]down[/]", f"{exc}; breaker {breaker}"))
    if metrics_urls:
        m = _app_metrics(metrics_urls)
        for tier in ("l1", "l2"):
            hits = m.get(f"dbscale_cache_hits_total{{tier={tier}}}", 0.0)
            misses = m.get(f"dbscale_cache_misses_total{{tier={tier}}}", 0.0)
            tick.cache.append(
                (f"app {tier.upper()}", f"hit rate {_pct(hits, misses)}", f"{hits:,.0f} hits, {misses:,.0f} misses")
            )
        waits = sum(v for k, v in m.items() if k.startswith("dbscale_pool_waits_total"))
        trips = m.get("dbscale_cache_breaker_trips_total", 0.0)
        bypassed = m.get("dbscale_cache_bypassed_total", 0.0)
        tick.cache.append(
            ("app pools / breaker", f"{waits:,.0f} pool waits", f"breaker trips {trips:.0f}, bypassed {bypassed:,.0f}")
        )


def render(now: Tick, before: Tick | None, count: int, source: str) -> Group:
    """The screen for one tick."""
    nodes = Table(title=f"dbscale top — {source} — refresh #{count} at {time.strftime('%H:%M:%S')} (q quits)")
    for column in ("node", "group", "role", "health", "queries/s", "replay lag", "connections / pool"):
        nodes.add_column(
            column, justify="right" if column == "queries/s" else "left", no_wrap=column != "connections / pool"
        )
    for row in now.nodes:
        rate = "-" if row["role"] == "pgbouncer" else _rate(now, before, f"q:{row['node']}")
        health = {"up": "[green]up[/]", "down": "[red]down[/]"}.get(row["health"], "[yellow]banned[/]")
        nodes.add_row(row["node"], row["group"], row["role"], health, rate, row["lag"], row["pool"])
    parts: list[Any] = [nodes]
    cache = Table(title=f"cache tiers (Redis commands/s {_rate(now, before, 'redis:ops')})")
    for column in ("tier", "hit rate", "detail"):
        cache.add_column(column)
    for c in now.cache:
        cache.add_row(*c)
    parts.append(cache)
    if now.projectors:
        projectors = Table(title="projectors")
        for column in ("projector", "lag events", "lag"):
            projectors.add_column(column)
        for p in now.projectors:
            projectors.add_row(*p)
        parts.append(projectors)
    return Group(*parts)


@contextlib.contextmanager
def _keys() -> Iterator[bool]:
    """Single-key input from a terminal stdin (cbreak mode); yields False when stdin is not a terminal."""
    if not sys.stdin.isatty():
        yield False
        return
    fd = sys.stdin.fileno()
    saved = termios.tcgetattr(fd)
    try:
        tty.setcbreak(fd)
        yield True
    finally:
        termios.tcsetattr(fd, termios.TCSADRAIN, saved)


def _quit_pressed(timeout: float, interactive: bool) -> bool:
    if not interactive:
        time.sleep(timeout)
        return False
    ready, _, _ = select.select([sys.stdin], [], [], timeout)
    return bool(ready) and os.read(sys.stdin.fileno(), 1).lower() == b"q"


def run_top(path: Path, *, interval: float = 0.5, metrics_urls: list[str] | None = None, iterations: int = 0) -> None:
    """Show the live view of the topology in ``path`` until ``q`` (or ``iterations`` refreshes)."""
    console = Console()
    with Cluster(load_config(path)) as cluster, _keys() as interactive:
        before: Tick | None = None
        count = 0
        with Live(console=console, auto_refresh=False, screen=console.is_terminal) as live:
            while True:
                started = time.monotonic()
                now = observe(cluster, metrics_urls or [])
                count += 1
                live.update(render(now, before, count, str(path)), refresh=True)
                before = now
                if iterations and count >= iterations:
                    return
                if _quit_pressed(max(0.0, interval - (time.monotonic() - started)), interactive):
                    return
