"""The CLI starts fast: ``import dbscale.cli`` imports no capability it does not run.

``dbscale load`` is measured against ``psql \\copy`` (benchmarks/bulk.py), so every import the CLI
pays at start counts. The commands import the cluster, the cache, CQRS and the advisor inside their
bodies; this holds that in place (each check runs in a fresh interpreter, whose ``sys.modules`` is
the truth).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

import dbscale

#: Modules ``import dbscale.cli`` must not load (a top-level import of one would bring it back).
HEAVY = (
    "pglast",
    "dbscale.advisor",
    "dbscale.cqrs",
    "dbscale.cache",
    "dbscale.cluster",
    "dbscale.integrations",
    "redis",
    "fastapi",
    "starlette",
    "flask",
    "sqlalchemy.orm",
    "sqlalchemy.ext.asyncio",
)


def imported_by(statement: str) -> set[str]:
    """The modules a fresh interpreter holds after running ``statement``."""
    code = f"import json, sys\n{statement}\nprint(json.dumps(sorted(sys.modules)))"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    return set(json.loads(done.stdout))


def heavy(modules: set[str]) -> list[str]:
    return sorted(m for m in modules if any(m == h or m.startswith(h + ".") for h in HEAVY))


def test_import_cli_loads_no_capability() -> None:
    assert heavy(imported_by("import dbscale.cli")) == []


def test_launcher_loads_no_capability() -> None:
    assert heavy(imported_by("import dbscale_launcher, dbscale.cli")) == []


def test_the_load_path_imports_no_sqlalchemy_cluster_cache_cqrs_or_advisor() -> None:
    """What ``dbscale load`` imports when it runs (a topology without Patroni): the config, the loader and
    psycopg — no SQLAlchemy (the loader connects to each group's write endpoint with psycopg), no
    cluster or routers, no Redis, cache, CQRS or advisor."""
    modules = imported_by(
        "import dbscale.cli; from dbscale.cli_load import load, _target\n"
        "from dbscale.bulk.plan import csv_fields, csv_records\n"
        "from dbscale.bulk.shell import Primaries, bulk_load\n"
        "from dbscale.config import load_config"
    )
    assert heavy(modules) == []
    assert not [m for m in modules if m == "sqlalchemy" or m.startswith("sqlalchemy.")]
    assert "psycopg" in modules
    # nor rich (the summary is plain lines; rich comes with the progress bar), the asyncio loader, or
    # the modules of the other commands (imported when one of them runs)
    assert not [m for m in modules if m == "rich" or m.startswith("rich.")]
    assert not {"dbscale.bulk.aio", "dbscale.cli_writes", "dbscale.cli_project", "dbscale.cli_advise"} & modules
    assert "dbscale.sharding" not in modules  # an unsharded load needs no shard map
    assert "orjson" not in modules  # JSON lines and reject files only


def test_the_lazy_commands_are_listed_and_run() -> None:
    """``advise``, ``init``, ``project`` and ``write-behind`` are added when named: --help lists them, and each
    resolves to its command (a group's subcommands included)."""
    from typer.testing import CliRunner

    from dbscale.cli import LAZY_COMMANDS, app

    runner = CliRunner()
    listed = runner.invoke(app, ["--help"])
    assert listed.exit_code == 0 and all(name in listed.output for name in LAZY_COMMANDS)
    for args, says in (
        (["advise", "--help"], "--min-gain"),
        (["init", "--help"], "--config"),
        (["project", "status", "--help"], "--json"),
        (["write-behind", "--help"], "dead-letters"),
    ):
        done = runner.invoke(app, args)
        assert done.exit_code == 0 and says in done.output, (args, done.output)


def test_import_dbscale_is_lazy_and_every_public_name_resolves() -> None:
    assert "sqlalchemy" not in imported_by("import dbscale")
    modules = imported_by("from dbscale import ConfigError, DbscaleError")
    assert heavy(modules) == [] and "sqlalchemy" not in modules
    for name in dbscale.__all__:  # the lazy names are the same objects as in their modules
        assert getattr(dbscale, name) is not None, name
    assert dbscale.Cluster is __import__("dbscale.cluster", fromlist=["Cluster"]).Cluster
    assert set(dbscale.__all__) <= set(dir(dbscale))


def test_unknown_name_is_an_attribute_error() -> None:
    try:
        dbscale.NoSuchThing  # type: ignore[attr-defined]  # noqa: B018
    except AttributeError as exc:
        assert "NoSuchThing" in str(exc)
    else:
        raise AssertionError("dbscale.NoSuchThing resolved")


def test_cli_default_state_dir_is_the_local_topologys() -> None:
    from dbscale import cli
    from dbscale.local.topology import DEFAULT_STATE_DIR

    assert Path(DEFAULT_STATE_DIR) == cli.DEFAULT_STATE_DIR


def test_a_named_command_is_the_only_one_built(monkeypatch: pytest.MonkeyPatch) -> None:
    """typer builds a command from its signature; building every command at each start cost `dbscale load`
    20–35 ms here, so only the one named is built (--help and a typo still see them all)."""
    import typer.main
    from typer.testing import CliRunner

    from dbscale.cli import _command_name, app

    built: list[str] = []
    real = typer.main.get_command_from_info

    def spy(command_info: typer.models.CommandInfo, **kwargs: Any) -> Any:
        built.append(_command_name(command_info))
        return real(command_info, **kwargs)

    monkeypatch.setattr(typer.main, "get_command_from_info", spy)
    runner = CliRunner()
    done = runner.invoke(app, ["load", "--help"])
    assert done.exit_code == 0 and "--batch-rows" in done.output
    assert built == ["load"]
    for command in (["load"], ["status"], ["advise"], ["node", "stop"]):  # the app has no shell completion
        helped = runner.invoke(app, [*command, "--help"])
        assert helped.exit_code == 0 and "--install-completion" not in helped.output, command
    built.clear()
    listed = runner.invoke(app, ["--help"])
    assert listed.exit_code == 0
    for name in ("up", "down", "status", "demo", "top", "load", "node", "metrics", "pgbouncer-config", "advise"):
        assert name in listed.output, name
    typo = runner.invoke(app, ["statsu"])
    assert typo.exit_code == 2 and "Did you mean 'status'" in typo.output


def test_collection_resumes_only_where_the_launcher_paused_it() -> None:
    """``resume_collection()`` (called by ``dbscale load`` after its imports) turns the collector back on
    only when the launcher paused it: a program that disabled it itself keeps it off."""
    import gc

    import dbscale_launcher

    gc.disable()
    try:
        dbscale_launcher.resume_collection()
        assert not gc.isenabled()
        dbscale_launcher._paused = True
        dbscale_launcher.resume_collection()
        assert gc.isenabled() and gc.get_freeze_count() > 0 and not dbscale_launcher._paused
    finally:
        gc.unfreeze()
        gc.enable()


def test_load_options_out_of_range_are_usage_errors(tmp_path: Path) -> None:
    """``--batch-rows 0`` and ``--parallel 0`` are refused by the option parser (exit 2), before any config
    is read or any connection made."""
    from typer.testing import CliRunner

    from dbscale.cli import app

    data = tmp_path / "in.csv"
    data.write_text("1,a\n")
    for option in ("--batch-rows", "--parallel"):
        done = CliRunner().invoke(app, ["load", str(data), "--table", "t", option, "0", "--config", "/nonexistent"])
        assert done.exit_code == 2 and option in done.output, done.output
