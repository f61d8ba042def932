"""Metrics: one prometheus_client registry per cluster, and a plain-data snapshot of it.

Components declare their own metrics through :meth:`Metrics.counter`, :meth:`Metrics.gauge` and
:meth:`Metrics.histogram`; asking twice for the same name returns the same metric, so modules need no
central list. Names are prefixed with ``dbscale_``.
"""

from __future__ import annotations

import copy
import threading
from collections.abc import Callable, Iterator, Sequence
from typing import Any, TypeVar

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.metrics_core import Metric

_M = TypeVar("_M", Counter, Gauge, Histogram)

#: The ``Content-Type`` of :meth:`Metrics.exposition` (the Prometheus text format of the installed prometheus_client).
CONTENT_TYPE = CONTENT_TYPE_LATEST

#: Latency buckets in seconds, from 50 µs (an L1/L2 hit) to 10 s (a slow query).
LATENCY_BUCKETS = (
    0.00005,
    0.0001,
    0.00025,
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    10.0,
)


class Metrics:
    """A cluster's metrics registry (never the process-global one)."""

    def __init__(self, prefix: str = "dbscale") -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self._prefix = prefix
        self._metrics: dict[str, Counter | Gauge | Histogram] = {}
        self._lock = threading.Lock()

    def after_fork(self) -> None:
        """In a forked child: a new lock for making metrics (a parent's thread may have held this one)."""
        self._lock = threading.Lock()

    def _get(self, kind: type[_M], name: str, doc: str, labels: Sequence[str], **extra: Any) -> _M:
        full = f"{self._prefix}_{name}"
        with self._lock:
            metric = self._metrics.get(full)
            if metric is None:
                metric = kind(full, doc, labelnames=tuple(labels), registry=self.registry, **extra)
                self._metrics[full] = metric
            if not isinstance(metric, kind):
                raise TypeError(f"metric {full} already exists as a {type(metric).__name__}")
            return metric

    def counter(self, name: str, doc: str, labels: Sequence[str] = ()) -> Counter:
        """Return the counter ``dbscale_<name>``, creating it on first use."""
        return self._get(Counter, name, doc, labels)

    def gauge(self, name: str, doc: str, labels: Sequence[str] = ()) -> Gauge:
        """Return the gauge ``dbscale_<name>``, creating it on first use."""
        return self._get(Gauge, name, doc, labels)

    def histogram(
        self, name: str, doc: str, labels: Sequence[str] = (), buckets: Sequence[float] = LATENCY_BUCKETS
    ) -> Histogram:
        """Return the histogram ``dbscale_<name>`` (seconds), creating it on first use."""
        return self._get(Histogram, name, doc, labels, buckets=tuple(buckets))

    def snapshot(self) -> dict[str, list[dict[str, Any]]]:
        """Plain data: ``{sample_name: [{"labels": {...}, "value": float}, ...]}`` for every sample.

        Counters appear as ``<name>_total``; histograms as ``_count``, ``_sum`` and ``_bucket``.
        """
        out: dict[str, list[dict[str, Any]]] = {}
        for family in self.registry.collect():
            for sample in family.samples:
                if sample.name.endswith("_created"):
                    continue
                out.setdefault(sample.name, []).append({"labels": dict(sample.labels), "value": sample.value})
        return out

    def value(self, sample_name: str, **labels: str) -> float:
        """The value of one sample (0.0 if it was never recorded); handy in tests and the CLI."""
        value = self.registry.get_sample_value(f"{self._prefix}_{sample_name}", labels)
        return 0.0 if value is None else float(value)

    def exposition(self) -> bytes:
        """The registry in Prometheus text format, for a ``/metrics`` endpoint (serve it as :data:`CONTENT_TYPE`).

        Without the ``_created`` series prometheus_client adds to every counter and histogram (a
        timestamp per series that never moves, doubling the page): it is the one registry's view
        that leaves them out, the process-wide ``disable_created_metrics()`` is not touched.
        """
        return generate_latest(_WithoutCreated(self.registry))


def wsgi_app(metrics: Metrics) -> Callable[[dict[str, Any], Callable[..., Any]], list[bytes]]:
    """A WSGI app serving ``metrics`` at any path (``dbscale metrics serve`` runs it), e.g. under wsgiref."""

    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> list[bytes]:
        body = metrics.exposition()
        start_response("200 OK", [("Content-Type", CONTENT_TYPE), ("Content-Length", str(len(body)))])
        return [body]

    return app


class _WithoutCreated:
    """A collector view of a registry without its ``*_created`` samples (what generate_latest reads)."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry

    def collect(self) -> Iterator[Metric]:
        for family in self.registry.collect():
            samples = [s for s in family.samples if not s.name.endswith("_created")]
            if len(samples) != len(family.samples):
                family = copy.copy(family)
                family.samples = samples
            yield family


__all__ = ["CONTENT_TYPE", "LATENCY_BUCKETS", "Metrics", "wsgi_app"]
