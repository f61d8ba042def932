"""What the two L2 clients share: client options, the packed GET, error translation, fork safety.

The clients themselves are :class:`~dbscale.cache.l2_async.AsyncRedisL2` (the asyncio source) and
:class:`~dbscale.cache.l2.RedisL2` (generated from it by ``scripts/unasync.py``).
"""

from __future__ import annotations

import select
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, Protocol

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from dbscale.config import mask_url
from dbscale.errors import CacheEntryError, CacheError, CacheUnavailable
from dbscale.forks import AtFork

__all__ = [
    "BATCH",
    "ERRORS",
    "AConn",
    "CacheUnavailable",
    "Conn",
    "HasIdle",
    "aclosed",
    "aconnected",
    "adrop",
    "aget_options",
    "client_options",
    "closed",
    "connected",
    "drop",
    "failure",
    "get_options",
    "live",
    "make_connection",
    "packed_get",
    "translate",
    "unreplicated",
]

#: Keys per pipelined batch (invalidation) and per SPOP/SCAN step.
BATCH = 500

#: What a Redis call can raise besides a reply: redis-py's errors (both flavours; a cluster client that reaches no
#: seed raises RedisClusterException, no RedisError) and socket errors.
ERRORS = (redis.RedisError, redis.exceptions.RedisClusterException, OSError, TimeoutError)


def client_options(timeout: float) -> dict[str, Any]:
    """redis-py client options: bounded timeouts, no hidden retries (the breaker decides)."""
    return {
        "socket_timeout": timeout,
        "socket_connect_timeout": timeout,
        "retry": Retry(NoBackoff(), 0),
        "retry_on_timeout": False,
        "health_check_interval": 0,
    }


def get_options(timeout: float) -> dict[str, Any]:
    """Options of the blocking client's GET connections: the socket timeout bounds each send and read."""
    return client_options(timeout)


def aget_options(timeout: float) -> dict[str, Any]:
    """Options of the asyncio client's GET connections: no socket timeout.

    With one, redis.asyncio wraps every send in ``asyncio.wait_for`` (a new task per command);
    instead one ``asyncio.timeout`` bounds the send and the read together (``_compat.adeadline``),
    and (re)connecting is bounded by the connect timeout, as in the blocking client.
    """
    return {**client_options(timeout), "socket_timeout": None}


def packed_get(name: bytes) -> tuple[bytes]:
    """The RESP encoding of ``GET name`` (what redis-py's packer builds, without its generic loop)."""
    return (b"*2\r\n$3\r\nGET\r\n$%d\r\n%b\r\n" % (len(name), name),)


def unreplicated(url: str, replicas: int, wait_ms: int) -> CacheUnavailable:
    """An invalidation a cluster master took but its replica did not confirm within ``wait_ms``: it is
    retried, because a failover now could bring the old value back (docs/redis-cluster.md §3)."""
    return CacheUnavailable(
        f"redis {mask_url(url)}: invalidation not confirmed by {replicas} replica(s) within {wait_ms} ms (WAIT); "
        "it is retried until the replica answers or a failover completes (check the replica's link to its master)"
    )


def failure(url: str, op: str, exc: BaseException) -> CacheError:
    """The error for a failed operation (the URL's password masked).

    A key of the wrong Redis type (``WRONGTYPE``, also from inside a script) is a
    :class:`~dbscale.errors.CacheEntryError`: Redis answered, one key is bad, and the breaker must
    not open for the whole cache. Everything else is :class:`CacheUnavailable`.
    """
    text = f"redis {mask_url(url)}: {op} failed: {type(exc).__name__}: {exc}"
    if isinstance(exc, redis.ResponseError) and "WRONGTYPE" in str(exc):
        return CacheEntryError(text)
    return CacheUnavailable(text)


@contextmanager
def translate(url: str, op: str) -> Iterator[None]:
    """Turn redis-py and socket errors into CacheUnavailable or CacheEntryError (see :func:`failure`)."""
    try:
        yield
    except ERRORS as exc:
        raise failure(url, op, exc) from exc


# -- the GET fast path's view of a connection, per flavour ------------------------------------------------
class Conn(Protocol):
    """The part of a redis-py connection the GET fast path uses."""

    _sock: Any

    def connect(self) -> Any: ...

    def send_packed_command(self, command: tuple[bytes], check_health: bool = True) -> Any: ...

    def read_response(self) -> Any: ...

    def disconnect(self, *args: Any) -> Any: ...


class AConn(Protocol):
    """The part of a redis.asyncio connection the GET fast path uses."""

    @property
    def is_connected(self) -> bool: ...

    async def connect(self) -> Any: ...

    async def send_packed_command(self, command: tuple[bytes], check_health: bool = True) -> Any: ...

    async def read_response(self) -> Any: ...

    async def disconnect(self, nowait: bool = False) -> Any: ...


def make_connection(pool: Any) -> Any:
    """A new connection of ``pool`` (of either flavour) outside its checkout: the caller keeps it."""
    return pool.make_connection()


def connected(conn: Conn) -> bool:
    """Has ``conn`` a socket (it may still have been closed by the server)?"""
    return conn._sock is not None


def aconnected(conn: AConn) -> bool:
    """Has ``conn`` a stream (it may still have been closed by the server)?"""
    return conn.is_connected


def closed(conn: Conn) -> bool:
    """Has the server closed ``conn`` (or left bytes on it) while it sat idle? One zero-timeout poll.

    For a connection whose sends must not be retried (a write-behind save would append twice): a
    dead connection is found before anything is sent on it, instead of by a failed read after.
    """
    sock = conn._sock
    if sock is None:
        return False
    try:
        readable, _, _ = select.select([sock], [], [], 0)
    except (OSError, ValueError):  # a closed descriptor
        return True
    return bool(readable)  # at EOF, or holding bytes no reply of ours accounts for


def aclosed(conn: AConn) -> bool:
    """Has the server closed ``conn`` while it sat idle? (The event loop has read its EOF by now.)"""
    reader = getattr(conn, "_reader", None)
    return reader is not None and (reader.at_eof() or reader.exception() is not None)


def drop(conn: Conn) -> None:
    """Close ``conn``'s socket (it reconnects on next use): no reply of an interrupted call is left to read."""
    conn.disconnect()


async def adrop(conn: AConn) -> None:
    """Close ``conn``'s stream without waiting for the server (it reconnects on next use)."""
    await conn.disconnect(nowait=True)


class HasIdle(Protocol):
    """An L2 client keeping idle GET connections of its own."""

    _idle: list[Any]


def _drop_idle(l2: HasIdle) -> None:
    l2._idle = []  # the parent's connections, shared with it: forgotten (redis-py sends nothing from a child)


#: Every live L2 client (and write-behind object): a forked child drops the idle connections it shares with
#: its parent (:mod:`dbscale.forks`).
live: AtFork[HasIdle] = AtFork(_drop_idle)
