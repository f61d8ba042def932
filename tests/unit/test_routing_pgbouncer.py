"""pgbouncer.ini / userlist generation."""

from __future__ import annotations

from dbscale.config import load_config
from dbscale.pgbouncer import render_pgbouncer_config


def test_defaults_and_databases() -> None:
    cfg = load_config(
        environ={},
        groups={
            "main": {
                "primary": "postgresql://app:s%22ecret@10.0.0.1:5432/shop",
                "replicas": ["postgresql://app:s%22ecret@10.0.0.2/shop"],
            },
            "shard0": {"primary": "postgresql://app:s%22ecret@10.0.0.3:5433/shop"},
        },
    )
    files = render_pgbouncer_config(cfg)
    ini = files.ini
    for line in (
        "pool_mode = transaction",
        "max_client_conn = 1000",
        "default_pool_size = 25",
        "min_pool_size = 10",
        "reserve_pool_size = 5",
        "reserve_pool_timeout = 5",
        "shop_main = host=10.0.0.1 port=5432 dbname=shop",
        "shop_main_replica1 = host=10.0.0.2 port=5432 dbname=shop",
        "shop_shard0 = host=10.0.0.3 port=5433 dbname=shop",
    ):
        assert line in ini.splitlines()
    assert "ecret" not in ini  # the password is s"ecret: neither it nor its URL form leaks into the ini
    assert files.userlist == '"app" "s""ecret"\n'


def test_overrides() -> None:
    cfg = load_config(environ={}, primary="postgresql://u@h:1/d")
    ini = render_pgbouncer_config(cfg, default_pool_size=50, listen_port=7000).ini
    assert "default_pool_size = 50" in ini and "listen_port = 7000" in ini
    assert "default_pool_size = 25" not in ini
