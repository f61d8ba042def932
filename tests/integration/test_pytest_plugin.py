"""The pytest plugin as a user's suite sees it: a separate pytest run on an existing topology."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

USER_TESTS = """
import asyncio

from sqlalchemy import text

seen = []


def test_sync(dbscale_topology, dbscale_cluster):
    assert dbscale_topology.local is None  # an existing topology: not started, not stopped
    seen.append(dbscale_cluster.config.cache.namespace)
    dbscale_cluster.cache.set("k", 1)
    with dbscale_cluster.read() as conn:
        assert conn.scalar(text("select 1")) == 1


def test_isolated(dbscale_cluster):
    ns = dbscale_cluster.config.cache.namespace
    assert ns.startswith("test-") and ns not in seen
    assert dbscale_cluster.cache.get("k") is None  # the other test's value is not a hit here


def test_async(dbscale_async_cluster):
    async def main():
        async with dbscale_async_cluster.read() as conn:
            return await conn.scalar(text("select 2"))

    assert asyncio.run(main()) == 2
"""


@pytest.mark.parametrize("how", ["env", "option"])
def test_a_users_suite_runs_on_an_existing_topology(how: str, topology_config_path: Path, tmp_path: Path) -> None:
    (tmp_path / "test_user.py").write_text(textwrap.dedent(USER_TESTS))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DBSCALE_", "PYTEST_"))}
    args = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "test_user.py"]
    if how == "env":
        env["DBSCALE_TEST_CONFIG"] = str(topology_config_path)
    else:
        args.append(f"--dbscale-config={topology_config_path}")
    result = subprocess.run(args, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=180)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "3 passed" in result.stdout
