"""Pure parts of dbscale.local: state model, config rendering, binaries, ports, process checks."""

from __future__ import annotations

import os
import socket
import stat
import subprocess
import sys
import time
import tomllib
from collections.abc import Callable
from pathlib import Path

import pytest

from dbscale.errors import LocalTopologyError, MissingBinaryError
from dbscale.local import binaries
from dbscale.local.pgbouncer import render_ini
from dbscale.local.ports import free_ports, port_is_free
from dbscale.local.postgres import node_conf
from dbscale.local.processes import is_alive, read_pidfile
from dbscale.local.service_user import blocking_directory
from dbscale.local.state import (
    Shape,
    TopologyState,
    config_document,
    from_json,
    load_state,
    node_count,
    plan,
    save_state,
    to_json,
    write_config,
)

ROOT = Path("/srv/dbscale-state")


def make_state(replicas: int = 2, shards: int = 1, pgbouncer: bool = True, password: str = "pw-_x") -> TopologyState:
    shape = Shape(replicas, shards, pgbouncer)
    return plan(shape, password, ROOT, list(range(20000, 20000 + node_count(shape))))


# --------------------------------------------------------------------------- state


def test_plan_names_roles_and_ports() -> None:
    state = make_state()
    assert state.names() == [
        "main-primary", "main-replica1", "main-replica2", "shard0-primary",
        "redis", "pgbouncer-main", "pgbouncer-shard0",
    ]  # fmt: skip
    assert len({n.port for n in state.nodes}) == len(state.nodes)
    replica = state.node("main-replica2")
    assert (replica.role, replica.upstream, replica.slot) == ("replica", "main-primary", "main_replica2")
    assert replica.data_dir == ROOT / "nodes" / "main-replica2" / "data"
    assert state.node("pgbouncer-shard0").upstream == "shard0-primary"
    assert state.node("redis").role is None


def test_state_round_trips_through_json(tmp_path: Path) -> None:
    state = make_state()
    assert from_json(to_json(state)) == state
    assert load_state(tmp_path) is None
    save_state(tmp_path, state)
    assert stat.S_IMODE((tmp_path / "state.json").stat().st_mode) == 0o600
    assert load_state(tmp_path) == state


def test_unsupported_state_version_is_a_clear_error() -> None:
    doc = to_json(make_state())
    doc["version"] = 99
    with pytest.raises(LocalTopologyError, match="down --purge"):
        from_json(doc)


def test_unknown_node_lists_known_names() -> None:
    with pytest.raises(LocalTopologyError, match="unknown node 'nope'; known nodes: main-primary, main-replica1"):
        make_state().node("nope")


def test_shape_mismatches() -> None:
    shape = Shape(2, 0, False)
    assert shape.mismatches(None, None, None) == []
    assert shape.mismatches(2, 0, False) == []
    assert shape.mismatches(3, None, True) == ["replicas=3 (state has 2)", "pgbouncer=True (state has False)"]
    with pytest.raises(LocalTopologyError):
        Shape(-1, 0, False)


def test_promotion_changes_the_group_primary() -> None:
    state = make_state().with_role("main-replica1", "primary")
    assert state.group_primary("main").name == "main-replica1"
    assert state.node("main-primary").role == "primary"


# --------------------------------------------------------------------------- config


def test_config_document_shape(tmp_path: Path) -> None:
    state = make_state(password="a/b c")
    path = tmp_path / "dbscale.toml"
    write_config(path, state)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    doc = tomllib.loads(path.read_text())
    assert doc == config_document(state)
    assert doc["cache"] == {"redis_url": "redis://127.0.0.1:20004/0"}
    main = doc["groups"]["main"]
    assert main["primary"] == "postgresql://dbscale:a%2Fb%20c@127.0.0.1:20000/dbscale"
    assert [u.rsplit(":", 1)[1] for u in main["replicas"]] == ["20001/dbscale", "20002/dbscale"]
    assert main["pgbouncer"].endswith(":20005/dbscale")
    assert doc["groups"]["shard0"]["replicas"] == []


def test_config_without_pgbouncer_has_no_pgbouncer_key() -> None:
    doc = config_document(make_state(pgbouncer=False, shards=0))
    assert list(doc["groups"]) == ["main"]
    assert set(doc["groups"]["main"]) == {"primary", "replicas"}


def test_server_configs_carry_the_required_settings() -> None:
    state = make_state()
    conf = node_conf(state.node("main-replica1"))
    for line in (
        "port = 20001", "unix_socket_directories = ''", "hot_standby_feedback = on",
        "wal_receiver_status_interval = 1s", "fsync = off", "listen_addresses = '127.0.0.1'",
        "shared_preload_libraries = 'pg_stat_statements'",
    ):  # fmt: skip
        assert line in conf.splitlines()
    ini = render_ini(state.node("pgbouncer-main"), 20000)
    for line in ("pool_mode = transaction", "max_client_conn = 1000", "default_pool_size = 25",
                 "listen_port = 20005", "auth_type = scram-sha-256"):  # fmt: skip
        assert line in ini.splitlines()
    assert "port=20000" in ini


# --------------------------------------------------------------------------- binaries and access


def test_missing_binary_names_the_debian_package(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.setattr(binaries, "_SBIN_DIRS", ())
    with pytest.raises(MissingBinaryError, match="apt-get install redis-server") as info:
        binaries.find_binary("redis-server")
    assert "\n" not in str(info.value)
    assert "apt-get install postgresql-15" in binaries.missing_binary_message("initdb")
    assert "apt-get install pgbouncer" in binaries.missing_binary_message("pgbouncer")


def test_find_binary_prefers_search_dirs(tmp_path: Path) -> None:
    fake = tmp_path / "initdb"
    fake.write_text("#!/bin/sh\n")
    fake.chmod(0o755)
    assert binaries.find_binary("initdb", [tmp_path / "missing", tmp_path]) == fake


def _fake_stat(modes: dict[str, tuple[int, int, int]]) -> Callable[[Path], os.stat_result]:
    def stat_fn(path: Path) -> os.stat_result:
        if str(path) not in modes:
            raise FileNotFoundError(path)
        mode, uid, gid = modes[str(path)]
        return os.stat_result((stat.S_IFDIR | mode, 0, 0, 0, uid, gid, 0, 0, 0, 0))

    return stat_fn


def test_blocking_directory_finds_the_first_unsearchable_ancestor() -> None:
    modes = {"/": (0o755, 0, 0), "/tmp": (0o1777, 0, 0), "/tmp/pytest-of-root": (0o700, 0, 0),
             "/tmp/pytest-of-root/x": (0o755, 0, 0)}  # fmt: skip
    stat_fn = _fake_stat(modes)
    gids = frozenset({104})
    assert blocking_directory(Path("/tmp/pytest-of-root/x"), 101, gids, stat_fn) == Path("/tmp/pytest-of-root")
    assert blocking_directory(Path("/tmp/pytest-of-root/x/new"), 0, gids, stat_fn) is None  # root passes
    assert blocking_directory(Path("/tmp/new/dir"), 101, gids, stat_fn) is None  # to be created
    modes["/tmp/pytest-of-root"] = (0o710, 0, 104)  # group-searchable for the postgres group
    assert blocking_directory(Path("/tmp/pytest-of-root/x"), 101, gids, stat_fn) is None
    modes["/tmp/pytest-of-root"] = (0o700, 101, 0)  # owned by the user
    assert blocking_directory(Path("/tmp/pytest-of-root/x"), 101, gids, stat_fn) is None


# --------------------------------------------------------------------------- ports and processes


def test_free_ports_are_distinct_bindable_and_avoid_given_ones() -> None:
    first = free_ports(3)
    ports = free_ports(8, avoid=frozenset(first))
    assert len(set(ports)) == 8 and not set(ports) & set(first)
    assert all(1024 <= p <= 65535 and port_is_free(p) for p in ports)


def test_port_in_use_is_not_free() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        assert not port_is_free(sock.getsockname()[1])


def test_process_liveness_treats_zombies_as_gone(tmp_path: Path) -> None:
    assert is_alive(os.getpid())
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    try:
        deadline = time.monotonic() + 10
        while is_alive(child.pid) and time.monotonic() < deadline:
            time.sleep(0.01)
        assert not is_alive(child.pid)  # exited but not yet reaped: a zombie
    finally:
        child.wait()
    assert not is_alive(child.pid)
    assert not is_alive(0)


def test_read_pidfile(tmp_path: Path) -> None:
    assert read_pidfile(tmp_path / "missing.pid") is None
    (tmp_path / "ok.pid").write_text("1234\n/var/lib/data\n")
    assert read_pidfile(tmp_path / "ok.pid") == 1234
    (tmp_path / "bad.pid").write_text("garbage\n")
    assert read_pidfile(tmp_path / "bad.pid") is None
