"""Read-only views of the HA engines dbscale runs on: Patroni's REST API and Redis Cluster's ``CLUSTER NODES``.

Used by ``dbscale status`` (:mod:`dbscale.probe`) and by the local topology (which waits on them);
neither view is ever acted on by dbscale: Patroni and Redis Cluster fail over on their own.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import redis

from dbscale.config import mask_url


def patroni_cluster(urls: Sequence[str], timeout: float = 2.0) -> dict[str, Any]:
    """Patroni's ``GET /cluster`` from the first REST URL that answers; ``{"error": ...}`` when none does."""
    errors = []
    for url in urls:
        try:
            with urllib.request.urlopen(url.rstrip("/") + "/cluster", timeout=timeout) as resp:
                view = json.loads(resp.read())
        except (OSError, ValueError) as exc:
            errors.append(f"{url}: {mask_url(str(exc).strip()) or type(exc).__name__}")
            continue
        if isinstance(view, dict):
            return view
    return {"members": [], "error": "; ".join(errors) or "no Patroni REST URL configured"}


@dataclass
class RedisClusterNode:
    """One node of a Redis Cluster as ``CLUSTER NODES`` shows it (``slots``: how many it serves)."""

    address: str
    node_id: str
    role: str
    flags: str
    master: str | None
    connected: bool
    slots: int
    ranges: list[str] = field(default_factory=list)
    name: str = ""  # the local topology's node name, when it knows one

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready dict (``dbscale status --json``)."""
        return asdict(self)


def _slot_count(ranges: list[list[str]]) -> int:
    return sum(int(r[-1]) - int(r[0]) + 1 for r in ranges)


def probe_redis_cluster(urls: Sequence[str], timeout: float = 2.0) -> list[RedisClusterNode]:
    """The cluster as the first reachable node sees it (``CLUSTER NODES``), failed nodes included.

    Raises ``redis.RedisError`` when no URL answers.
    """
    error: Exception | None = None
    for url in urls:
        client = redis.Redis.from_url(url, socket_connect_timeout=timeout, socket_timeout=timeout)
        try:
            view: dict[str, dict[str, Any]] = client.cluster("NODES")  # type: ignore[assignment]  # sync client
        except redis.RedisError as exc:
            error = exc
            continue
        finally:
            client.close()
        ids = {node["node_id"]: address for address, node in view.items()}
        return [
            RedisClusterNode(
                address=address,
                node_id=node["node_id"],
                role="master" if "master" in node["flags"] else "replica",
                flags=node["flags"],
                master=ids.get(node["master_id"]),
                connected=bool(node["connected"]) and "fail" not in node["flags"].split(","),
                slots=_slot_count(node["slots"]),
                ranges=["-".join(r) for r in node["slots"]],
            )
            for address, node in sorted(view.items())
        ]
    raise error or redis.RedisError("no Redis Cluster URL given")
