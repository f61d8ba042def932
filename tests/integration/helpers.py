"""Helpers shared by the integration tests."""

from __future__ import annotations

import asyncio
import functools
import inspect
import socket
import threading
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import pytest
from sqlalchemy import text

from dbscale import Cluster
from dbscale.cache import AsyncCache, Cache


def wait_replicated(cluster: Cluster, timeout: float = 10.0) -> None:
    """Until every replica of the default group has replayed everything its primary wrote."""
    cluster.refresh()  # a replica a test just restarted is seen as up again
    cluster.wait_replicated(timeout=timeout)


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


class Front:
    """One cache front end behind one blocking interface, so a behaviour test is written once.

    ``Front(cache, "sync")`` calls the blocking :class:`Cache` as is; ``Front(cache, "async")`` calls
    its asyncio twin (``cache.aio``, same core) on an event loop of its own (``asyncio.Runner``): each
    call runs one coroutine to completion, and the functions a test hands over (loaders, decorated
    bodies) are made coroutine functions. Attributes that are no coroutine methods (``core``,
    ``metrics``) are the cache's own. See the ``front`` fixture in ``conftest.py``.
    """

    def __init__(self, cache: Cache, flavour: str) -> None:
        self.flavour = flavour
        self.cache: Cache | AsyncCache = cache if flavour == "sync" else cache.aio
        self._runner = asyncio.Runner() if flavour == "async" else None

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self.cache, name)
        if not inspect.iscoroutinefunction(attr):
            return attr
        return lambda *args, **kwargs: self.resolve(attr(*args, **kwargs))

    def resolve(self, result: Any) -> Any:
        """``result``, or what it gives when awaited on this front's loop."""
        if self._runner is not None and inspect.iscoroutine(result):
            return self._runner.run(result)
        return result

    def native(self, fn: Callable[..., Any]) -> Callable[..., Any]:
        """``fn`` as this flavour's code would be written: a coroutine function for the asyncio front."""
        if self._runner is None or inspect.iscoroutinefunction(fn):
            return fn

        async def coro(*args: Any, **kwargs: Any) -> Any:
            return fn(*args, **kwargs)

        return functools.update_wrapper(coro, fn)

    def get_or_load(self, key: str, loader: Callable[[], Any], **options: Any) -> Any:
        return self.resolve(self.cache.get_or_load(key, self.native(loader), **options))

    def cached(self, **options: Any) -> Callable[[Callable[..., Any]], Decorated]:
        """``cache.cached(**options)``, applied to ``impl`` made native; the result calls blocking."""
        return lambda impl: Decorated(self, self.cache.cached(**options)(self.native(impl)))

    def l2(self) -> Any:
        """The L2 client this front's calls use (the asyncio one of this front's loop)."""
        if isinstance(self.cache, Cache):
            return self.cache.core.sync_l2()

        async def current() -> Any:
            return self.cache._l2()  # type: ignore[union-attr]

        return self.resolve(current())

    def before(self, obj: Any, name: str, first: Callable[[], Any]) -> Callable[[], None]:
        """Make ``obj.name(...)`` call ``first()`` (awaited on the asyncio front) before itself; returns the undo."""
        real = getattr(obj, name)
        if self._runner is None:

            def patched(*args: Any, **kwargs: Any) -> Any:
                first()
                return real(*args, **kwargs)

        else:

            async def patched(*args: Any, **kwargs: Any) -> Any:  # type: ignore[misc]
                await first()
                return await real(*args, **kwargs)

        setattr(obj, name, patched)
        return lambda: setattr(obj, name, real)

    def close(self) -> None:
        """Close the cache (both fronts share the core) and this front's loop."""
        self.resolve(self.cache.close())
        if self._runner is not None:
            self._runner.close()


class Decorated:
    """A function decorated through a :class:`Front`: blocking calls, ``.native`` as the cache returned it."""

    def __init__(self, front: Front, native: Any) -> None:
        self.front, self.native = front, native

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.front.resolve(self.native(*args, **kwargs))

    def invalidate(self, *args: Any, **kwargs: Any) -> Any:
        return self.front.resolve(self.native.invalidate(*args, **kwargs))

    def refresh(self, *args: Any, **kwargs: Any) -> Any:
        return self.front.resolve(self.native.refresh(*args, **kwargs))

    def cache_key(self, *args: Any, **kwargs: Any) -> str:
        return self.native.cache_key(*args, **kwargs)  # type: ignore[no-any-return]


class RoundTripProxy:
    """A loopback TCP proxy to ``target`` that counts request/response exchanges on the wire.

    An exchange starts when the client sends after the server has answered (or first): pipelined
    or chunked client messages before an answer count once, so the count is the number of times a
    caller waited for the network. Use :attr:`url` for ``target_url`` with the proxy's port.
    """

    def __init__(self, target_url: str) -> None:
        parts = urlsplit(target_url)
        assert parts.hostname is not None and parts.port is not None
        self._target = (parts.hostname, parts.port)
        self._listener = socket.create_server(("127.0.0.1", 0))
        port = self._listener.getsockname()[1]
        netloc = parts.netloc.rsplit(":", 1)[0] + f":{port}"
        self.url = urlunsplit(parts._replace(netloc=netloc))
        self._lock = threading.Lock()
        self._count = 0
        self._closed = False
        self._sockets: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def count(self) -> int:
        """Exchanges since the last :meth:`reset`."""
        with self._lock:
            return self._count

    def reset(self) -> None:
        with self._lock:
            self._count = 0

    def close(self) -> None:
        self._closed = True
        for sock in [self._listener, *self._sockets]:
            with suppress(OSError):
                sock.close()

    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            server = socket.create_connection(self._target)
            for sock in (client, server):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self._sockets += [client, server]
            answered = [True]  # per connection: the server spoke since the client's last exchange began
            threading.Thread(target=self._pump, args=(client, server, answered, True), daemon=True).start()
            threading.Thread(target=self._pump, args=(server, client, answered, False), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket, answered: list[bool], upstream: bool) -> None:
        try:
            while data := src.recv(65536):
                with self._lock:
                    if upstream and answered[0]:
                        self._count += 1
                    answered[0] = not upstream
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for sock in (src, dst):
                with suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)


@contextmanager
def over_maxmemory(raw: Any, filler: str) -> Iterator[None]:
    """Redis over its ``maxmemory`` for the block (``noeviction``: writes get -OOM): ``maxmemory`` just above
    what Redis held before a 2 MB ``filler``; ``maxmemory``, its policy and the filler are restored after it."""
    import redis

    saved = raw.config_get("maxmemory", "maxmemory-policy")
    try:
        raw.config_set("maxmemory-policy", "noeviction")
        for _ in range(32):
            raw.rpush(filler, b"x" * 65_536)
        raw.config_set("maxmemory", int(raw.info("memory")["used_memory"]) - 1_000_000)
        with pytest.raises(redis.exceptions.OutOfMemoryError):
            raw.rpush(filler, b"x")
        yield
    finally:
        raw.config_set("maxmemory", saved["maxmemory"])
        raw.config_set("maxmemory-policy", saved["maxmemory-policy"])
        raw.delete(filler)
