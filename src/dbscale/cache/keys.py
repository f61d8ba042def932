"""Cache keys: templates bound to a function's signature, canonical default keys, Redis key layout.

Pure code: no I/O. A :class:`KeyBuilder` is compiled once per decorated function, so building a key
on the hot path is a few tuple and string operations (no ``inspect.signature().bind`` per call).

* ``key="user:{user_id}"`` binds ``user_id`` from the call, whether it was passed by position, by
  keyword or left to its default, so ``f(42)``, ``f(user_id=42)`` give ``user:42``. Template fields
  accept ``str``, ``int``, ``float``, ``bool``, ``None``, ``UUID``, ``Decimal``, dates and enums.
* No template: ``module.qualname:`` + a canonical JSON encoding of all bound arguments in parameter
  order (sorted dict keys), never ``str(args)``. Encodings over 200 bytes are replaced by a digest.
* An argument that cannot be encoded raises :class:`CacheKeyError` naming the parameter and its type.
"""

from __future__ import annotations

import datetime
import decimal
import enum
import hashlib
import inspect
import json
import re
import string
import uuid
from collections.abc import Callable, Sequence
from typing import Any

import orjson

from dbscale.errors import CacheKeyError

__all__ = ["METHOD_FIRST", "CacheKeyError", "KeyBuilder", "RedisKeys", "glob_to_regex"]

_MISSING: Any = object()
_MAX_DEFAULT_ENCODING = 200


def _template_str(value: Any) -> str | None:
    """Canonical text of a template field value, or None when the type is not allowed."""
    t = type(value)
    if t is str:
        return value  # type: ignore[no-any-return]
    if t is int or t is bool or t is float or value is None:
        return str(value)
    if isinstance(value, enum.Enum):
        return _template_str(value.value)
    if isinstance(value, str | int | float | uuid.UUID | decimal.Decimal):
        return str(value)
    if isinstance(value, datetime.date | datetime.time):
        return value.isoformat()
    return None


def _json_default(value: Any) -> Any:
    if isinstance(value, decimal.Decimal):
        return str(value)
    if isinstance(value, frozenset | set):
        return sorted(value, key=repr)
    raise TypeError


def _json_default_std(value: Any) -> Any:
    if isinstance(value, uuid.UUID | datetime.date | datetime.time):
        return str(value) if isinstance(value, uuid.UUID) else value.isoformat()
    if isinstance(value, enum.Enum):
        return value.value
    return _json_default(value)


_JSON_OPTS = orjson.OPT_SORT_KEYS | orjson.OPT_NON_STR_KEYS | orjson.OPT_PASSTHROUGH_SUBCLASS


#: The names of a method's first parameter, left out of default keys and bound by the decorator.
METHOD_FIRST = ("self", "cls")


class KeyBuilder:
    """Builds the cache key (and tags) of one function from a call's ``args`` and ``kwargs``.

    ``template`` may be None (default key), a format string with named fields, or a callable that
    takes the function's arguments and returns the key string.
    """

    __slots__ = (
        "_custom",
        "_defaults",
        "_fast_n",
        "_field_idx",
        "_fields",
        "_fn_name",
        "_index",
        "_n",
        "_names",
        "_parts",
        "_prefix",
        "_sig",
        "_simple",
        "_skip_first",
        "build",
    )

    def __init__(self, func: Callable[..., Any], template: str | Callable[..., str] | None = None) -> None:
        self._fn_name = f"{func.__module__}.{func.__qualname__}"
        self._sig = inspect.signature(func)
        params = list(self._sig.parameters.values())
        self._simple = all(
            p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY, p.POSITIONAL_ONLY) for p in params
        ) and not any(p.kind is p.POSITIONAL_ONLY for p in params)
        self._names = tuple(p.name for p in params)
        self._index = {p.name: i for i, p in enumerate(params)}
        self._defaults = tuple(_MISSING if p.default is p.empty else p.default for p in params)
        self._n = len(params)
        self._fast_n = sum(1 for p in params if p.kind is p.POSITIONAL_OR_KEYWORD)
        # a method's ``self`` / ``cls`` stays out of the default key (as in dogpile.cache): an instance
        # has no canonical encoding, and instances of one class share their entries
        self._skip_first = (
            bool(params) and params[0].name in METHOD_FIRST and params[0].kind is not params[0].KEYWORD_ONLY
        )
        self._custom: Callable[..., str] | None = None
        self._parts: tuple[str, ...] = ()
        self._fields: tuple[str, ...] = ()
        self._field_idx: tuple[int, ...] = ()
        self._prefix = ""
        if callable(template):
            self._custom = template
            self.build: Callable[[tuple[Any, ...], dict[str, Any]], str] = self._build_custom
        elif template is None:
            self._prefix = self._fn_name + ":"
            self.build = self._build_default
        else:
            self._compile_template(template)
            self.build = self._build_template_1 if len(self._fields) == 1 else self._build_template

    @property
    def is_method(self) -> bool:
        """Whether the function's first parameter is ``self`` or ``cls`` (left out of the default key)."""
        return self._skip_first

    # -- compilation -------------------------------------------------------------------------------
    def _compile_template(self, template: str) -> None:
        parts: list[str] = []
        fields: list[str] = []
        literal = ""
        for text, field, spec, conv in string.Formatter().parse(template):
            literal += text
            if field is None:
                continue
            if spec or conv or not field.isidentifier():
                raise CacheKeyError(
                    f"key template {template!r}: field {{{field}}} must be a plain parameter name "
                    "(no attributes, indexes, conversions or format specs)"
                )
            if field not in self._index:
                raise CacheKeyError(
                    f"key template {template!r}: {{{field}}} is not a parameter of {self._fn_name} "
                    f"(parameters: {', '.join(self._names) or 'none'})"
                )
            parts.append(literal)
            fields.append(field)
            literal = ""
        parts.append(literal)
        if not self._simple and fields:
            raise CacheKeyError(f"key template {template!r}: {self._fn_name} takes *args/**kwargs; use key=callable")
        self._parts = tuple(parts)
        self._fields = tuple(fields)
        self._field_idx = tuple(self._index[f] for f in fields)

    # -- binding -----------------------------------------------------------------------------------
    def bind(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> list[Any]:
        """All argument values in parameter order, defaults applied (like ``Signature.bind``)."""
        if not self._simple:
            bound = self._sig.bind(*args, **kwargs)
            bound.apply_defaults()
            return [bound.arguments[n] for n in self._names]
        n = self._n
        if len(args) > self._fast_n:
            raise TypeError(f"{self._fn_name}() takes {self._fast_n} positional arguments but {len(args)} were given")
        values = list(args)
        values.extend([_MISSING] * (n - len(args)))
        index = self._index
        for name, value in kwargs.items():
            i = index.get(name)
            if i is None:
                raise TypeError(f"{self._fn_name}() got an unexpected keyword argument {name!r}")
            if values[i] is not _MISSING:
                raise TypeError(f"{self._fn_name}() got multiple values for argument {name!r}")
            values[i] = value
        for i in range(n):
            if values[i] is _MISSING:
                default = self._defaults[i]
                if default is _MISSING:
                    raise TypeError(f"{self._fn_name}() missing required argument {self._names[i]!r}")
                values[i] = default
        return values

    def _field(self, field: str, value: Any) -> str:
        text = _template_str(value)
        if text is None:
            raise CacheKeyError(
                f"cache key of {self._fn_name}: argument {field!r} of type {type(value).__qualname__} cannot be "
                "used in a key template; pass a str/int/UUID/date, or give key= a callable"
            )
        return text

    def _build_template_1(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> str:
        i = self._field_idx[0]
        value = args[i] if not kwargs and len(args) == self._fast_n else self.bind(args, kwargs)[i]
        if type(value) is str:
            text: str = value
        else:
            text = self._field(self._fields[0], value)
        return self._parts[0] + text + self._parts[1]

    def _build_template(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> str:
        values = args if not kwargs and len(args) == self._fast_n else self.bind(args, kwargs)
        out = [self._parts[0]]
        for field, i, literal in zip(self._fields, self._field_idx, self._parts[1:], strict=True):
            out.append(self._field(field, values[i]))
            out.append(literal)
        return "".join(out)

    def _build_default(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> str:
        values = args if not kwargs and len(args) == self._fast_n == self._n else tuple(self.bind(args, kwargs))
        if self._skip_first:
            values = values[1:]
        try:
            encoded = orjson.dumps(values, default=_json_default, option=_JSON_OPTS)
        except TypeError:
            encoded = self._encode_slow(values)
        if len(encoded) > _MAX_DEFAULT_ENCODING:
            return self._prefix + "#" + hashlib.blake2b(encoded, digest_size=16).hexdigest()
        return self._prefix + encoded.decode()

    def _build_custom(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> str:
        assert self._custom is not None
        key = self._custom(*args, **kwargs)
        if not isinstance(key, str) or not key:
            raise CacheKeyError(f"key callable of {self._fn_name} returned {key!r}; it must return a non-empty str")
        return key

    def _encode_slow(self, values: Sequence[Any]) -> bytes:
        # orjson refuses ints beyond 64 bits; the standard library encodes them the same way.
        try:
            return json.dumps(
                list(values), sort_keys=True, separators=(",", ":"), default=_json_default_std, ensure_ascii=False
            ).encode()
        except (TypeError, ValueError):
            self._raise_unencodable(values)
            raise

    def _raise_unencodable(self, values: Sequence[Any]) -> Any:
        names = self._names[1:] if self._skip_first else self._names
        for name, value in zip(names, values, strict=False):
            try:
                json.dumps(value, default=_json_default_std)
            except (TypeError, ValueError):
                raise CacheKeyError(
                    f"cache key of {self._fn_name}: argument {name!r} of type {type(value).__qualname__} has no "
                    "canonical encoding; pass key='...{field}...' with encodable fields, or key=callable"
                ) from None
        raise CacheKeyError(f"cache key of {self._fn_name}: arguments cannot be encoded")


class TagBuilder:
    """Builds a decorated function's tags from its arguments (templates like ``"user:{user_id}"``)."""

    __slots__ = ("_builders",)

    def __init__(self, func: Callable[..., Any], templates: Sequence[str]) -> None:
        self._builders = tuple(KeyBuilder(func, t) for t in templates)

    def build(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[str, ...]:
        """The tags of one call."""
        return tuple(b.build(args, kwargs) for b in self._builders)


class RedisKeys:
    """Where a cache key's data lives in Redis, under the application's namespace.

    For cache key ``k`` in namespace ``ns``: value ``ns:v:{k}``, lease ``ns:l:{k}``, stale copy
    ``ns:s:{k}``, marker ``ns:m:{k}``; tag ``t`` is the set ``ns:t:{t}`` with marker ``ns:tm:{t}``; pattern
    invalidations leave the marker ``ns:pm``. The three keys of ``k`` share the hash tag
    ``{k...}``, so on Redis Cluster they live in one slot and the lease scripts stay single-slot.
    """

    __slots__ = ("_prefix_len", "channel", "ns")

    def __init__(self, namespace: str, channel: str | None = None) -> None:
        self.ns = namespace
        self.channel = channel or f"{namespace}:__invalidate__"
        self._prefix_len = len(namespace) + 4

    def value(self, key: str) -> str:
        """The Redis key holding ``key``'s current value."""
        return f"{self.ns}:v:{{{key}}}"

    def triple(self, key: str) -> tuple[str, str, str]:
        """Value, lease and stale keys of ``key``."""
        return f"{self.ns}:v:{{{key}}}", f"{self.ns}:l:{{{key}}}", f"{self.ns}:s:{{{key}}}"

    def tag(self, tag: str) -> str:
        """The Redis set holding the cache keys tagged ``tag``."""
        return f"{self.ns}:t:{{{tag}}}"

    def marker(self, key: str) -> str:
        """The lag-aware fill marker of ``key`` (same slot as its value)."""
        return f"{self.ns}:m:{{{key}}}"

    def tag_marker(self, tag: str) -> str:
        """The lag-aware fill marker of tag ``tag`` (same slot as its set)."""
        return f"{self.ns}:tm:{{{tag}}}"

    @property
    def pattern_marker(self) -> str:
        """The namespace-wide marker left by pattern invalidations."""
        return f"{self.ns}:pm"

    def scan_pattern(self, pattern: str) -> str:
        """SCAN MATCH pattern finding the value, lease and stale keys of cache keys matching ``pattern``."""
        return f"{self.ns}:[vls]:{{{pattern}}}"

    def user_key(self, redis_key: str | bytes) -> str:
        """The cache key back from one of its Redis keys."""
        text = redis_key.decode() if isinstance(redis_key, bytes) else redis_key
        return text[self._prefix_len : -1]


def glob_to_regex(pattern: str) -> re.Pattern[str]:
    """Compile a Redis glob (``*``, ``?``, ``[...]``, ``\\`` escapes) to an anchored regex."""
    out: list[str] = []
    i, n = 0, len(pattern)
    while i < n:
        c = pattern[i]
        if c == "*":
            out.append(".*")
        elif c == "?":
            out.append(".")
        elif c == "\\" and i + 1 < n:
            i += 1
            out.append(re.escape(pattern[i]))
        elif c == "[":
            j = pattern.find("]", i + 1)
            if j == -1:
                out.append(re.escape(c))
            else:
                body = pattern[i + 1 : j]
                negate = body.startswith("^")
                body = body[1:] if negate else body
                out.append("[" + ("^" if negate else "") + body.replace("\\", "\\\\") + "]")
                i = j
        else:
            out.append(re.escape(c))
        i += 1
    return re.compile("".join(out) + r"\Z", re.DOTALL)
