"""Serialization of cache values and the entry header stored in Redis. Pure code, no I/O.

An L2 entry is ``header + payload``:

* header (22 ASCII bytes): ``"1"``, the logical expiry in Unix milliseconds (13 digits) and the
  time the loader took in milliseconds (8 digits, for XFetch). The Redis key itself lives longer
  than the logical expiry (by ``stale_ttl``) so an expired value can still be served as stale.
* payload: one format byte (``j`` orjson, ``m`` msgpack, ``p`` pickle; upper case when
  zlib-compressed), then — when an HMAC key is configured — a 32-byte HMAC-SHA256 of the rest, then
  the body.

Values round-trip as their serializer's types: orjson gives back dicts, lists, str, int, float,
bool and None (tuples come back as lists, datetimes as ISO strings). Cache ORM objects through an
explicit plain-dict form::

    @cluster.cache.cached(ttl=300, key="user:{user_id}")
    def load_user(user_id: int) -> dict[str, Any] | None:
        with Session(engine) as s:
            user = s.get(User, user_id)
            return None if user is None else {"id": user.id, "name": user.name, "email": user.email}

    def get_user(user_id: int) -> User | None:
        row = load_user(user_id)
        return None if row is None else User(**row)   # a detached, read-only copy

Pickle is refused unless ``allow_pickle`` and an ``hmac_key`` are both configured: an unsigned pickle
in a shared Redis lets anyone who can write to Redis run code in every reader.
"""

from __future__ import annotations

import hashlib
import hmac
import pickle
import zlib
from collections.abc import Callable
from typing import Any

import msgpack
import orjson

from dbscale.errors import SerializationError

__all__ = ["HEADER_LEN", "Serializer", "decode_header", "encode_header"]

HEADER_LEN = 22
_MAC_LEN = 32
_MAX_EXPIRY_MS = 10**13 - 1
_MAX_DELTA_MS = 10**8 - 1


def encode_header(expires_ms: int, delta_ms: int) -> bytes:
    """The 22-byte entry header for a logical expiry (Unix ms) and a recompute time (ms)."""
    return b"1%013d%08d" % (min(max(expires_ms, 0), _MAX_EXPIRY_MS), min(max(delta_ms, 0), _MAX_DELTA_MS))


def decode_header(entry: bytes) -> tuple[int, int]:
    """``(expires_ms, delta_ms)`` of an entry; SerializationError if it is not one of ours."""
    if len(entry) < HEADER_LEN + 1 or entry[0] != 0x31 or not entry[1:HEADER_LEN].isdigit():
        raise SerializationError("cache entry has no dbscale header (written by another client or version?)")
    return int(entry[1:14]), int(entry[14:22])


def _no_default(kind: str) -> Callable[[Any], Any]:
    def default(obj: Any) -> Any:
        raise SerializationError(
            f"cannot cache a value of type {type(obj).__module__}.{type(obj).__qualname__} with {kind}; "
            "convert it to plain dicts/lists/str/int first (see dbscale.cache.serde)"
        )

    return default


def _orjson_with_str_subclass_keys(value: Any, exc: TypeError) -> bytes:
    """orjson refuses str subclasses as dict keys (SQLAlchemy's ``quoted_name`` of a reflected column is
    one); they encode exactly as str, so retry with them allowed. Any other key type stays an error:
    orjson would turn an int key into a string and the cached copy would not equal the value."""
    bad = _first_non_str_key(value)
    if bad is not None:
        raise SerializationError(
            f"cannot cache a dict with the key {bad!r} ({type(bad).__qualname__}) with orjson: JSON keys are "
            "strings, so the cached copy would differ; use str keys, or serializer='msgpack'"
        ) from exc
    return orjson.dumps(value, default=_no_default("orjson"), option=orjson.OPT_NON_STR_KEYS)


def _first_non_str_key(value: Any) -> Any:
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            for key, val in item.items():
                if not isinstance(key, str):
                    return key
                stack.append(val)
        elif isinstance(item, (list, tuple)):
            stack.extend(item)
    return None


class Serializer:
    """Turns values into payload bytes and back.

    ``kind`` is ``"orjson"``, ``"msgpack"`` or ``"pickle"`` (the latter only with ``allow_pickle=True``
    and an ``hmac_key``). ``compress_threshold``: payloads at least this long are zlib-compressed.
    """

    __slots__ = ("_dumps", "_fmt", "_key", "allow_pickle", "compress_threshold", "kind")

    def __init__(
        self,
        kind: str = "orjson",
        *,
        compress_threshold: int | None = None,
        hmac_key: str | bytes | None = None,
        allow_pickle: bool = False,
    ) -> None:
        if kind == "pickle" and not (allow_pickle and hmac_key):
            raise SerializationError("pickle needs allow_pickle=True and an hmac_key (unsigned pickle is RCE)")
        if allow_pickle and not hmac_key:
            raise SerializationError("allow_pickle=True needs an hmac_key")
        self.kind = kind
        self.compress_threshold = compress_threshold
        self.allow_pickle = allow_pickle
        self._key = hmac_key.encode() if isinstance(hmac_key, str) else hmac_key
        if kind == "orjson":
            default = _no_default("orjson")
            self._fmt = b"j"
            self._dumps: Callable[[Any], bytes] = lambda v: orjson.dumps(v, default=default)
        elif kind == "msgpack":
            default = _no_default("msgpack")
            self._fmt = b"m"
            self._dumps = lambda v: msgpack.packb(v, default=default, use_bin_type=True)
        elif kind == "pickle":
            self._fmt = b"p"
            self._dumps = lambda v: pickle.dumps(v, protocol=pickle.HIGHEST_PROTOCOL)
        else:
            raise SerializationError(f"unknown serializer {kind!r} (use orjson or msgpack)")

    def dumps(self, value: Any) -> bytes:
        """Payload bytes for ``value``; :class:`SerializationError` naming the type if it cannot be encoded."""
        try:
            try:
                body = self._dumps(value)
            except TypeError as exc:
                if self.kind != "orjson" or "Dict key must be str" not in str(exc):
                    raise
                body = _orjson_with_str_subclass_keys(value, exc)
        except SerializationError:
            raise
        except (TypeError, ValueError, OverflowError, pickle.PicklingError) as exc:
            cause = exc.__cause__ or exc.__context__
            if isinstance(cause, SerializationError):
                raise cause from None
            raise SerializationError(
                f"cannot cache a value of type {type(value).__qualname__} with {self.kind}: {exc}"
            ) from exc
        fmt = self._fmt
        if self.compress_threshold is not None and len(body) >= self.compress_threshold:
            body = zlib.compress(body, 1)
            fmt = fmt.upper()
        if self._key is not None:
            return fmt + hmac.new(self._key, fmt + body, hashlib.sha256).digest() + body
        return fmt + body

    def loads(self, payload: bytes | memoryview) -> Any:
        """The value back from :meth:`dumps` output; SerializationError if it is corrupt or unsigned."""
        data = bytes(payload)
        if not data:
            raise SerializationError("empty cache payload")
        fmt = data[:1]
        body = data[1:]
        if self._key is not None:
            mac, body = body[:_MAC_LEN], body[_MAC_LEN:]
            if not hmac.compare_digest(mac, hmac.new(self._key, fmt + body, hashlib.sha256).digest()):
                raise SerializationError("cache payload HMAC mismatch (tampered, or written with another hmac_key)")
        try:
            if fmt.isupper():
                body = zlib.decompress(body)
                fmt = fmt.lower()
            if fmt == b"j":
                return orjson.loads(body)
            if fmt == b"m":
                return msgpack.unpackb(body, raw=False)
            if fmt == b"p":
                if not (self.allow_pickle and self._key is not None):
                    raise SerializationError("refusing to unpickle a cache payload: allow_pickle is off")
                return pickle.loads(body)
        except SerializationError:
            raise
        except Exception as exc:
            raise SerializationError(f"corrupt cache payload ({type(exc).__name__}: {exc})") from exc
        raise SerializationError(f"unknown cache payload format {fmt!r}")
