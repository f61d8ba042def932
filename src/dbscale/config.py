"""Topology configuration: groups of PostgreSQL nodes, pools, cache — validated, with clear errors.

A topology is loaded from three sources, later ones overriding earlier ones:

1. a TOML file (``dbscale.toml``, as written by ``dbscale up``);
2. ``DBSCALE_*`` environment variables, so secrets never need to be in the file:
   ``DBSCALE_GROUPS__MAIN__PRIMARY``, ``DBSCALE_CACHE__REDIS_URL`` (``__`` separates levels; lists are
   comma-separated or JSON), plus the shortcuts ``DBSCALE_PRIMARY_URL``, ``DBSCALE_REPLICA_URLS`` (group
   ``main``) and ``DBSCALE_REDIS_URL``; ``DBSCALE_CONFIG`` names the TOML file for ``from_env()``;
3. Python keyword arguments.

Every validation error becomes one :class:`~dbscale.errors.ConfigError` whose message names the field
path and the fix. Passwords are masked in errors and in ``repr``.
"""

from __future__ import annotations

import difflib
import json
import logging
import os
import re
import tomllib
import warnings
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal
from urllib.parse import parse_qsl, quote, quote_plus, unquote, urlsplit

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, ValidationError

from dbscale.errors import ConfigError
from dbscale.names import Fallback, Policy
from dbscale.units import parse_duration, parse_read_your_writes, parse_size

if TYPE_CHECKING:  # SQLAlchemy is imported when a URL is made for it, not to read a config (`dbscale load` needs none)
    from sqlalchemy.engine import URL

# The library's loggers are silent until the application configures logging (the logging HOWTO's
# rule for libraries); README "Logging" says how to turn them up.
logging.getLogger("dbscale").addHandler(logging.NullHandler())

_PG_SCHEMES = {"postgresql", "postgres", "postgresql+psycopg", "postgresql+psycopg2", "postgresql+asyncpg"}
_REDIS_SCHEMES = {"redis", "rediss", "unix"}
_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_-]{0,62}$")
# SQLAlchemy's URL grammar (sqlalchemy.engine.url._parse_url), so a URL is checked without importing it.
_URL = re.compile(
    r"""
        (?P<name>[\w\+]+)://
        (?:(?P<username>[^:/]*)(?::(?P<password>[^@]*))?@)?
        (?:(?:\[(?P<ipv6host>[^/\?]+)\]|(?P<ipv4host>[^/:\?]+))?(?::(?P<port>[^/\?]*))?)?
        (?:/(?P<database>[^\?]*))?
        (?:\?(?P<query>.*))?
    """,
    re.X,
)
_PASSWORD_IN_URL = re.compile(r"(?P<head>[a-z][a-z0-9+.-]*://[^:/@\s]*:)(?P<pw>[^@\s]*)(?=@)", re.IGNORECASE)


def mask_url(url: str) -> str:
    """Return ``url`` with any password replaced by ``***``."""
    return _PASSWORD_IN_URL.sub(lambda m: m.group("head") + "***", url)


class SecretURL(str):
    """A connection URL whose ``repr`` hides the password; ``str()`` is the real URL."""

    __slots__ = ()

    def __repr__(self) -> str:
        return repr(mask_url(str(self)))

    @property
    def masked(self) -> str:
        """The URL with its password replaced by ``***``, for logs and tables."""
        return mask_url(str(self))


def _postgres_url(value: str) -> SecretURL:
    shown = mask_url(value)
    scheme = value.split("://", 1)[0].lower() if "://" in value else ""
    if scheme not in _PG_SCHEMES:
        raise ValueError(f"{shown!r} is not a PostgreSQL URL (use postgresql://user@host:port/dbname)")
    match = _URL.match(value)  # every PostgreSQL scheme matches: what can be wrong is the port
    try:
        port = int(match["port"]) if match and match["port"] else None
    except ValueError:
        raise ValueError(f"{shown!r} is not a valid URL (ValueError); check host, port and quoting") from None
    if port is not None and not 0 < port < 65536:
        raise ValueError(f"{shown!r} has port {port}, outside 1-65535")
    return SecretURL(value)


# Redis Cluster URLs: ``redis+cluster://[user:password@]host:port,host:port[/0]`` name seed nodes (any
# reachable one gives the whole slot map); each seed becomes a plain node URL with the same credentials.

#: URL schemes naming a Redis Cluster (seed nodes), and the node scheme each maps to.
CLUSTER_SCHEMES = {"redis+cluster": "redis", "rediss+cluster": "rediss"}


def is_cluster_url(url: str) -> bool:
    """Does ``url`` name a Redis Cluster?"""
    return url.split("://", 1)[0].lower() in CLUSTER_SCHEMES


def _split(url: str) -> tuple[str, str, str, str]:
    """(node scheme, ``user:password@`` or "", the host:port list, the path and query)."""
    scheme, rest = url.split("://", 1)
    node_scheme = CLUSTER_SCHEMES[scheme.lower()]
    netloc, sep, tail = rest.partition("/")
    if not sep:
        netloc, sep, tail = rest.partition("?")
        tail = "?" + tail if sep else ""
    else:
        tail = "/" + tail
    auth, at, hosts = netloc.rpartition("@")
    return node_scheme, auth + at, hosts, tail


def cluster_seeds(url: str) -> list[tuple[str, int]]:
    """The seed ``(host, port)`` pairs of a cluster URL; ValueError says what is wrong with it."""
    _, _, hosts, tail = _split(url)
    path = urlsplit("x://h" + tail).path.strip("/")
    if path not in ("", "0"):
        raise ValueError(f"a Redis Cluster has only database 0, not /{path}; drop the /{path} from the URL")
    seeds: list[tuple[str, int]] = []
    for item in hosts.split(","):
        host, colon, port = item.strip().rpartition(":")
        if not colon or not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ValueError(f"seed {item.strip()!r} is not host:port (use redis+cluster://h1:7000,h2:7000)")
        seeds.append((host.strip("[]"), int(port)))
    return seeds


def node_url(url: str, host: str, port: int) -> str:
    """The plain URL of one node of the cluster ``url`` (same scheme family, credentials and query)."""
    node_scheme, auth, _, tail = _split(url)
    query = urlsplit("x://h" + tail).query
    shown_host = f"[{host}]" if ":" in host else host
    return f"{node_scheme}://{auth}{shown_host}:{port}/0" + (f"?{query}" if query else "")


def node_urls(url: str) -> list[str]:
    """Node URLs of every seed of a cluster URL; a plain URL is its own only node."""
    if not is_cluster_url(url):
        return [url]
    return [node_url(url, host, port) for host, port in cluster_seeds(url)]


def _redis_url(value: str) -> SecretURL:
    shown = mask_url(value)
    scheme = value.split("://", 1)[0].lower() if "://" in value else ""
    if scheme in CLUSTER_SCHEMES:
        try:
            cluster_seeds(value)
        except ValueError as exc:
            raise ValueError(f"{shown!r}: {exc}") from None
    elif scheme not in _REDIS_SCHEMES:
        raise ValueError(
            f"{shown!r} is not a Redis URL (use redis://host:port/db, or redis+cluster://h1:p1,h2:p2 for a Redis Cluster)"
        )
    return SecretURL(value)


def _http_url(value: str) -> str:
    scheme = value.split("://", 1)[0].lower() if "://" in value else ""
    if scheme not in ("http", "https"):
        raise ValueError(f"{mask_url(value)!r} is not an HTTP URL (use http://host:8008, Patroni's REST API)")
    return value


def _duration(value: Any) -> float:
    if not isinstance(value, str | int | float):
        raise ValueError(f"{value!r} is not a duration (use e.g. 250ms, 2s, 5m)")
    return parse_duration(value)


def _size(value: Any) -> int:
    if not isinstance(value, str | int):
        raise ValueError(f"{value!r} is not a size (use e.g. 16MB or a number of bytes)")
    return parse_size(value)


PostgresURL = Annotated[str, AfterValidator(_postgres_url)]
RedisURL = Annotated[str, AfterValidator(_redis_url)]
HttpURL = Annotated[str, AfterValidator(_http_url)]
Duration = Annotated[float, BeforeValidator(_duration)]
#: A duration that must not be zero (a TTL, a timeout).
PositiveDuration = Annotated[float, BeforeValidator(_duration), Field(gt=0)]
Size = Annotated[int, BeforeValidator(_size)]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, validate_default=True)


class PoolConfig(_Model):
    """SQLAlchemy pool settings for each node of a group (production defaults)."""

    pool_size: int = Field(20, ge=1, le=10_000)
    max_overflow: int = Field(10, ge=0, le=10_000)
    pool_timeout: Duration = 30.0
    pool_recycle: Duration = 3600.0
    pre_ping: bool = True  # ping a connection idle longer than ping_idle before handing it out; false: never ping
    ping_idle: Duration = 0.5  # HikariCP's aliveBypassWindowMs: a connection used this recently is not pinged
    connect_timeout: Duration = 5.0


class GroupConfig(_Model):
    """One primary and its streaming replicas."""

    primary: PostgresURL
    replicas: list[PostgresURL] = Field(default_factory=list)
    pgbouncer: PostgresURL | None = None
    max_lag: Duration = 10.0
    max_lag_bytes: Size | None = None
    pool: PoolConfig = Field(default_factory=PoolConfig)  # type: ignore[arg-type]
    # Read-replica routing (see dbscale.routing).
    load_balancing: Annotated[
        Policy,
        BeforeValidator(lambda v: v.replace("-", "_") if isinstance(v, str) else v),
    ] = "least_outstanding"
    weights: list[Annotated[float, Field(ge=0)]] | None = None
    fallback: Fallback = "primary"
    read_your_writes: str = "lsn"
    causal_wait: Duration = 0.05
    health_interval: Duration = 1.0
    ban_initial: Duration = 5.0
    ban_max: Duration = 60.0
    write_timeout: Duration = 5.0
    write_via_pgbouncer: bool = True
    # Patroni's REST API of each member (HA groups): `dbscale status` shows Patroni's view; routing
    # still discovers roles itself and dbscale never promotes.
    patroni: list[HttpURL] = Field(default_factory=list)

    def model_post_init(self, __context: Any) -> None:
        if self.weights is not None and len(self.weights) != len(self.replicas):
            raise ValueError(
                f"weights: {len(self.weights)} weights for {len(self.replicas)} replicas; give one per replica"
            )
        parse_read_your_writes(self.read_your_writes)
        if self.health_interval <= 0:
            raise ValueError("health_interval: must be > 0 (e.g. 1s)")
        if self.ban_max < self.ban_initial:
            raise ValueError("ban_max: must be >= ban_initial")


class CacheConfig(_Model):
    """Cache tiers: an in-process L1 over Redis L2."""

    redis_url: RedisURL | None = None
    namespace: str = Field("dbscale", min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.:-]+$")
    l1_size: int = Field(10_000, ge=0)
    l1_max_bytes: Size | None = None
    default_ttl: PositiveDuration = 300.0
    redis_timeout: PositiveDuration = 0.05
    serializer: Literal["orjson", "msgpack", "pickle"] = "orjson"
    l1_ttl: Duration = 5.0
    negative_ttl: Duration = 30.0
    jitter: float = Field(0.1, ge=0.0, lt=1.0)
    leases: bool = True  # off only to compare: fills that race an invalidation then stay stale until TTL
    lease_ttl: Duration = 10.0
    lease_wait: Duration = 2.0
    stale_ttl: Duration = 30.0
    serve_stale: bool = False
    xfetch_beta: float = Field(0.0, ge=0.0)
    compress_threshold: Size | None = None
    allow_pickle: bool = False
    hmac_key: str | None = Field(None, repr=False)
    breaker_threshold: int = Field(3, ge=1)
    breaker_cooldown: Duration = 2.0
    invalidation_channel: str | None = None
    lag_aware_fills: bool = True  # markers: a miss after an invalidation loads at least the write's data
    marker_ttl: Duration | None = None  # None: the largest group max_lag + 5 s (see README "Coherence")

    def model_post_init(self, __context: Any) -> None:
        if self.serializer == "pickle" and not self.allow_pickle:
            raise ValueError("serializer: 'pickle' must be enabled explicitly with allow_pickle = true and hmac_key")
        if self.allow_pickle and not self.hmac_key:
            raise ValueError(
                "allow_pickle: pickle needs hmac_key too (unsigned pickle in a shared Redis is remote code "
                "execution); set hmac_key or use orjson/msgpack"
            )


# -- [sharding] ---------------------------------------------------------------------------------------
ShardStrategy = Literal["ring", "ketama", "jump", "hash_mod", "range"]


class ShardSchemeConfig(_Model):
    """How keys map to shard groups: a placement strategy over named groups (see :mod:`dbscale.sharding`).

    ``ring`` (consistent hashing, ``vnodes`` points per group, optional ``weights``), ``ketama``
    (the same ring placed exactly as libketama / uhashring), ``jump`` (Lamping & Veach: exact
    balance, groups are only ever appended), ``hash_mod`` (md5 mod N, the textbook's: adding a
    group moves ~N/(N+1) of the keys) or ``range`` (``ranges = [[low, high, group], ...]``, with an
    optional ``default`` group for keys outside every range). TOML has no null, so open-ended ranges
    (``None`` bounds) can be given only from Python; in a file, close the ends or name a ``default``.
    """

    strategy: ShardStrategy | None = None
    groups: list[str] | None = None
    vnodes: int = Field(160, ge=1, le=10_000)
    weights: dict[str, Annotated[float, Field(gt=0)]] | None = None
    ranges: list[tuple[int | str | None, int | str | None, str]] | None = None
    default: str | None = None

    def model_post_init(self, __context: Any) -> None:
        if self.groups is not None:
            if not self.groups:
                raise ValueError("groups: name at least one shard group, e.g. groups = ['shard0', 'shard1']")
            if len(set(self.groups)) != len(self.groups):
                raise ValueError(f"groups: {self.groups} names a group twice; name each shard group once")
        if self.strategy == "range" and not self.ranges:
            raise ValueError("ranges: strategy 'range' needs ranges = [[low, high, group], ...]")
        if self.ranges and self.strategy not in (None, "range"):
            raise ValueError(f"ranges: only strategy 'range' uses ranges (this scheme is {self.strategy!r})")


class ShardEntityConfig(ShardSchemeConfig):
    """A named entity's scheme (``[sharding.entities.orders] key = "user_id"``); unset fields come from ``[sharding]``.

    ``key`` names the column that holds the shard key (orders sharded by ``user_id`` live with their user).
    """

    key: str = Field(min_length=1, max_length=63)


class ShardingConfig(ShardSchemeConfig):
    """``[sharding]``: the default scheme, named entity schemes, fan-out and global-ID settings.

    A group's logical shard number (embedded in global IDs, :func:`dbscale.sharding.shard_of_id`) is
    its position in ``groups``: append new groups at the end, never reorder.
    """

    strategy: ShardStrategy | None = "ring"
    groups: list[str] | None = Field(default=None, validate_default=False)
    entities: dict[str, ShardEntityConfig] = Field(default_factory=dict)
    fanout_timeout: Duration = 30.0
    id_epoch_ms: int = Field(1_704_067_200_000, ge=0)  # dbscale.sharding.DEFAULT_EPOCH_MS

    def model_post_init(self, __context: Any) -> None:
        if not self.groups:
            raise ValueError("groups: name the shard groups, e.g. groups = ['shard0', 'shard1']")
        super().model_post_init(__context)
        for name, entity in self.entities.items():
            if not _NAME.match(name):
                raise ValueError(f"entities.{name}: entity names must match {_NAME.pattern}")
            outside = [g for g in entity.groups or () if g not in self.groups]
            if outside:
                raise ValueError(
                    f"entities.{name}.groups: {outside} are not in sharding.groups {self.groups}; "
                    "list every shard group in [sharding] groups (their order numbers the global IDs)"
                )

    def scheme(self, entity: str | None) -> ShardSchemeConfig:
        """The effective scheme of ``entity`` (None: the default one), unset fields filled from ``[sharding]``."""
        if entity is None:
            return self
        try:
            own = self.entities[entity]
        except KeyError:
            known = ", ".join(sorted(self.entities)) or "none"
            raise ConfigError(
                f"sharding.entities.{entity}: no such entity (known: {known}); add "
                f"[sharding.entities.{entity}] key = '<column>' or call shard(key) for the default scheme"
            ) from None
        mine = set(own.model_fields_set) - {"key"}
        # ranges and default belong to the strategy: an entity naming its own strategy does not inherit them
        inheritable = {"strategy", "groups", "vnodes", "weights"} | (
            {"ranges", "default"} if "strategy" not in mine else set()
        )
        inherited = {f: getattr(self, f) for f in inheritable - mine}
        return ShardSchemeConfig.model_validate({**inherited, **own.model_dump(include=mine)})


class TopologyConfig(_Model):
    """The whole topology: named groups and the cache. Build with :func:`load_config`."""

    groups: dict[str, GroupConfig]
    cache: CacheConfig = Field(default_factory=CacheConfig)  # type: ignore[arg-type]
    sharding: ShardingConfig | None = None

    def group(self, name: str) -> GroupConfig:
        """Return the group called ``name``; the error lists the known groups."""
        try:
            return self.groups[name]
        except KeyError:
            raise ConfigError(f"groups.{name}: no such group (known: {', '.join(sorted(self.groups))})") from None

    def default_group(self) -> str:
        """The group used when none is named: ``main`` if configured, else the only group."""
        if "main" in self.groups or len(self.groups) != 1:
            return "main"
        return next(iter(self.groups))

    def sharding_section(self) -> ShardingConfig:
        """The ``[sharding]`` section; a ConfigError saying how to add it when there is none."""
        if self.sharding is None:
            raise ConfigError(
                "sharding: not configured; add [sharding] groups = ['shard0', 'shard1'] to the config "
                "(`dbscale up --shards 2` writes it)"
            )
        return self.sharding

    def model_post_init(self, __context: Any) -> None:
        if not self.groups:
            raise ValueError("groups: at least one group is required, e.g. [groups.main] primary = 'postgresql://...'")
        for name in self.groups:
            if not _NAME.match(name):
                raise ValueError(f"groups.{name}: group names must match {_NAME.pattern}")
        if self.sharding is not None:
            self._check_shard_groups(self.sharding)

    def _check_shard_groups(self, sharding: ShardingConfig) -> None:
        for where, scheme in [
            ("sharding", sharding),
            *((f"sharding.entities.{n}", e) for n, e in sharding.entities.items()),
        ]:
            named = [
                *(scheme.groups or ()),
                *(r[2] for r in scheme.ranges or ()),
                *([scheme.default] if scheme.default else []),
            ]
            named += list(scheme.weights or ())
            unknown = sorted({g for g in named if g not in self.groups})
            if unknown:
                raise ValueError(
                    f"{where}: shard groups {unknown} are not configured (known: {', '.join(sorted(self.groups))}); "
                    "add [groups.<name>] for each, or fix the name"
                )


#: ``DBSCALE_*`` variables that are not settings but are read by dbscale's tools (``from_env``, the
#: pytest plugin); any other ``DBSCALE_*`` name that is not a setting gets a warning naming the close match.
TOOL_VARIABLES: set[str] = {"DBSCALE_CONFIG", "DBSCALE_TEST_CONFIG"}
_SHORTCUTS = {
    "DBSCALE_PRIMARY_URL": ("groups", "main", "primary"),
    "DBSCALE_REPLICA_URLS": ("groups", "main", "replicas"),
    "DBSCALE_REDIS_URL": ("cache", "redis_url"),
}
_warned: set[str] = set()


def close_match(word: str, known: Iterable[str]) -> str:
    """`` (did you mean 'x'?)`` for the closest of ``known``, or ``""`` when nothing is close."""
    match = difflib.get_close_matches(word, list(known), n=1, cutoff=0.6)
    return f" (did you mean {match[0]!r}?)" if match else ""


def top_level_keys() -> list[str]:
    """The tables a topology file may have (read from :class:`TopologyConfig`, so a new table needs no list)."""
    return list(TopologyConfig.model_fields)


def _check_top_level(data: Mapping[str, Any], source: str | None) -> None:
    known = top_level_keys()
    unknown = [key for key in data if key not in known]
    if unknown:
        key = unknown[0]
        raise ConfigError(
            (f"{source}: " if source else "")
            + f"{key}: unknown table{close_match(key, known)}; known tables: {', '.join(known)}"
        )


def _model_at(path: tuple[str, ...]) -> type[BaseModel] | None:
    """The settings model reached by ``path`` (group names skipped), or None where there is none."""
    model: type[BaseModel] = TopologyConfig
    parts = list(path)
    while parts:
        part = parts.pop(0)
        field = model.model_fields.get(part)
        if field is None:
            return None
        if part == "groups":
            if not parts:
                return None
            parts.pop(0)  # the group's name
            model = GroupConfig
            continue
        annotation = field.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            model = annotation
        else:
            return None
    return model


def _env_names() -> list[str]:
    names = [*_SHORTCUTS, *TOOL_VARIABLES]
    for field in TopologyConfig.model_fields:
        model = _model_at((field,) if field != "groups" else ("groups", "main"))
        head = "DBSCALE_GROUPS__MAIN__" if field == "groups" else f"DBSCALE_{field.upper()}__"
        if model is not None:
            names.extend(head + name.upper() for name in model.model_fields)
    return names


def _unknown_env(name: str) -> str | None:
    """Why ``name`` (a ``DBSCALE_*`` variable) is no setting, or None if it is one."""
    if name in _SHORTCUTS or name in TOOL_VARIABLES:
        return None
    parts = name.removeprefix("DBSCALE_").split("__")
    if len(parts) > 1:
        lowered = tuple(p.lower() for p in parts)
        model = _model_at(lowered[:-1]) if lowered[0] in top_level_keys() else None
        if model is not None and lowered[-1] in model.model_fields:
            return None
    # compare with group "main" spelled the same way as the variable's group
    candidates = _env_names()
    if len(parts) > 2 and parts[0].lower() == "groups":
        candidates = [c.replace("__MAIN__", f"__{parts[1]}__", 1) for c in candidates]
    return f"unknown dbscale setting{close_match(name, candidates)}; it is ignored"


def warn_unknown_env(environ: Mapping[str, str]) -> None:
    """Warn (``UserWarning``, once per process) about each ``DBSCALE_*`` variable that is no setting."""
    for name in sorted(environ):
        if name.startswith("DBSCALE_") and name not in _warned:
            why = _unknown_env(name)
            if why is not None:
                _warned.add(name)
                warnings.warn(f"dbscale: environment variable {name}: {why}", UserWarning, stacklevel=3)


def _format_loc(loc: tuple[int | str, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif part in ("function-after", "function-before") or part.startswith(("function-", "lax-", "union[")):
            continue
        else:
            out += ("." if out else "") + part
    return out


def _friendly(error: Mapping[str, Any]) -> str:
    loc = _format_loc(tuple(error.get("loc", ())))
    kind = error.get("type", "")
    msg = str(error.get("msg", "invalid value"))
    msg = msg.removeprefix("Value error, ").removeprefix("Assertion failed, ")
    if kind == "extra_forbidden":
        path = tuple(str(p) for p in error.get("loc", ()))
        parent = _model_at(path[:-1]) if path else None
        hint = close_match(path[-1], parent.model_fields) if parent is not None else ""
        msg = f"unknown setting{hint}; remove it or check its spelling"
    elif kind == "missing":
        msg = "required setting is missing"
    return f"{loc}: {msg}" if loc else msg


def _raise_config_error(exc: ValidationError, source: str | None) -> ConfigError:
    parts = [_friendly(e) for e in exc.errors(include_url=False, include_input=False)]
    prefix = f"{source}: " if source else ""
    return ConfigError(prefix + "; ".join(mask_url(p) for p in parts))


def _deep_merge(base: dict[str, Any], override: Mapping[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in override.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), Mapping):
            merged[key] = _deep_merge(dict(merged[key]), value)
        else:
            merged[key] = value
    return merged


def _env_value(raw: str) -> Any:
    text = raw.strip()
    if text.startswith("["):
        try:
            return json.loads(text)
        except json.JSONDecodeError:
            raise ConfigError(f"environment value {mask_url(text)!r} is not a JSON list") from None
    return raw


def _split_list(raw: str) -> list[str]:
    value = _env_value(raw)
    if isinstance(value, list):
        return [str(v) for v in value]
    return [part.strip() for part in raw.split(",") if part.strip()]


_LIST_KEYS = {"replicas", "patroni"}


def env_overrides(environ: Mapping[str, str]) -> dict[str, Any]:
    """Read ``DBSCALE_*`` variables into a nested dict of settings."""
    data: dict[str, Any] = {}
    for name, raw in sorted(environ.items()):
        if not name.startswith("DBSCALE_") or name in TOOL_VARIABLES:
            continue
        if name in _SHORTCUTS:
            path: tuple[str, ...] = _SHORTCUTS[name]
        elif "__" in name:
            path = tuple(part.lower() for part in name.removeprefix("DBSCALE_").split("__"))
            if path[0] == "groups" and len(path) > 1:
                # group names keep their case as written in the variable
                path = ("groups", name.removeprefix("DBSCALE_").split("__")[1], *path[2:])
        else:
            continue
        if _unknown_env(name) is not None:
            continue  # no setting (warn_unknown_env says so)
        node = data
        for part in path[:-1]:
            node = node.setdefault(part, {})
        node[path[-1]] = _split_list(raw) if path[-1] in _LIST_KEYS else _env_value(raw)
    return data


def read_toml(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read a TOML file, turning a missing file or syntax error into a one-line ConfigError."""
    p = Path(path)
    try:
        with p.open("rb") as fh:
            return tomllib.load(fh)
    except FileNotFoundError:
        raise ConfigError(f"{p}: file not found (run `dbscale up` to generate one, or pass --config)") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{p}: invalid TOML: {exc}") from None
    except OSError as exc:
        raise ConfigError(f"{p}: cannot read ({exc.strerror})") from None


def _shortcut_kwargs(kwargs: dict[str, Any]) -> dict[str, Any]:
    """Map the single-group shortcuts ``primary=``, ``replicas=``, ``redis_url=`` onto the model's shape."""
    data: dict[str, Any] = {}
    main: dict[str, Any] = {}
    for key in ("primary", "replicas", "pgbouncer", "max_lag", "max_lag_bytes", "pool"):
        if key in kwargs:
            main[key] = kwargs.pop(key)
    if main:
        data["groups"] = {"main": main}
    if "redis_url" in kwargs:
        data["cache"] = {"redis_url": kwargs.pop("redis_url")}
    return _deep_merge(data, kwargs)


def load_config(
    path: str | os.PathLike[str] | None = None,
    *,
    environ: Mapping[str, str] | None = None,
    **overrides: Any,
) -> TopologyConfig:
    """Load and validate a topology from a TOML file, ``DBSCALE_*`` variables and keyword overrides.

    ``environ`` defaults to ``os.environ``; pass ``{}`` to ignore the environment. Keyword overrides
    take the model's shape (``groups={...}``, ``cache={...}``) or the single-group shortcuts
    ``primary=``, ``replicas=``, ``pgbouncer=``, ``redis_url=``.
    """
    env = os.environ if environ is None else environ
    source: str | None = None
    data: dict[str, Any] = {}
    if path is None and env.get("DBSCALE_CONFIG"):
        path = env["DBSCALE_CONFIG"]
    if path is not None:
        source = str(path)
        data = read_toml(path)
        _check_top_level(data, source)
    warn_unknown_env(env)
    data = _deep_merge(data, env_overrides(env))
    data = _deep_merge(data, _shortcut_kwargs(dict(overrides)))
    _check_top_level(data, None)
    if "groups" not in data:
        raise ConfigError(
            (f"{source}: " if source else "")
            + "groups: no database configured; set [groups.main] primary in the TOML file, "
            "DBSCALE_PRIMARY_URL, or pass primary="
        )
    try:
        return TopologyConfig.model_validate(data)
    except ValidationError as exc:
        raise _raise_config_error(exc, source) from None


def sqlalchemy_url(url: str, *, async_: bool = False) -> URL:
    """Turn a configured PostgreSQL URL into a SQLAlchemy URL using the psycopg 3 driver."""
    from sqlalchemy.engine import make_url

    parsed = make_url(str(url))
    return parsed.set(drivername="postgresql+psycopg_async" if async_ else "postgresql+psycopg")


def libpq_conninfo(url: str) -> str:
    """Turn a configured PostgreSQL URL into a libpq URL that psycopg.connect() accepts.

    Read with SQLAlchemy's grammar (:data:`_URL`, the one the config is checked with, so every
    connection reads a URL alike) and rendered as SQLAlchemy's ``render_as_string`` does, with
    user and password re-quoted (a raw ``/`` in a password would otherwise end libpq's host part),
    without importing SQLAlchemy (``dbscale load`` starts without it).
    """
    m = _URL.match(str(url))
    if m is None:
        raise ValueError(f"{mask_url(str(url))!r} is not a PostgreSQL URL")
    out = "postgresql://"
    if m["username"] is not None:
        out += quote(unquote(m["username"]), safe=" +")
        if m["password"] is not None:
            out += ":" + quote(unquote(m["password"]), safe=" +")
        out += "@"
    host = m["ipv4host"] or m["ipv6host"]
    if host is not None:
        out += f"[{host}]" if ":" in host else host
    if m["port"]:
        out += f":{int(m['port'])}"
    if m["database"] is not None:
        out += "/" + m["database"]
    pairs = sorted(parse_qsl(m["query"] or ""), key=lambda kv: kv[0])  # stable: a key's values keep their order
    if pairs:
        out += "?" + "&".join(f"{quote_plus(k)}={quote_plus(v)}" for k, v in pairs)
    return out


__all__ = [
    "TOOL_VARIABLES",
    "CacheConfig",
    "GroupConfig",
    "PoolConfig",
    "SecretURL",
    "ShardEntityConfig",
    "ShardSchemeConfig",
    "ShardStrategy",
    "ShardingConfig",
    "TopologyConfig",
    "close_match",
    "cluster_seeds",
    "env_overrides",
    "is_cluster_url",
    "libpq_conninfo",
    "load_config",
    "mask_url",
    "node_url",
    "node_urls",
    "read_toml",
    "sqlalchemy_url",
    "top_level_keys",
    "warn_unknown_env",
]
