"""Config parsing: sources, precedence, defaults and every validation error path."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

import dbscale
from dbscale.config import CacheConfig, cluster_seeds, is_cluster_url, load_config, mask_url, node_url, node_urls
from dbscale.errors import ConfigError
from dbscale.units import format_duration, parse_duration, parse_size

PG = "postgresql://app:s3cret@db1:5432/app"


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "dbscale.toml"
    path.write_text(text)
    return path


def error_of(**kwargs: object) -> str:
    with pytest.raises(ConfigError) as info:
        load_config(environ={}, **kwargs)
    return str(info.value)


class TestDefaults:
    def test_pool_defaults_are_production_values(self) -> None:
        pool = load_config(environ={}, primary=PG).group("main").pool
        assert (pool.pool_size, pool.max_overflow) == (20, 10)
        assert (pool.pool_timeout, pool.pool_recycle, pool.pre_ping) == (30.0, 3600.0, True)

    def test_cache_defaults(self) -> None:
        cache = load_config(environ={}, primary=PG).cache
        assert cache.redis_url is None
        assert cache.default_ttl == 300.0
        assert cache.l1_size == 10_000


class TestSources:
    def test_toml_file_as_written_by_dbscale_up(self, tmp_path: Path) -> None:
        path = write(
            tmp_path,
            f"""
[cache]
redis_url = "redis://127.0.0.1:7000/0"

[groups.main]
primary = "{PG}"
replicas = ["postgresql://app:s3cret@db2:5432/app", "postgresql://app:s3cret@db3:5432/app"]
pgbouncer = "postgresql://app:s3cret@db1:6432/app"

[groups.shard0]
primary = "postgresql://app@db4/app"
replicas = []
""",
        )
        config = load_config(path, environ={})
        assert list(config.groups) == ["main", "shard0"]
        assert len(config.groups["main"].replicas) == 2
        assert str(config.groups["main"].pgbouncer).endswith(":6432/app")
        assert str(config.cache.redis_url) == "redis://127.0.0.1:7000/0"

    def test_env_overrides_file_and_kwargs_override_env(self, tmp_path: Path) -> None:
        path = write(tmp_path, f'[groups.main]\nprimary = "{PG}"\nmax_lag = "10s"\n')
        env = {
            "DBSCALE_GROUPS__main__MAX_LAG": "250ms",
            "DBSCALE_GROUPS__main__POOL__POOL_SIZE": "5",
            "DBSCALE_REDIS_URL": "redis://r:1/0",
        }
        config = load_config(path, environ=env)
        assert config.group("main").max_lag == 0.25
        assert config.group("main").pool.pool_size == 5
        assert str(config.cache.redis_url) == "redis://r:1/0"
        config = load_config(path, environ=env, groups={"main": {"max_lag": "2s"}})
        assert config.group("main").max_lag == 2.0

    def test_secret_from_env_not_file(self, tmp_path: Path) -> None:
        path = write(tmp_path, '[groups.main]\nprimary = "postgresql://app@db1/app"\n')
        config = load_config(path, environ={"DBSCALE_PRIMARY_URL": PG})
        assert str(config.group("main").primary) == PG

    def test_replica_list_from_env_comma_and_json(self) -> None:
        env = {"DBSCALE_PRIMARY_URL": PG, "DBSCALE_REPLICA_URLS": "postgresql://a/x, postgresql://b/x"}
        assert load_config(environ=env).group("main").replicas == ["postgresql://a/x", "postgresql://b/x"]
        env["DBSCALE_REPLICA_URLS"] = '["postgresql://c/x"]'
        assert load_config(environ=env).group("main").replicas == ["postgresql://c/x"]

    def test_dbscale_config_env_names_the_file(self, tmp_path: Path) -> None:
        path = write(tmp_path, f'[groups.main]\nprimary = "{PG}"\n')
        cluster = dbscale.Cluster.from_env({"DBSCALE_CONFIG": str(path)})
        assert [n.name for n in cluster.nodes] == ["main-primary"]

    def test_keyword_construction(self) -> None:
        with dbscale.Cluster(primary=PG, replicas=["postgresql://r1/app"], redis_url="redis://x:1") as cluster:
            assert [n.name for n in cluster.nodes] == ["main-primary", "main-replica1"]
            assert cluster.config.cache.redis_url == "redis://x:1"


class TestErrors:
    def test_non_postgres_replica_names_path_and_fix(self) -> None:
        message = error_of(groups={"main": {"primary": PG, "replicas": [PG, "mysql://x"]}})
        assert (
            message
            == "groups.main.replicas[1]: 'mysql://x' is not a PostgreSQL URL (use postgresql://user@host:port/dbname)"
        )

    def test_password_never_in_error(self) -> None:
        message = error_of(groups={"main": {"primary": "mysql://root:hunter2@x/db"}})
        assert "hunter2" not in message
        assert "groups.main.primary" in message

    def test_bad_duration(self) -> None:
        assert error_of(primary=PG, max_lag="soon").startswith("groups.main.max_lag: 'soon' is not a duration")

    def test_a_duration_is_finite_and_a_ttl_or_redis_timeout_is_not_zero(self) -> None:
        """TOML reads ``nan`` and ``inf`` as floats; a zero TTL caches nothing and a zero Redis timeout fails
        every call over to the database."""
        assert error_of(primary=PG, max_lag=float("nan")) == (
            "groups.main.max_lag: nan is not a finite duration (use e.g. 250ms, 2s, 5m)"
        )
        assert "not a finite duration" in error_of(primary=PG, pool={"pool_timeout": float("inf")})
        for setting in ("default_ttl", "redis_timeout"):
            message = error_of(primary=PG, cache={"redis_url": "redis://127.0.0.1:6379/0", setting: 0})
            assert message == f"cache.{setting}: Input should be greater than 0", message

    def test_unknown_setting_is_named(self) -> None:
        message = error_of(primary=PG, pool={"pool_sise": 3})
        assert message == (
            "groups.main.pool.pool_sise: unknown setting (did you mean 'pool_size'?); remove it or check its spelling"
        )

    def test_out_of_range(self) -> None:
        assert error_of(primary=PG, pool={"pool_size": 0}).startswith("groups.main.pool.pool_size:")

    def test_bad_port(self) -> None:
        assert "port 99999" in error_of(primary="postgresql://h:99999/d")

    def test_missing_primary(self) -> None:
        assert error_of(groups={"main": {"replicas": []}}) == "groups.main.primary: required setting is missing"

    def test_no_groups(self) -> None:
        assert error_of().startswith("groups: no database configured")

    def test_empty_groups(self) -> None:
        assert error_of(groups={}).startswith("groups: at least one group is required")

    def test_bad_group_name(self) -> None:
        assert error_of(groups={"9 bad": {"primary": PG}}).startswith("groups.9 bad: group names must match")

    def test_bad_redis_url(self) -> None:
        assert error_of(primary=PG, redis_url="http://x") == (
            "cache.redis_url: 'http://x' is not a Redis URL (use redis://host:port/db, "
            "or redis+cluster://h1:p1,h2:p2 for a Redis Cluster)"
        )

    def test_malformed_toml_is_one_line_with_file_name(self, tmp_path: Path) -> None:
        path = write(tmp_path, "[groups.main\nprimary = 1\n")
        with pytest.raises(ConfigError) as info:
            load_config(path, environ={})
        assert str(info.value).startswith(f"{path}: invalid TOML:")
        assert "\n" not in str(info.value)

    def test_missing_file(self, tmp_path: Path) -> None:
        with pytest.raises(ConfigError, match="file not found"):
            load_config(tmp_path / "nope.toml", environ={})

    def test_errors_in_file_carry_file_name(self, tmp_path: Path) -> None:
        path = write(tmp_path, '[groups.main]\nprimary = "mysql://u:pw@x/y"\n')
        with pytest.raises(ConfigError) as info:
            load_config(path, environ={})
        assert (
            str(info.value)
            == f"{path}: groups.main.primary: 'mysql://u:***@x/y' is not a PostgreSQL URL (use postgresql://user@host:port/dbname)"
        )

    def test_unknown_group_lookup_lists_known(self) -> None:
        with pytest.raises(ConfigError, match=r"known: main"):
            load_config(environ={}, primary=PG).group("users")

    def test_bad_json_list_in_env(self) -> None:
        with pytest.raises(ConfigError, match="not a JSON list"):
            load_config(environ={"DBSCALE_PRIMARY_URL": PG, "DBSCALE_REPLICA_URLS": "[oops"})


class TestSecrets:
    def test_repr_masks_password(self) -> None:
        config = load_config(environ={}, primary=PG, replicas=[PG])
        assert "s3cret" not in repr(config)
        assert "s3cret" not in repr(dbscale.Cluster(config).nodes)
        assert "s3cret" in str(config.group("main").primary)  # the real URL is still usable

    @given(
        st.text(alphabet=st.characters(blacklist_characters="@/:\n ", min_codepoint=33, max_codepoint=126), min_size=1)
    )
    def test_mask_url_hides_any_password(self, password: str) -> None:
        assert mask_url(f"postgresql://user:{password}@host:5432/db") == "postgresql://user:***@host:5432/db"


class TestUnits:
    @pytest.mark.parametrize(
        ("text", "seconds"), [("250ms", 0.25), ("2s", 2.0), ("5m", 300.0), ("1h", 3600.0), ("1.5", 1.5), (3, 3.0)]
    )
    def test_durations(self, text: str | int, seconds: float) -> None:
        assert parse_duration(text) == seconds

    @pytest.mark.parametrize("text", ["", "ms", "5 parsecs", "-1s", "1e3"])
    def test_bad_durations(self, text: str) -> None:
        with pytest.raises(ValueError):
            parse_duration(text)

    def test_bool_is_not_a_duration(self) -> None:
        with pytest.raises(ValueError):
            parse_duration(True)

    @pytest.mark.parametrize(("text", "size"), [("16MB", 16_000_000), ("1KiB", 1024), (512, 512), ("7", 7)])
    def test_sizes(self, text: str | int, size: int) -> None:
        assert parse_size(text) == size

    @given(st.integers(min_value=0, max_value=10**7))
    def test_format_duration_round_trips(self, millis: int) -> None:
        assert parse_duration(format_duration(millis / 1000)) == pytest.approx(millis / 1000)


def test_from_config_applies_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = write(tmp_path, '[groups.main]\nprimary = "postgresql://app@db1/app"\n')
    monkeypatch.setitem(os.environ, "DBSCALE_GROUPS__main__POOL__POOL_SIZE", "3")
    with dbscale.Cluster.from_config(path) as cluster:
        assert cluster.config.group("main").pool.pool_size == 3


def test_load_balancing_accepts_hyphenated_names() -> None:
    group = load_config(environ={}, groups={"main": {"primary": PG, "load_balancing": "round-robin"}}).group("main")
    assert group.load_balancing == "round_robin"
    assert "load_balancing" in error_of(groups={"main": {"primary": PG, "load_balancing": "fastest"}})


class TestUnknownNames:
    def test_unknown_top_level_table_names_the_close_match(self, tmp_path: Path) -> None:
        path = tmp_path / "dbscale.toml"
        path.write_text('[group.main]\nprimary = "postgresql://a@h/d"\n')
        with pytest.raises(ConfigError) as info:
            load_config(path, environ={})
        assert (
            str(info.value)
            == f"{path}: group: unknown table (did you mean 'groups'?); known tables: groups, cache, sharding"
        )

    def test_known_tables_come_from_the_model(self) -> None:
        from dbscale.config import TopologyConfig, top_level_keys

        assert top_level_keys() == list(TopologyConfig.model_fields)

    def test_misspelled_variable_warns_with_the_close_match_and_is_ignored(self) -> None:
        env = {"DBSCALE_PRIMRY_URL": PG, "DBSCALE_PRIMARY_URL": PG, "DBSCALE_GROUPS__main__MAX_LAGG": "2s"}
        with pytest.warns(UserWarning) as record:
            config = load_config(environ=env)
        messages = sorted(str(w.message) for w in record)
        assert (
            "DBSCALE_GROUPS__main__MAX_LAGG: unknown dbscale setting (did you mean 'DBSCALE_GROUPS__main__MAX_LAG'?)"
            in messages[0]
        )
        assert "DBSCALE_PRIMRY_URL: unknown dbscale setting (did you mean 'DBSCALE_PRIMARY_URL'?)" in messages[1]
        assert config.groups["main"].max_lag == 10.0

    def test_real_settings_do_not_warn(self, recwarn: pytest.WarningsRecorder) -> None:
        env = {
            "DBSCALE_PRIMARY_URL": PG,
            "DBSCALE_GROUPS__main__POOL__POOL_SIZE": "3",
            "DBSCALE_CACHE__NAMESPACE": "app",
            "DBSCALE_CONFIG": "",
        }
        config = load_config(environ=env)
        assert config.groups["main"].pool.pool_size == 3
        assert not [w for w in recwarn if "dbscale" in str(w.message)]


# -- Redis Cluster URLs ---------------------------------------------------------------------------------
def test_cluster_url_seeds_and_node_urls() -> None:
    url = "redis+cluster://app:s3cret@10.0.0.1:7000,10.0.0.2:7001/0?ssl_cert_reqs=none"
    assert is_cluster_url(url) and not is_cluster_url("redis://h:6379/0")
    assert cluster_seeds(url) == [("10.0.0.1", 7000), ("10.0.0.2", 7001)]
    assert node_urls(url) == [
        "redis://app:s3cret@10.0.0.1:7000/0?ssl_cert_reqs=none",
        "redis://app:s3cret@10.0.0.2:7001/0?ssl_cert_reqs=none",
    ]
    assert node_url("rediss+cluster://h:1", "10.0.0.3", 7002) == "rediss://10.0.0.3:7002/0"
    assert node_urls("redis://h:6379/2") == ["redis://h:6379/2"]
    assert CacheConfig(redis_url="redis+cluster://h1:7000,h2:7000").redis_url == "redis+cluster://h1:7000,h2:7000"


@pytest.mark.parametrize(
    ("url", "says"),
    [
        ("redis+cluster://h1:7000,h2", "not host:port"),
        ("redis+cluster://h1:7000/3", "only database 0"),
        ("redis+cluster://:pw@h1:99999", "not host:port"),
        ("memcached://h:1", "redis+cluster://"),
    ],
)
def test_bad_cluster_urls_say_what_to_write(url: str, says: str) -> None:
    with pytest.raises(ValueError, match=re.escape(says)):
        CacheConfig(redis_url=url)
