"""Every code block of README.md runs as written, against the session's real topology.

The convention (keep it simple, other sections are added all the time):

* ```python blocks run in order, in one namespace per README (a block may use the names an earlier
  block defined), with the working directory holding ``.dbscale/dbscale.toml`` of the session topology;
* ```toml blocks are loaded as configuration (a block without ``[groups...]`` is checked with a
  placeholder primary) and must validate;
* ```bash blocks and blocks with no language (sample output) are not run: bash blocks start or stop
  things (``make demo``, ``dbscale up``) or install packages;
* a block that cannot run as written is exempted by the line just before its opening fence:
  ``<!-- readme-test: skip <reason> -->`` (the reason is required; keep exemptions few).
"""

from __future__ import annotations

import os
import re
import sys
import tomllib
import types
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from dbscale.config import TopologyConfig
from dbscale.local import LocalTopology

pytestmark = pytest.mark.integration

README = Path(__file__).resolve().parents[2] / "README.md"
_FENCE = re.compile(r"^(?P<indent>[ ]*)```(?P<lang>[\w-]*)[ ]*$")
_SKIP = re.compile(r"<!--\s*readme-test:\s*skip\s+(?P<reason>\S.*?)\s*-->")


@dataclass(frozen=True)
class Block:
    lang: str
    code: str
    line: int
    skip: str | None


def blocks(text: str) -> list[Block]:
    """The fenced code blocks of ``text`` (indented ones too), with their skip marker if any."""
    found: list[Block] = []
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        m = _FENCE.match(lines[i])
        if not m:
            i += 1
            continue
        indent, lang, start = len(m["indent"]), m["lang"], i
        body: list[str] = []
        i += 1
        while i < len(lines) and not _FENCE.match(lines[i]):
            body.append(lines[i][indent:])
            i += 1
        previous = lines[start - 1] if start else ""
        marker = _SKIP.search(previous)
        found.append(Block(lang, "\n".join(body) + "\n", start + 1, marker["reason"] if marker else None))
        i += 1
    return found


def test_block_parser_reads_languages_markers_and_indented_fences() -> None:
    text = "x\n<!-- readme-test: skip needs a browser -->\n```python\na = 1\n```\n- item\n\n  ```toml\n  [c]\n  ```\n"
    assert blocks(text) == [Block("python", "a = 1\n", 3, "needs a browser"), Block("toml", "[c]\n", 8, None)]


README_BLOCKS = [b for b in blocks(README.read_text()) if b.lang in ("python", "toml")]


@pytest.fixture(scope="module")
def namespace(local_topology: LocalTopology, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """One namespace for the README's Python blocks; cwd has ``.dbscale`` -> the session topology."""
    work = tmp_path_factory.mktemp("readme")
    # the session topology's config plus the entity scheme the README's sharding section adds to it
    (work / ".dbscale").mkdir()
    config = local_topology.config_path.read_text()
    (work / ".dbscale" / "dbscale.toml").write_text(config + '\n[sharding.entities.orders]\nkey = "user_id"\n')
    here = Path.cwd()
    os.chdir(work)
    module = types.ModuleType("readme")  # a real module: SQLAlchemy resolves annotations through sys.modules
    sys.modules["readme"] = module
    ns: dict[str, Any] = module.__dict__
    try:
        yield ns
    finally:
        sys.modules.pop("readme", None)
        os.chdir(here)
        for value in list(ns.values()):
            close = getattr(value, "close", None)
            if type(value).__name__ == "Cluster" and callable(close):
                close()


@pytest.mark.parametrize("block", README_BLOCKS, ids=[f"{b.lang}-line{b.line}" for b in README_BLOCKS])
def test_readme_block_runs(block: Block, namespace: dict[str, Any]) -> None:
    if block.skip:
        pytest.skip(f"README.md:{block.line}: {block.skip}")
    if block.lang == "toml":
        data = tomllib.loads(block.code)
        groups = data.setdefault("groups", {"main": {}})
        for name in data.get("sharding", {}).get("groups", []):  # shard groups the fragment names
            groups.setdefault(name, {})
        for group in groups.values():  # a fragment: a placeholder primary
            group.setdefault("primary", "postgresql://app@db1:5432/app")
            group.setdefault("replicas", ["postgresql://app@db2:5432/app"] * len(group.get("weights") or []))
        TopologyConfig.model_validate(data)
        return
    exec(compile(block.code, f"README.md:{block.line}", "exec"), namespace)
