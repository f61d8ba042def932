"""Cross-process L1 invalidation (Redis pub/sub) and the retry queue for invalidations Redis missed.

Redis 7.0 has no server-assisted client-side caching that redis-py can use, so every process
subscribes to one channel per namespace and each invalidation is broadcast on it after Redis itself
was updated. A process only stores values in its L1 while its subscription is live; when the
subscription breaks, the L1 is cleared (messages may have been missed) and stays unused until the
listener is subscribed again. L1 entries also expire on their own short TTL, so a message lost in
any other way only bounds staleness. The listener PINGs its connection every second; no PONG for
3 s (a hung Redis, a connection dropped without a reset) counts as a lost subscription. On a Redis
Cluster (``redis+cluster://`` seeds) the channel is classic pub/sub, which the cluster forwards to
every node: the listener subscribes on one seed and, when that node is lost (killed, failed over),
clears the L1 as above and subscribes on the next seed.

Invalidations that cannot reach Redis are never dropped: the local L1 is cleared of them at once,
they are counted, and :class:`RetryQueue` re-applies them (and broadcasts them) until Redis answers.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import orjson
import redis

from dbscale._compat import join, spawn
from dbscale.config import mask_url, node_urls
from dbscale.errors import CacheUnavailable

__all__ = ["Invalidation", "Listener", "RetryQueue", "decode_message", "encode_message"]

log = logging.getLogger("dbscale.cache")


@dataclass(frozen=True, slots=True)
class Invalidation:
    """One invalidation request: ``kind`` is ``key``, ``tag`` or ``pattern``; ``stale`` keeps a stale copy;
    ``marker`` is the causal token its lag-aware fill markers record ("" = none)."""

    kind: str
    items: tuple[str, ...]
    stale: bool = True
    marker: str = ""


def encode_message(origin: str, *, keys: list[str] | None = None, pattern: str | None = None) -> bytes:
    """The pub/sub payload announcing invalidated keys or a pattern."""
    body: dict[str, Any] = {"o": origin}
    if keys is not None:
        body["k"] = keys
    if pattern is not None:
        body["p"] = pattern
    return orjson.dumps(body)


def decode_message(data: bytes) -> tuple[str, list[str], str | None]:
    """``(origin, keys, pattern)`` from a payload; malformed payloads raise ValueError."""
    body = orjson.loads(data)
    if not isinstance(body, dict):
        raise ValueError("invalidation message is not an object")
    keys = body.get("k") or []
    pattern = body.get("p")
    return str(body.get("o", "")), [str(k) for k in keys], None if pattern is None else str(pattern)


PING_INTERVAL = 1.0
PONG_TIMEOUT = 3.0


class _Liveness:
    """When to PING the subscribed connection, and when a missing PONG means it is dead."""

    def __init__(self, now: float) -> None:
        self._last_ping = now
        self._waiting_since: float | None = None

    def should_ping(self, now: float) -> bool:
        if now - self._last_ping < PING_INTERVAL:
            return False
        self._last_ping = now
        if self._waiting_since is None:
            self._waiting_since = now
        return True

    def pong(self) -> None:
        self._waiting_since = None

    def dead(self, now: float) -> bool:
        return self._waiting_since is not None and now - self._waiting_since > PONG_TIMEOUT


class Listener:
    """A daemon thread subscribed to the invalidation channel.

    ``on_message(keys, pattern)`` is called for every message from another process; ``on_reset()`` when
    the subscription is (re)established or lost. :attr:`ready` is True only while subscribed.
    """

    def __init__(
        self,
        url: str,
        channel: str,
        origin: str,
        on_message: Callable[[list[str], str | None], None],
        on_reset: Callable[[], None],
    ) -> None:
        self.url, self.channel, self.origin = url, channel, origin
        self._on_message, self._on_reset = on_message, on_reset
        self.ready = False
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        """Start the thread (once)."""
        if self._thread is None:
            self._thread = spawn(self._run, "dbscale-cache-invalidation")

    def wait_ready(self, timeout: float) -> bool:
        """Block until subscribed (for tests and start-up); True if ready."""
        deadline = time.monotonic() + timeout
        while not self.ready and time.monotonic() < deadline:
            time.sleep(0.005)
        return self.ready

    def _run(self) -> None:
        backoff = 0.05
        seeds = node_urls(self.url)  # a Redis Cluster forwards PUBLISH to every node: subscribe on any live one
        attempt = 0
        while not self._stop.is_set():
            url = seeds[attempt % len(seeds)]
            attempt += 1
            client = redis.Redis.from_url(url, socket_connect_timeout=1.0, socket_timeout=5.0)
            pubsub = client.pubsub()  # type: ignore[no-untyped-call]
            try:
                pubsub.subscribe(self.channel)
                liveness = _Liveness(time.monotonic())
                while not self._stop.is_set():
                    if self.ready and liveness.should_ping(time.monotonic()):
                        pubsub.ping()
                    msg = pubsub.get_message(timeout=0.2)
                    if liveness.dead(time.monotonic()):
                        # A hung Redis (or a silently dropped connection) delivers nothing: stop
                        # trusting the L1 rather than wait for a message that cannot come.
                        raise redis.TimeoutError(f"no PONG on the invalidation channel for {PONG_TIMEOUT:g}s")
                    if msg is None:
                        continue
                    if msg["type"] == "subscribe":
                        self._on_reset()  # anything published before now may have been missed
                        self.ready = True
                        backoff = 0.05
                    elif msg["type"] == "pong":
                        liveness.pong()
                    elif msg["type"] == "message":
                        self._handle(msg["data"])
            except (redis.RedisError, OSError) as exc:
                if self.ready:
                    log.warning("cache invalidation channel on %s lost: %s", mask_url(url), exc)
            finally:
                was_ready, self.ready = self.ready, False
                if was_ready:
                    self._on_reset()
                try:
                    pubsub.close()
                    client.close()
                except (redis.RedisError, OSError):
                    pass
            self._stop.wait(backoff)
            backoff = min(backoff * 2, 1.0)

    def _handle(self, data: bytes) -> None:
        try:
            origin, keys, pattern = decode_message(data)
        except ValueError:
            log.warning("ignoring malformed cache invalidation message")
            return
        if origin != self.origin:
            self._on_message(keys, pattern)

    def close(self) -> None:
        """Stop the thread (returns within ~0.3 s)."""
        self._stop.set()
        if self._thread is not None:
            join(self._thread, 2.0)


class RetryQueue:
    """Re-applies invalidations that failed, with back-off, until Redis accepts them.

    ``apply(inv)`` does the Redis work and the broadcast; it raises CacheUnavailable on failure.
    ``on_change(n)`` reports the number pending (for the gauge).
    """

    def __init__(self, apply: Callable[[Invalidation], None], on_change: Callable[[int], None]) -> None:
        self._apply = apply
        self._on_change = on_change
        self._items: deque[Invalidation] = deque()
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __len__(self) -> int:
        return len(self._items)

    def after_fork(self) -> None:
        """In a forked child: nothing pending (the parent retries its own), new locks, no thread yet."""
        self._items = deque()
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread = None

    def add(self, inv: Invalidation) -> None:
        """Queue ``inv`` and make sure the retry thread runs."""
        with self._lock:
            self._items.append(inv)
            n = len(self._items)
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="dbscale-cache-retry", daemon=True)
                self._thread.start()
        self._on_change(n)
        self._wake.set()

    def flush(self) -> bool:
        """Try every pending invalidation once, in order; True if none remain."""
        while True:
            with self._lock:
                if not self._items:
                    return True
                inv = self._items[0]
            try:
                self._apply(inv)
            except CacheUnavailable:
                return False
            with self._lock:
                if self._items and self._items[0] is inv:
                    self._items.popleft()
                n = len(self._items)
            self._on_change(n)

    def _run(self) -> None:
        delay = 0.05
        while not self._stop.is_set():
            self._wake.wait(delay)
            self._wake.clear()
            if self._stop.is_set():
                return
            delay = 0.5 if self.flush() else min(max(delay, 0.05) * 2, 0.5)

    def close(self) -> None:
        """Stop the thread; pending items are dropped (they were logged and counted)."""
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=2.0)
