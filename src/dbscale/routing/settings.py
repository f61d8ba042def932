"""Build a group router's inputs from a validated ``GroupConfig``: the pure core's
:class:`~dbscale.routing.core.Settings` and the rest of its wiring (:class:`RouterWiring`)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from sqlalchemy import Engine, event

from dbscale.config import GroupConfig, libpq_conninfo
from dbscale.metrics import Metrics
from dbscale.names import pgbouncer_name, primary_name, replica_name
from dbscale.routing.bans import BanPolicy
from dbscale.routing.context import CausalContext
from dbscale.routing.core import Settings
from dbscale.routing.lsn import Mark
from dbscale.routing.metrics import RoutingMetrics
from dbscale.units import parse_read_your_writes


def group_settings(group: str, cfg: GroupConfig) -> Settings:
    """The routing settings of ``group``; node names follow :mod:`dbscale.topology`.

    ``endpoint`` is the group's PgBouncer when writes go through it.
    """
    replicas = tuple(replica_name(group, i) for i in range(1, len(cfg.replicas) + 1))
    weights = dict(zip(replicas, cfg.weights, strict=True)) if cfg.weights is not None else {}
    mode, delay = parse_read_your_writes(cfg.read_your_writes)
    return Settings(
        primary=primary_name(group),
        replicas=replicas,
        policy=cfg.load_balancing,
        weights=weights,
        max_lag=cfg.max_lag,
        max_lag_bytes=cfg.max_lag_bytes,
        fallback=cfg.fallback,
        read_your_writes=mode,
        delay=delay,
        causal_wait=cfg.causal_wait,
        health_interval=cfg.health_interval,
        bans=BanPolicy(initial=cfg.ban_initial, maximum=cfg.ban_max),
        endpoint=pgbouncer_name(group) if cfg.pgbouncer is not None and cfg.write_via_pgbouncer else None,
    )


@dataclass(frozen=True, slots=True)
class RouterWiring:
    """What :class:`GroupRouter` and :class:`AsyncGroupRouter` are built from (besides their engines).

    ``record(group, mark)`` keeps a write's causal mark; ``monitor_urls`` are the libpq URLs the
    health monitor checks, by node name; ``check_timeout`` bounds one health check.
    """

    name: str
    settings: Settings
    metrics: RoutingMetrics
    write_timeout: float
    record: Callable[[str, Mark], None]
    monitor_urls: dict[str, str]
    check_timeout: float


def router_wiring(group: str, cfg: GroupConfig, metrics: Metrics, causal: CausalContext) -> RouterWiring:
    """The wiring of ``group``'s router (the same for the sync and the asyncio router)."""
    settings = group_settings(group, cfg)
    bouncer = pgbouncer_name(group) if cfg.pgbouncer is not None else None
    nodes = settings.nodes + ((bouncer,) if bouncer else ())
    urls = {settings.primary: libpq_conninfo(cfg.primary)}
    urls.update({n: libpq_conninfo(u) for n, u in zip(settings.replicas, cfg.replicas, strict=True)})
    if settings.endpoint is not None and cfg.pgbouncer is not None:
        urls[settings.endpoint] = libpq_conninfo(cfg.pgbouncer)
    return RouterWiring(
        name=group,
        settings=settings,
        metrics=RoutingMetrics(metrics, group, nodes),
        write_timeout=cfg.write_timeout,
        record=causal.record,
        monitor_urls=urls,
        check_timeout=max(1.0, min(cfg.pool.connect_timeout, 2 * cfg.health_interval)),
    )


def instrument_engine(engine: Engine, metrics: Metrics, group: str, node: str) -> None:
    """Count new physical connections of ``engine`` (SQLAlchemy's ``connect`` pool event)."""
    counter = metrics.counter("pool_connects", "New physical connections opened", ("group", "node")).labels(group, node)
    event.listen(engine, "connect", lambda *_: counter.inc())


__all__ = ["RouterWiring", "group_settings", "instrument_engine", "parse_read_your_writes", "router_wiring"]
