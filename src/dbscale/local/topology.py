"""``LocalTopology``: start, inspect, break and stop a real local PostgreSQL/Redis/PgBouncer topology.

Theory of operation: ``state.json`` (written first, before any server starts) is the single record
of what exists; every operation reloads it. ``up`` is a convergence loop over that record: each node
that is not running is created if its directory is missing and started otherwise, so running it
again after a crash, a SIGKILL or an interrupted ``up`` brings back exactly what is missing. Groups
and Redis converge concurrently; within a group the primary comes first, then its replicas (base
backups in parallel), then its PgBouncer. A file lock serializes ``up``/``down``/``promote``.
"""

from __future__ import annotations

import fcntl
import os
import secrets
import shutil
import signal
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor, wait
from contextlib import contextmanager
from pathlib import Path
from typing import TypeVar

from dbscale.errors import LocalTopologyError
from dbscale.local import etcd, nginx, patroni, pgbouncer, postgres, processes, redis_server
from dbscale.local import redis_cluster as cluster_of_redis
from dbscale.local.binaries import find_binaries, find_binary
from dbscale.local.ports import free_ports
from dbscale.local.runtime import Runtime
from dbscale.local.service_user import check_traversable, current_service_user
from dbscale.local.state import (
    CONFIG_FILE,
    ETCD_NAME,
    STATE_FILE,
    NodeInfo,
    Shape,
    TopologyState,
    load_state,
    node_count,
    plan,
    save_state,
    write_config,
)

DEFAULT_STATE_DIR = ".dbscale"
#: The order servers are stopped in: clients before what they use; etcd after Patroni (it holds the leader lock).
STOP_ORDER = ("pgbouncer", "postgres", "etcd", "redis", "redis-cluster")
_T = TypeVar("_T")


def _all(items: list[_T], fn: Callable[[_T], object]) -> None:
    """Run ``fn`` on every item concurrently; re-raise the first error after all finished.

    Interrupted (Ctrl-C reaches the calling thread only), it still waits for the running calls,
    with SIGINT ignored meanwhile, so the caller can clean up after them; then re-raises.
    """
    if len(items) <= 1:
        for item in items:
            fn(item)
        return
    pool = ThreadPoolExecutor(max_workers=len(items))
    futures = [pool.submit(fn, item) for item in items]
    try:
        wait(futures)
    except KeyboardInterrupt:
        with _sigint_ignored():
            pool.shutdown(wait=True, cancel_futures=True)
        raise
    pool.shutdown()
    for future in futures:
        error = future.exception()
        if error is not None:
            raise error


@contextmanager
def _sigint_ignored() -> Iterator[None]:
    """Ignore Ctrl-C in the block (cleanup must finish); only the main thread may change handlers."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


class LocalTopology:
    """A local topology rooted at a state directory (default ``.dbscale``).

    Group ``main`` is a primary with streaming replicas; ``shard0..`` are primaries with
    ``shard_replicas`` streaming replicas each (default none); one Redis;
    optionally one PgBouncer per group primary. All listen on free loopback ports.
    """

    def __init__(self, state_dir: str | os.PathLike[str] = DEFAULT_STATE_DIR) -> None:
        self.state_dir = Path(state_dir).absolute()
        self._rt: Runtime | None = None

    # ----------------------------------------------------------------- inspection

    @property
    def config_path(self) -> Path:
        """Path of the generated ``dbscale.toml``."""
        return self.state_dir / CONFIG_FILE

    @property
    def state_path(self) -> Path:
        """Path of ``state.json``."""
        return self.state_dir / STATE_FILE

    def exists(self) -> bool:
        """Whether a topology has been created in the state directory."""
        return self.state_path.is_file()

    def state(self) -> TopologyState:
        """The recorded state; raises if there is none."""
        state = load_state(self.state_dir)
        if state is None:
            raise LocalTopologyError(f"no local topology in {self.state_dir}: run `dbscale up` first")
        return state

    @property
    def password(self) -> str:
        """The generated password of the ``dbscale`` superuser."""
        return self.state().password

    @property
    def shape(self) -> Shape:
        """Replicas, shards and PgBouncer of the recorded topology."""
        return self.state().shape

    def nodes(self) -> list[NodeInfo]:
        """Every node, in start order."""
        return list(self.state().nodes)

    def node(self, name: str) -> NodeInfo:
        """The node called ``name`` (the error lists the known names)."""
        return self.state().node(name)

    def url(self, name: str) -> str:
        """Connection URL of a node (``postgresql://...`` or ``redis://...``)."""
        state = self.state()
        return state.url(state.node(name))

    def pid(self, name: str) -> int | None:
        """The live main pid of a node (postmaster, redis-server, pgbouncer), or None."""
        state = self.state()
        return self._pid(state.node(name), self._runtime(state))

    def node_pids(self, name: str) -> list[int]:
        """Every live process of one node: a PostgreSQL node's postmaster and all its children."""
        state = self.state()
        node, rt = state.node(name), self._runtime(state)
        if node.kind == "postgres":
            return postgres.all_pids(node, rt)
        main = self._pid(node, rt)
        return [] if main is None else [main]

    def is_running(self, name: str) -> bool:
        """Whether the node's main process is alive."""
        return self.pid(name) is not None

    def running_pids(self) -> list[int]:
        """Every live process of the topology, PostgreSQL children included."""
        state = load_state(self.state_dir)
        if state is None:
            return []
        rt = self._runtime(state)
        pids: set[int] = set()
        for n in state.nodes:
            manager = patroni.pid(n) if n.patroni else None
            if manager is not None:
                pids.add(manager)
            if n.kind == "postgres":
                pids.update(postgres.all_pids(n, rt))
            else:
                main = self._pid(n, rt)
                if main is not None:
                    pids.add(main)
        return sorted(pids)

    # ----------------------------------------------------------------- lifecycle

    def up(
        self,
        replicas: int | None = None,
        shards: int | None = None,
        pgbouncer: bool | None = None,
        *,
        shard_replicas: int | None = None,
        ha: bool | None = None,
        redis_cluster: int | None = None,
        redis_cluster_replicas: int | None = None,
        timeout: float = 60.0,
    ) -> list[NodeInfo]:
        """Create and/or start whatever is not running; return once everything serves and streams.

        Shape arguments default to the recorded shape, or 2 replicas / 0 shards / no PgBouncer / 0
        replicas per shard group for a new topology. A shape different from the recorded one is an
        error (``down --purge`` first). ``ha``: Patroni (with etcd) runs group ``main`` and fails over on
        its own; ``redis_cluster``: also start a Redis Cluster of that many masters (``redis_cluster_replicas`` each).
        """
        user = current_service_user()
        check_traversable(self.state_dir, user)  # before creating anything
        self.state_dir.mkdir(parents=True, exist_ok=True)
        if user.switch:
            self.state_dir.chmod(0o755)  # the service user must traverse into nodes/
            check_traversable(self.state_dir, user)  # parents just created under a strict umask
        with self._lock():
            state = load_state(self.state_dir)
            if state is not None:
                diff = state.shape.mismatches(
                    replicas, shards, pgbouncer, shard_replicas=shard_replicas,
                    ha=ha, redis_cluster=redis_cluster, redis_cluster_replicas=redis_cluster_replicas,
                )  # fmt: skip
                if diff:
                    raise LocalTopologyError(
                        f"the topology in {self.state_dir} has a different shape: asked for "
                        f"{', '.join(diff)}. Run `dbscale down --purge` first to recreate it."
                    )
            if state is None:
                defaults = Shape()
                shape = Shape(
                    replicas=defaults.replicas if replicas is None else replicas,
                    shards=defaults.shards if shards is None else shards,
                    pgbouncer=defaults.pgbouncer if pgbouncer is None else pgbouncer,
                    shard_replicas=defaults.shard_replicas if shard_replicas is None else shard_replicas,
                    ha=bool(ha),
                    redis_cluster=redis_cluster or 0,
                    redis_cluster_replicas=redis_cluster_replicas or 0,
                )
                find_binaries(shape.pgbouncer)  # fail before writing anything
                for tool in (["patroni", "etcd"] if shape.ha else []) + (["redis-cli"] if shape.redis_cluster else []):
                    find_binary(tool)
                password = secrets.token_urlsafe(24)
                state = plan(shape, password, self.state_dir, free_ports(node_count(shape)))
                save_state(self.state_dir, state)
            (self.state_dir / "nodes").mkdir(mode=0o755, exist_ok=True)
            rt = self._runtime(state)
            # Thaw anything a test froze with SIGSTOP: "up" means serving again.
            processes.send_signal(self.running_pids(), signal.SIGCONT)
            redis = next(n for n in state.nodes if n.kind == "redis")
            tasks: list[Callable[[], None]] = [
                *(lambda g=g: self._converge_group(state, rt, g, timeout) for g in state.groups()),
                lambda: redis_server.start(redis, rt, timeout),
            ]
            cluster_nodes = [n for n in state.nodes if n.kind == "redis-cluster"]
            if cluster_nodes:
                tasks.append(
                    lambda: cluster_of_redis.converge(cluster_nodes, state.shape.redis_cluster_replicas, rt, timeout)
                )
            running = {n.name for n in state.nodes if self._pid(n, rt) is not None}
            write_config(self.config_path, state)  # recorded before starting: status and down see it
            try:
                _all(tasks, lambda task: task())
            except KeyboardInterrupt:
                raise KeyboardInterrupt(self._undo_start(state, rt, running)) from None
            return list(state.nodes)

    def _undo_start(self, state: TopologyState, rt: Runtime, running: set[str]) -> str:
        """After a Ctrl-C during ``up``: stop the nodes ``up`` started (not those already ``running``)."""
        with _sigint_ignored():
            started = [n for n in state.nodes if n.name not in running and self._pid(n, rt) is not None]
            for kind in STOP_ORDER:
                _all([n for n in started if n.kind == kind], lambda n: self._stop(n, rt))
        if not started:
            return f"`dbscale up` stopped before any server started; the topology stays recorded in {self.state_dir}"
        return (
            f"stopped {len(started)} server(s) this `dbscale up` had started ({', '.join(n.name for n in started)}); "
            f"the topology stays recorded in {self.state_dir}: `dbscale up` resumes it, `dbscale down --purge` removes it"
        )

    def up_edge(self, timeout: float = 30.0) -> nginx.EdgeConfig:
        """Start the HTTP edge: Debian's nginx (proxy_cache) in front of a demo app on this topology."""
        return nginx.start_edge(self.state_dir, self.config_path, current_service_user(), timeout)

    def _converge_group(self, state: TopologyState, rt: Runtime, group: str, timeout: float) -> None:
        members = state.postgres_nodes(group)
        if any(n.patroni for n in members):  # `up --ha`: Patroni runs the group, PgBouncer follows its leader
            bouncers = [n for n in state.nodes if n.kind == "pgbouncer" and n.group == group]
            patroni.converge(members, state.node(ETCD_NAME), next(iter(bouncers), None), rt, timeout)
            return
        for node in (n for n in members if n.role == "primary"):
            if not postgres.is_initialized(node):
                if node.upstream is not None:
                    raise LocalTopologyError(
                        f"{node.name} was promoted but its data directory is gone: run `dbscale down --purge`"
                    )
                postgres.init_primary(node, rt)
            postgres.start(node, rt, timeout)
            if node.upstream is None:
                postgres.ensure_database(node, rt.password)

        def converge_replica(node: NodeInfo) -> None:
            upstream = state.node(node.upstream or "")
            if not postgres.is_initialized(node):
                assert node.slot is not None
                postgres.ensure_slot(upstream, rt.password, node.slot)
                postgres.basebackup(node, upstream, rt)
            postgres.start(node, rt, timeout)
            postgres.wait_streaming(node, rt.password, timeout)

        _all([n for n in members if n.role == "replica"], converge_replica)
        for bouncer in (n for n in state.nodes if n.kind == "pgbouncer" and n.group == group):
            pgbouncer.start(bouncer, rt, state.group_primary(group).port, timeout)

    def down(self, purge: bool = False) -> None:
        """Stop every process of the topology and wait until all are gone; ``purge`` deletes the dir.

        A directory without state is left alone (no error).
        """
        if not self.exists():
            return
        with self._lock():
            state = load_state(self.state_dir)
            if state is None:
                return
            nginx.stop_edge(self.state_dir)
            rt = self._runtime(state)
            for kind in STOP_ORDER:
                _all([n for n in state.nodes if n.kind == kind], lambda n: self._stop(n, rt))
            left = self.running_pids()
            if left:
                raise LocalTopologyError(f"processes {left} of the topology are still running after down")
        if purge:
            shutil.rmtree(self.state_dir)

    # ----------------------------------------------------------------- fault injection

    def start(self, name: str, timeout: float = 60.0) -> None:
        """Start one node (no-op if running); a replica is waited for until it streams again."""
        state = self.state()
        node, rt = state.node(name), self._runtime(state)
        if node.patroni:
            bouncers = [n for n in state.nodes if n.kind == "pgbouncer" and n.group == node.group]
            patroni.start(node, rt, state.node(ETCD_NAME).port, next(iter(bouncers), None))
            patroni.wait_member(node, rt, timeout)
        elif node.kind == "postgres":
            postgres.start(node, rt, timeout)
            if node.role == "replica" and self._pid(state.node(node.upstream or ""), rt) is not None:
                postgres.wait_streaming(node, rt.password, timeout)
        elif node.kind == "redis":
            redis_server.start(node, rt, timeout)
        elif node.kind == "etcd":
            etcd.start(node, rt, timeout)
        elif node.kind == "redis-cluster":
            cluster_of_redis.start(node, rt, timeout)
        else:
            pgbouncer.start(node, rt, self._bouncer_target(state, rt, node.group or ""), timeout)

    def stop(self, name: str) -> None:
        """Stop one node cleanly (PostgreSQL fast shutdown) and wait until its processes are gone."""
        state = self.state()
        self._stop(state.node(name), self._runtime(state))

    def kill(self, name: str) -> int | None:
        """SIGKILL the node's main process (leaving e.g. a stale ``postmaster.pid``); return its pid."""
        state = self.state()
        node, rt = state.node(name), self._runtime(state)
        if node.patroni:  # the whole member crashes: Patroni too, or it would just restart PostgreSQL
            return patroni.kill(node, rt)
        if node.kind == "postgres":
            return postgres.kill(node, rt)
        if node.kind == "redis":
            return redis_server.kill(node, rt)
        if node.kind == "etcd":
            return etcd.kill(node, rt)
        if node.kind == "redis-cluster":
            return cluster_of_redis.kill(node, rt)
        return pgbouncer.kill(node, rt)

    def pause_replay(self, name: str) -> None:
        """Pause WAL replay on a replica; returns once it reports ``paused``."""
        node = self._replica(name, "pause replay on")
        postgres.pause_replay(node, self.password)

    def resume_replay(self, name: str) -> None:
        """Resume WAL replay on a replica (no-op if not paused)."""
        node = self._replica(name, "resume replay on")
        postgres.resume_replay(node, self.password)

    def is_replay_paused(self, name: str) -> bool:
        """Whether replay on a replica is paused (or a pause is requested)."""
        node = self._replica(name, "query replay state of")
        return postgres.replay_pause_state(node, self.password) != "not paused"

    def promote(self, name: str, timeout: float = 60.0) -> None:
        """Promote a replica to primary; updates ``state.json`` and ``dbscale.toml``."""
        with self._lock():
            node = self._replica(name, "promote")
            if node.patroni:
                raise LocalTopologyError(
                    f"{name} is managed by Patroni (`dbscale up --ha`): dbscale never promotes in HA mode. "
                    f"Kill the leader (`dbscale node kill`) to fail over, or run `patronictl -c "
                    f"{node.node_dir / patroni.CONFIG_NAME} switchover`"
                )
            state = self.state()
            postgres.promote(node, state.password, timeout)
            state = state.with_role(name, "primary")
            save_state(self.state_dir, state)
            write_config(self.config_path, state)

    # ----------------------------------------------------------------- helpers

    def _replica(self, name: str, action: str) -> NodeInfo:
        node = self.node(name)
        if node.kind != "postgres":
            raise LocalTopologyError(f"cannot {action} {name}: it is a {node.kind} node, not a PostgreSQL replica")
        if node.role != "replica":
            raise LocalTopologyError(f"cannot {action} {name}: it is a primary, not a replica")
        return node

    def _runtime(self, state: TopologyState) -> Runtime:
        if self._rt is None or self._rt.password != state.password:
            self._rt = Runtime(find_binaries(state.shape.pgbouncer), current_service_user(), state.password)
        return self._rt

    @staticmethod
    def _pid(node: NodeInfo, rt: Runtime) -> int | None:
        if node.kind == "postgres":
            return postgres.pid(node, rt)
        if node.kind == "redis":
            return redis_server.pid(node, rt)
        if node.kind == "etcd":
            return etcd.pid(node, rt)
        if node.kind == "redis-cluster":
            return cluster_of_redis.pid(node, rt)
        return pgbouncer.pid(node, rt)

    @staticmethod
    def _stop(node: NodeInfo, rt: Runtime) -> None:
        if node.patroni:
            patroni.stop(node, rt)
        elif node.kind == "postgres":
            postgres.stop(node, rt)
        elif node.kind == "redis":
            redis_server.stop(node, rt)
        elif node.kind == "etcd":
            etcd.stop(node, rt)
        elif node.kind == "redis-cluster":
            cluster_of_redis.stop(node, rt)
        else:
            pgbouncer.stop(node, rt)

    @staticmethod
    def _bouncer_target(state: TopologyState, rt: Runtime, group: str) -> int:
        """The port PgBouncer of ``group`` pools for: Patroni's leader under ``--ha``, else the recorded primary."""
        members = state.postgres_nodes(group)
        if any(n.patroni for n in members):
            return patroni.wait_leader(members, rt, 30.0).port
        return state.group_primary(group).port

    @contextmanager
    def _lock(self) -> Iterator[None]:
        fd = os.open(self.state_dir / ".lock", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)
