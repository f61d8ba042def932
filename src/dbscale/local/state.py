"""The local topology's recorded state (``state.json``) and the ``dbscale.toml`` derived from it.

Everything here is pure data: planning the node list for a shape, (de)serializing it, and
rendering the config document. Reading and writing files is limited to :func:`load_state`,
:func:`save_state` and :func:`write_config`.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Literal
from urllib.parse import quote

import tomli_w

from dbscale.errors import LocalTopologyError
from dbscale.names import NodeRole, pgbouncer_name, primary_name, replica_name, replica_slot

NodeKind = Literal["postgres", "redis", "pgbouncer", "etcd", "redis-cluster"]
Role = NodeRole

STATE_FILE = "state.json"
CONFIG_FILE = "dbscale.toml"
STATE_VERSION = 1
USER = "dbscale"
DATABASE = "dbscale"
HOST = "127.0.0.1"
ETCD_NAME = "etcd"
REDIS_CLUSTER_PREFIX = "redis-cluster"


@dataclass(frozen=True)
class NodeInfo:
    """One server of the local topology, as recorded in ``state.json``.

    ``role`` is the current role of a PostgreSQL node (``promote`` turns a replica into a primary)
    and None for Redis and PgBouncer. ``upstream`` is the node a replica streams from, or the
    primary a PgBouncer pools for. ``data_dir`` is the PostgreSQL data directory, or the working
    directory of Redis and PgBouncer. ``api_port`` is a node's second port: Patroni's REST API for a
    Patroni-managed PostgreSQL node (``up --ha``), the peer port of etcd, the cluster bus port of a
    Redis Cluster node; None otherwise.
    """

    name: str
    kind: NodeKind
    group: str | None
    role: Role | None
    port: int
    data_dir: Path
    log_path: Path
    upstream: str | None = None
    slot: str | None = None
    api_port: int | None = None

    @property
    def node_dir(self) -> Path:
        """The directory that holds everything of this node."""
        return self.data_dir.parent if self.kind == "postgres" else self.data_dir

    @property
    def patroni(self) -> bool:
        """Whether Patroni runs this PostgreSQL node (``up --ha``): dbscale then never promotes it."""
        return self.kind == "postgres" and self.api_port is not None


@dataclass(frozen=True)
class Shape:
    """How many replicas and shard groups (and replicas per shard group), whether PgBouncer runs, Patroni HA,
    Redis Cluster size.

    ``ha``: etcd and Patroni run group ``main`` (Patroni promotes; dbscale never does).
    ``redis_cluster``: masters of an extra Redis Cluster (0: none), each with
    ``redis_cluster_replicas`` replicas.
    """

    replicas: int = 2
    shards: int = 0
    pgbouncer: bool = False
    shard_replicas: int = 0
    ha: bool = False
    redis_cluster: int = 0
    redis_cluster_replicas: int = 0

    def __post_init__(self) -> None:
        if self.replicas < 0 or self.shards < 0 or self.shard_replicas < 0:
            raise LocalTopologyError(
                f"replicas, shards and shard replicas must be >= 0, got {self.replicas}/{self.shards}/{self.shard_replicas}"
            )
        if self.redis_cluster_replicas < 0 or self.redis_cluster not in (0, *range(3, 1001)):
            raise LocalTopologyError(
                f"a Redis Cluster needs at least 3 masters (Redis refuses fewer), got {self.redis_cluster}; "
                "use --redis-cluster 3 or more, and --redis-cluster-replicas 0 or more"
            )
        if self.ha and self.replicas < 1:
            raise LocalTopologyError(
                "--ha needs at least one replica for Patroni to fail over to: use --replicas 1 or more"
            )

    def replicas_of(self, group: str) -> int:
        """How many streaming replicas ``group`` has (``main``: ``replicas``; a shard group: ``shard_replicas``)."""
        return self.replicas if group == "main" else self.shard_replicas

    def mismatches(
        self,
        replicas: int | None,
        shards: int | None,
        pgbouncer: bool | None,
        **more: bool | int | None,
    ) -> list[str]:
        """Human-readable differences between this shape and requested values (None = any).

        ``more`` takes the other fields by name (``ha``, ``redis_cluster``, ``redis_cluster_replicas``).
        """
        wanted: dict[str, bool | int | None] = {"replicas": replicas, "shards": shards, "pgbouncer": pgbouncer, **more}
        out = []
        for name, value in wanted.items():
            recorded = getattr(self, name)
            if value is not None and value != recorded:
                out.append(f"{name}={value} (state has {recorded})")
        return out


@dataclass(frozen=True)
class TopologyState:
    """Everything ``state.json`` records: shape, generated password and nodes."""

    shape: Shape
    password: str
    nodes: tuple[NodeInfo, ...] = field(default_factory=tuple)

    def names(self) -> list[str]:
        """Every node name, in start order."""
        return [n.name for n in self.nodes]

    def node(self, name: str) -> NodeInfo:
        """The node called ``name``; the error lists the known names."""
        for n in self.nodes:
            if n.name == name:
                return n
        raise LocalTopologyError(f"unknown node {name!r}; known nodes: {', '.join(self.names())}")

    def groups(self) -> list[str]:
        """Group names in order (``main`` first, then the shards)."""
        seen: list[str] = []
        for n in self.nodes:
            if n.kind == "postgres" and n.group is not None and n.group not in seen:
                seen.append(n.group)
        return seen

    def postgres_nodes(self, group: str | None = None) -> list[NodeInfo]:
        """PostgreSQL nodes, optionally of one group."""
        return [n for n in self.nodes if n.kind == "postgres" and (group is None or n.group == group)]

    def group_primary(self, group: str) -> NodeInfo:
        """The group's current primary: the last promoted node, else the original primary."""
        primaries = [n for n in self.postgres_nodes(group) if n.role == "primary"]
        if not primaries:
            raise LocalTopologyError(f"group {group!r} has no primary in the state")
        return primaries[-1]

    def with_role(self, name: str, role: Role) -> TopologyState:
        """A copy with node ``name`` given ``role``."""
        self.node(name)
        nodes = tuple(replace(n, role=role) if n.name == name else n for n in self.nodes)
        return replace(self, nodes=nodes)

    def url(self, node: NodeInfo) -> str:
        """The connection URL of a PostgreSQL or PgBouncer node, the Redis URL, or etcd's client URL."""
        if node.kind in ("redis", "redis-cluster"):
            return f"redis://{HOST}:{node.port}/0"
        if node.kind == "etcd":
            return f"http://{HOST}:{node.port}"
        return f"postgresql://{USER}:{quote(self.password, safe='')}@{HOST}:{node.port}/{DATABASE}"


def plan(shape: Shape, password: str, root: Path, ports: list[int]) -> TopologyState:
    """The node list for ``shape`` under ``root``, taking ports from ``ports`` in order."""
    nodes: list[NodeInfo] = []
    port_iter = iter(ports)
    nodes_dir = root / "nodes"

    def pg(name: str, group: str, role: Role, upstream: str | None, slot: str | None) -> NodeInfo:
        base = nodes_dir / name
        return NodeInfo(name, "postgres", group, role, next(port_iter), base / "data",
                        base / "postgres.log", upstream, slot)  # fmt: skip

    groups = ["main", *(f"shard{i}" for i in range(shape.shards))]
    for group in groups:
        nodes.append(pg(primary_name(group), group, "primary", None, None))
        for i in range(1, shape.replicas_of(group) + 1):
            nodes.append(pg(replica_name(group, i), group, "replica", primary_name(group), replica_slot(group, i)))
    base = nodes_dir / "redis"
    nodes.append(NodeInfo("redis", "redis", None, None, next(port_iter), base, base / "redis.log"))
    if shape.pgbouncer:
        for group in groups:
            base = nodes_dir / pgbouncer_name(group)
            nodes.append(NodeInfo(pgbouncer_name(group), "pgbouncer", group, None, next(port_iter),
                                  base, base / "pgbouncer.log", primary_name(group)))  # fmt: skip
    if shape.ha:  # Patroni's REST port on each node of main, then etcd (client and peer ports)
        nodes = [
            replace(n, api_port=next(port_iter)) if n.kind == "postgres" and n.group == "main" else n for n in nodes
        ]
        base = nodes_dir / ETCD_NAME
        nodes.append(NodeInfo(ETCD_NAME, "etcd", None, None, next(port_iter), base, base / "etcd.log",
                              api_port=next(port_iter)))  # fmt: skip
    for i in range(1, redis_cluster_size(shape) + 1):
        base = nodes_dir / f"{REDIS_CLUSTER_PREFIX}{i}"
        nodes.append(NodeInfo(f"{REDIS_CLUSTER_PREFIX}{i}", "redis-cluster", None, None, next(port_iter),
                              base, base / "redis.log", api_port=next(port_iter)))  # fmt: skip
    return TopologyState(shape=shape, password=password, nodes=tuple(nodes))


def redis_cluster_size(shape: Shape) -> int:
    """How many Redis Cluster nodes (masters and their replicas) ``shape`` has."""
    return shape.redis_cluster * (1 + shape.redis_cluster_replicas)


def node_count(shape: Shape) -> int:
    """How many ports ``shape`` needs (most nodes one; Patroni nodes, etcd and Redis Cluster nodes two)."""
    groups = 1 + shape.shards
    replicas = shape.replicas + shape.shards * shape.shard_replicas
    ha = (1 + shape.replicas + 2) if shape.ha else 0
    return groups + replicas + 1 + (groups if shape.pgbouncer else 0) + ha + 2 * redis_cluster_size(shape)


def to_json(state: TopologyState) -> dict[str, Any]:
    """The JSON document for ``state``."""
    nodes = []
    for n in state.nodes:
        d = asdict(n)
        d["data_dir"] = str(n.data_dir)
        d["log_path"] = str(n.log_path)
        nodes.append(d)
    return {"version": STATE_VERSION, "shape": asdict(state.shape), "password": state.password, "nodes": nodes}


def from_json(doc: dict[str, Any]) -> TopologyState:
    """Parse a ``state.json`` document."""
    if doc.get("version") != STATE_VERSION:
        raise LocalTopologyError(
            f"state.json has version {doc.get('version')!r}, expected {STATE_VERSION}: "
            "run `dbscale down --purge` and `dbscale up` again"
        )
    try:
        nodes = tuple(
            NodeInfo(**{**n, "data_dir": Path(n["data_dir"]), "log_path": Path(n["log_path"])}) for n in doc["nodes"]
        )
        return TopologyState(shape=Shape(**doc["shape"]), password=doc["password"], nodes=nodes)
    except (KeyError, TypeError) as exc:
        raise LocalTopologyError(f"state.json is malformed ({exc}): run `dbscale down --purge`") from exc


def _write_private(path: Path, text: str) -> None:
    """Write ``text`` atomically to ``path`` with mode 0600."""
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(text)
    os.chmod(tmp, 0o600)
    os.replace(tmp, path)


def load_state(root: Path) -> TopologyState | None:
    """The state recorded under ``root``, or None when there is none."""
    try:
        text = (root / STATE_FILE).read_text()
    except FileNotFoundError:
        return None
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as exc:
        raise LocalTopologyError(f"{root / STATE_FILE} is not valid JSON: run `dbscale down --purge`") from exc
    return from_json(doc)


def save_state(root: Path, state: TopologyState) -> None:
    """Write ``state.json`` (mode 0600: it holds the password)."""
    _write_private(root / STATE_FILE, json.dumps(to_json(state), indent=2) + "\n")


def config_document(state: TopologyState) -> dict[str, Any]:
    """The ``dbscale.toml`` document: Redis URL and, per group, primary/replicas/pgbouncer URLs."""
    redis = next(n for n in state.nodes if n.kind == "redis")
    groups: dict[str, Any] = {}
    for group in state.groups():
        primary = state.group_primary(group)
        entry: dict[str, Any] = {
            "primary": state.url(primary),
            "replicas": [state.url(n) for n in state.postgres_nodes(group) if n.role == "replica"],
        }
        bouncer = [n for n in state.nodes if n.kind == "pgbouncer" and n.group == group]
        if bouncer:
            entry["pgbouncer"] = state.url(bouncer[0])
        patroni = [f"http://{HOST}:{n.api_port}" for n in state.postgres_nodes(group) if n.patroni]
        if patroni:
            entry["patroni"] = patroni
        groups[group] = entry
    document: dict[str, Any] = {"cache": {"redis_url": state.url(redis)}, "groups": groups}
    shard_groups = [g for g in state.groups() if g != "main"]
    if shard_groups:  # `up --shards M`: the shard groups under the default scheme (see dbscale.sharding)
        document["sharding"] = {"strategy": "ring", "groups": shard_groups}
    return document


def write_config(path: Path, state: TopologyState) -> None:
    """Write ``dbscale.toml`` (mode 0600: it holds the password)."""
    _write_private(path, tomli_w.dumps(config_document(state)))
