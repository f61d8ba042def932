"""The router's metrics, declared once per group with label children cached for the hot path."""

from __future__ import annotations

from typing import Any

from dbscale.metrics import Metrics


class RoutingMetrics:
    """Counters, gauges and histograms of one group router (names are ``dbscale_<name>``)."""

    def __init__(self, metrics: Metrics, group: str, nodes: tuple[str, ...]) -> None:
        self.group = group
        self.registry = metrics
        reads = metrics.counter("reads", "Reads routed, per node", ("group", "node"))
        writes = metrics.counter("writes", "Write transactions committed, per node", ("group", "node"))
        self.retries = metrics.counter("read_retries", "Reads retried on another node", ("group",)).labels(group)
        self.fallbacks = metrics.counter(
            "read_fallbacks", "Reads sent to the primary because no replica was eligible", ("group",)
        ).labels(group)
        self.read_errors = metrics.counter("read_errors", "Reads that failed after retries", ("group",)).labels(group)
        self.write_errors = metrics.counter(
            "write_errors", "Writes refused or failed for lack of a primary", ("group",)
        ).labels(group)
        self._bans = metrics.counter("bans", "Times a node was banned", ("group", "node"))
        self._causal = metrics.counter(
            "causal_reads", "Reads under a causal token, by how they were served", ("group", "outcome")
        )
        self.causal_wait = metrics.histogram(
            "causal_wait_seconds", "Time spent waiting for a replica to reach a causal token", ("group",)
        ).labels(group)
        lag_s = metrics.gauge("replica_lag_seconds", "Replica replay lag in seconds", ("group", "node"))
        lag_b = metrics.gauge("replica_lag_bytes", "Replica replay lag in bytes", ("group", "node"))
        up = metrics.gauge("node_up", "1 if the node passed its last health check", ("group", "node"))
        banned = metrics.gauge("node_banned", "1 while the node is banned or on probation", ("group", "node"))
        writer = metrics.gauge("node_is_writer", "1 for the node that currently takes writes", ("group", "node"))
        self._pool_waits = metrics.counter(
            "pool_waits", "Connection checkouts that waited over 1 ms", ("group", "node")
        )
        self._pool_timeouts = metrics.counter("pool_timeouts", "Connection checkouts that timed out", ("group", "node"))
        self.pool_wait_seconds = metrics.histogram(
            "pool_wait_seconds", "Checkout time of the checkouts that waited", ("group",)
        ).labels(group)
        self.reads: dict[str, Any] = {n: reads.labels(group, n) for n in nodes}
        self.writes: dict[str, Any] = {n: writes.labels(group, n) for n in nodes}
        self.bans: dict[str, Any] = {n: self._bans.labels(group, n) for n in nodes}
        self.lag_seconds: dict[str, Any] = {n: lag_s.labels(group, n) for n in nodes}
        self.lag_bytes: dict[str, Any] = {n: lag_b.labels(group, n) for n in nodes}
        self.up: dict[str, Any] = {n: up.labels(group, n) for n in nodes}
        self.banned: dict[str, Any] = {n: banned.labels(group, n) for n in nodes}
        self.writer: dict[str, Any] = {n: writer.labels(group, n) for n in nodes}
        self.causal: dict[str, Any] = {
            o: self._causal.labels(group, o) for o in ("replica", "inline", "waited", "primary")
        }

    def pool_wait(self, node: str, seconds: float) -> None:
        """Record a checkout that had to wait."""
        self._pool_waits.labels(self.group, node).inc()
        self.pool_wait_seconds.observe(seconds)

    def pool_timeout(self, node: str) -> None:
        """Record a checkout that gave up after ``pool_timeout``."""
        self._pool_timeouts.labels(self.group, node).inc()


__all__ = ["RoutingMetrics"]
