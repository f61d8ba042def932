"""CLI behaviour that needs no servers: one-line errors, exit codes, no tracebacks."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any


def run_cli(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "dbscale.cli", *args], capture_output=True, text=True, cwd=cwd, timeout=60
    )


def test_malformed_toml_is_one_line_exit_2(tmp_path: Path) -> None:
    bad = tmp_path / "dbscale.toml"
    bad.write_text("[groups.main\nprimary = 'x'\n")
    result = run_cli("status", "--config", str(bad))
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1
    assert result.stderr.startswith(f"dbscale: error: {bad}: invalid TOML")
    assert "Traceback" not in result.stderr


def test_invalid_url_names_field_and_hides_password(tmp_path: Path) -> None:
    bad = tmp_path / "dbscale.toml"
    bad.write_text(
        '[groups.main]\nprimary = "postgresql://a@h/d"\nreplicas = ["postgresql://a@h/d", "mysql://u:pw@x"]\n'
    )
    result = run_cli("status", "--config", str(bad))
    assert result.returncode == 2
    assert result.stderr == (
        f"dbscale: error: {bad}: groups.main.replicas[1]: 'mysql://u:***@x' is not a PostgreSQL URL "
        "(use postgresql://user@host:port/dbname)\n"
    )


def test_status_without_topology_says_what_to_do(tmp_path: Path) -> None:
    result = run_cli("status", cwd=tmp_path)
    assert result.returncode == 2  # usage: no topology where one was named
    assert "run `dbscale up` first" in result.stderr
    assert "Traceback" not in result.stderr


def test_status_of_unreachable_config_reports_down_as_json(tmp_path: Path) -> None:
    cfg = tmp_path / "dbscale.toml"
    cfg.write_text('[groups.main]\nprimary = "postgresql://u:hunter2@127.0.0.1:1/d"\n')
    result = run_cli("status", "--config", str(cfg), "--json")
    assert result.returncode == 1, result.stderr  # degraded: a node is down
    nodes = json.loads(result.stdout)["nodes"]
    assert [(n["name"], n["healthy"], n["port"]) for n in nodes] == [("main-primary", False, 1)]
    assert "hunter2" not in result.stdout


def test_unknown_option_is_a_usage_error() -> None:
    result = run_cli("status", "--bogus")
    assert result.returncode == 2
    assert "No such option" in result.stderr


def test_pgbouncer_config_prints_transaction_mode_and_writes_private_userlist(tmp_path: Path) -> None:
    cfg = tmp_path / "dbscale.toml"
    cfg.write_text(
        '[groups.main]\nprimary = "postgresql://app:pw1@10.0.0.1:5432/app"\n'
        'replicas = ["postgresql://app:pw1@10.0.0.2:5432/app"]\n'
    )
    result = run_cli("pgbouncer-config", "--config", str(cfg))
    assert result.returncode == 0, result.stderr
    assert "pool_mode = transaction" in result.stdout
    assert "max_client_conn = 1000" in result.stdout
    assert "app_main = host=10.0.0.1 port=5432 dbname=app" in result.stdout
    assert "app_main_replica1 = host=10.0.0.2" in result.stdout
    out_dir = tmp_path / "out"
    result = run_cli("pgbouncer-config", "--config", str(cfg), "--output-dir", str(out_dir), "--listen-port", "7432")
    assert result.returncode == 0, result.stderr
    assert "listen_port = 7432" in (out_dir / "pgbouncer.ini").read_text()
    assert (out_dir / "userlist.txt").read_text() == '"app" "pw1"\n'
    assert (out_dir / "userlist.txt").stat().st_mode & 0o777 == 0o600


def test_state_dir_that_is_a_file_is_one_line_exit_2(tmp_path: Path) -> None:
    a_file = tmp_path / "afile"
    a_file.write_text("x")
    for command in (("up",), ("down",), ("down", "--purge"), ("status",), ("node", "stop", "main-replica1")):
        result = run_cli(*command, "--state-dir", str(a_file))
        assert result.returncode == 2, (command, result.stderr)
        assert result.stderr == (
            f"dbscale: error: --state-dir {a_file} is a file, not a directory; name a directory (it is created if missing)\n"
        )


def test_down_on_a_directory_that_is_no_topology_says_so(tmp_path: Path) -> None:
    keep = tmp_path / "notes.txt"
    keep.write_text("mine")
    result = run_cli("down", "--purge", "--state-dir", str(tmp_path))
    assert result.returncode == 2
    assert result.stderr == (
        f"dbscale: error: {tmp_path} holds no dbscale topology (no state.json); nothing stopped, nothing deleted\n"
    )
    assert keep.read_text() == "mine"
    result = run_cli("down", "--state-dir", str(tmp_path / "missing"))
    assert result.returncode == 0
    assert "nothing to stop" in result.stdout


def test_node_command_without_topology_is_a_usage_error(tmp_path: Path) -> None:
    result = run_cli("node", "stop", "main-replica1", "--state-dir", str(tmp_path))
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and "run `dbscale up" in result.stderr


def test_unknown_table_in_config_is_exit_2_naming_the_close_match(tmp_path: Path) -> None:
    cfg = tmp_path / "dbscale.toml"
    cfg.write_text('[group.main]\nprimary = "postgresql://a@h/d"\n')
    result = run_cli("status", "--config", str(cfg))
    assert result.returncode == 2
    assert "group: unknown table (did you mean 'groups'?)" in result.stderr
    assert result.stderr.count("\n") == 1


def _commands(group: Any, path: tuple[str, ...] = ()) -> Iterator[tuple[tuple[str, ...], Any]]:
    """Every command below ``group``, the lazily added ones included (asked for by name, as click does)."""
    yield path, group
    if hasattr(group, "list_commands"):  # a group (typer's own click, not necessarily the click package)
        ctx = group.context_class(group)
        for name in group.list_commands(ctx):
            yield from _commands(group.get_command(ctx, name), (*path, name))


def test_help_texts_keep_their_bracketed_words() -> None:
    """Typer renders help with rich markup, where ``[sharding]`` is a style tag and vanishes unless escaped."""
    import typer
    from typer.testing import CliRunner

    from dbscale.cli import app

    checked = 0
    for path, command in _commands(typer.main.get_command(app)):
        texts = [command.help or ""] + [getattr(p, "help", None) or "" for p in command.params]
        words = {w for text in texts for w in re.findall(r"\[([a-z_.]+)\]", text)}
        if not words:
            continue
        shown = CliRunner().invoke(app, [*path, "--help"], terminal_width=400).output
        for word in words:
            assert f"[{word}]" in shown, f"dbscale {' '.join(path)} --help lost [{word}]"
            checked += 1
    assert checked >= 3
