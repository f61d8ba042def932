"""The nodes of a configured topology, named the same way everywhere (CLI, metrics, local topology)."""

from __future__ import annotations

from dataclasses import dataclass

from dbscale.config import SecretURL, TopologyConfig
from dbscale.names import EndpointRole, pgbouncer_name, primary_name, replica_name

#: Kept for importers of ``dbscale.topology.Role``; the literal lives in :mod:`dbscale.names`.
Role = EndpointRole


@dataclass(frozen=True)
class NodeRef:
    """One configured endpoint: ``main-primary``, ``main-replica1``, ``pgbouncer-main`` …"""

    name: str
    group: str
    role: Role
    url: SecretURL

    def __repr__(self) -> str:
        return f"NodeRef(name={self.name!r}, group={self.group!r}, role={self.role!r}, url={self.url!r})"


def configured_nodes(config: TopologyConfig) -> list[NodeRef]:
    """Every PostgreSQL endpoint of ``config``, primaries first within each group."""
    nodes: list[NodeRef] = []
    for group, spec in config.groups.items():
        nodes.append(NodeRef(primary_name(group), group, "primary", SecretURL(spec.primary)))
        for i, url in enumerate(spec.replicas, start=1):
            nodes.append(NodeRef(replica_name(group, i), group, "replica", SecretURL(url)))
        if spec.pgbouncer is not None:
            nodes.append(NodeRef(pgbouncer_name(group), group, "pgbouncer", SecretURL(spec.pgbouncer)))
    return nodes


__all__ = ["NodeRef", "Role", "configured_nodes", "pgbouncer_name", "primary_name", "replica_name"]
