"""Helpers shared by the integration tests."""

from __future__ import annotations

import functools
import inspect
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import text

from dbscale import Cluster
from dbscale.cache import AsyncCache, Cache


def wait_replicated(cluster: Cluster, timeout: float = 10.0) -> None:
    """Until every replica of the default group has replayed everything its primary wrote (router's view)."""
    router = cluster.router()
    deadline = time.monotonic() + timeout
    while True:
        cluster.refresh()
        if all(router.state.views[r].lag_bytes == 0 for r in router.settings.replicas):
            return
        assert time.monotonic() < deadline, "replicas did not catch up"
        time.sleep(0.05)


@contextmanager
def replicated_table(config_path: Path, columns: str, fill: str) -> Iterator[str]:
    """A fresh table ``rt_<random>`` with ``columns`` (SQL), filled by ``fill`` (SQL with ``{name}``),
    replayed by every replica before the block runs; dropped after it."""
    name = f"rt_{uuid.uuid4().hex[:8]}"
    with Cluster.from_config(config_path) as cluster:
        with cluster.write() as conn:
            conn.execute(text(f"CREATE TABLE {name} ({columns})"))
            conn.execute(text(fill.format(name=name)))
        wait_replicated(cluster)
    try:
        yield name
    finally:
        with Cluster.from_config(config_path) as cluster, cluster.write() as conn:
            conn.execute(text(f"DROP TABLE IF EXISTS {name}"))


# -- one cache test, both front ends ------------------------------------------------------------------
# A behaviour test is written once as a coroutine that wraps every cache call in ``await maybe(...)``
# and decorates plain functions with ``cached``; parametrized over ``Cache`` and ``AsyncCache``, the
# blocking calls of ``Cache`` simply run inside the event loop.


async def maybe(result: Any) -> Any:
    """The value of a front end's call: awaited for the asyncio cache, as is for the blocking one."""
    return await result if inspect.isawaitable(result) else result


def cached(cache: Cache | AsyncCache, impl: Callable[..., Any], **options: Any) -> Callable[..., Any]:
    """``impl`` decorated by ``cache.cached(**options)``: made a coroutine function for the asyncio cache."""
    if isinstance(cache, AsyncCache):

        async def coro(*args: Any, **kwargs: Any) -> Any:
            return impl(*args, **kwargs)

        return cache.cached(**options)(functools.update_wrapper(coro, impl))  # type: ignore[no-any-return]
    return cache.cached(**options)(impl)  # type: ignore[no-any-return]
