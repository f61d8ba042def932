"""Metrics: a registry per cluster, get-or-create by name, plain-data snapshot."""

from __future__ import annotations

import prometheus_client
import pytest

import dbscale
from dbscale.metrics import Metrics


def test_each_cluster_has_its_own_registry() -> None:
    a = dbscale.Cluster(primary="postgresql://h/d")
    b = dbscale.Cluster(primary="postgresql://h/d")
    a.metrics.counter("reads", "reads", ["node"]).labels(node="x").inc()
    assert a.metrics.value("reads_total", node="x") == 1.0
    assert b.metrics.value("reads_total", node="x") == 0.0
    assert a.metrics.registry is not prometheus_client.REGISTRY
    assert prometheus_client.REGISTRY.get_sample_value("dbscale_reads_total", {"node": "x"}) is None


def test_same_name_returns_same_metric_and_kind_conflict_is_an_error() -> None:
    metrics = Metrics()
    assert metrics.counter("hits", "doc") is metrics.counter("hits", "doc")
    with pytest.raises(TypeError, match="already exists as a Counter"):
        metrics.gauge("hits", "doc")


def test_snapshot_is_plain_data() -> None:
    metrics = Metrics()
    metrics.counter("reads", "doc", ["node"]).labels(node="main-replica1").inc(3)
    metrics.gauge("lag_bytes", "doc", ["node"]).labels(node="main-replica1").set(42)
    metrics.histogram("latency_seconds", "doc").observe(0.002)
    snap = metrics.snapshot()
    assert snap["dbscale_reads_total"] == [{"labels": {"node": "main-replica1"}, "value": 3.0}]
    assert snap["dbscale_lag_bytes"] == [{"labels": {"node": "main-replica1"}, "value": 42.0}]
    assert snap["dbscale_latency_seconds_count"][0]["value"] == 1.0
    assert not any(name.endswith("_created") for name in snap)
    assert b"dbscale_reads_total" in metrics.exposition()


def test_exposition_has_no_created_series_and_a_prometheus_content_type() -> None:
    from dbscale.metrics import CONTENT_TYPE

    m = Metrics()
    m.counter("things", "d", ["kind"]).labels(kind="a").inc()
    m.histogram("latency", "d").observe(0.01)
    text = m.exposition().decode()
    assert 'dbscale_things_total{kind="a"} 1.0' in text
    assert "dbscale_latency_count 1.0" in text
    assert "_created" not in text
    assert CONTENT_TYPE.startswith("text/plain; version=")
    assert m.snapshot()["dbscale_things_total"][0]["value"] == 1.0
