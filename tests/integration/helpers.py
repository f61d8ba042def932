"""Helpers shared by the integration tests."""

from __future__ import annotations

import functools
import inspect
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

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
