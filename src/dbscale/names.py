"""The vocabulary of a topology (pure): node roles, node names and routing choices, defined once.

The library (routing, metrics, ``dbscale status``), the configuration and the local topology all
name nodes with these functions and type roles with these literals, so a node is ``main-replica1``
everywhere and a role can never be spelled two ways.
"""

from __future__ import annotations

from typing import Literal

#: The role of a PostgreSQL server: the writable primary or a streaming replica.
NodeRole = Literal["primary", "replica"]
#: The role of a configured endpoint: a PostgreSQL server, or the PgBouncer in front of a primary.
EndpointRole = Literal["primary", "replica", "pgbouncer"]
#: The role a health check observed (``unknown`` until a check has answered).
ObservedRole = Literal["primary", "replica", "pgbouncer", "unknown"]
#: Replica load-balancing policies (implemented in :mod:`dbscale.routing.balance`).
Policy = Literal["least_outstanding", "round_robin", "random"]
POLICIES: tuple[Policy, ...] = ("least_outstanding", "round_robin", "random")
#: What a read does when no replica is eligible: go to the primary, or raise NoReplicaAvailable.
Fallback = Literal["primary", "error"]


def primary_name(group: str) -> str:
    """Name of a group's primary node."""
    return f"{group}-primary"


def replica_name(group: str, index: int) -> str:
    """Name of a group's replica, 1-based as in ``main-replica1``."""
    return f"{group}-replica{index}"


def replica_slot(group: str, index: int) -> str:
    """Name of the replication slot a replica streams from (``main_replica1``: slot names allow no ``-``)."""
    return f"{group}_replica{index}".replace("-", "_")


def pgbouncer_name(group: str) -> str:
    """Name of the PgBouncer in front of a group's primary."""
    return f"pgbouncer-{group}"


__all__ = [
    "POLICIES",
    "EndpointRole",
    "Fallback",
    "NodeRole",
    "ObservedRole",
    "Policy",
    "pgbouncer_name",
    "primary_name",
    "replica_name",
    "replica_slot",
]
