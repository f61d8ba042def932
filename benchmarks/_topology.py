"""The topology a benchmark runs on: the one ``--config`` names, or a throwaway local one it starts and purges."""

from __future__ import annotations

import os
import shutil
import signal
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def bench_config(config: Path | None, name: str, *, replicas: int = 0, shards: int = 0) -> Iterator[Path]:
    """``config`` as is, or the ``dbscale.toml`` of a fresh local topology (one primary, ``replicas``
    replicas, and ``shards`` single-primary shard groups).

    The fresh topology lives in a state dir under /tmp (reachable by the ``postgres`` user when run as
    root) and is stopped and purged on exit, whatever happened.
    """
    if config is not None:
        yield config
        return
    from dbscale.local import LocalTopology

    state_dir = Path(tempfile.mkdtemp(prefix=f"dbscale-bench-{name}-", dir="/tmp"))
    os.chmod(state_dir, 0o755)
    topology = LocalTopology(state_dir)
    previous = signal.signal(signal.SIGTERM, _exit_on_sigterm)  # `kill` or a CI timeout: the servers still stop
    try:
        topology.up(replicas=replicas, shards=shards, pgbouncer=False)
        yield topology.config_path
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)  # a second SIGTERM during the clean-up ends it at once
        topology.down(purge=True)
        shutil.rmtree(state_dir, ignore_errors=True)
        signal.signal(signal.SIGTERM, previous)


def _exit_on_sigterm(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)
