"""scripts/unasync.py: router.py is the current sync twin of aio.py, and the check catches drift."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "scripts" / "unasync.py"


@pytest.fixture(scope="module")
def unasync() -> ModuleType:
    spec = importlib.util.spec_from_file_location("unasync_script", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_router_is_up_to_date() -> None:
    result = subprocess.run([sys.executable, str(SCRIPT), "--check"], capture_output=True, text=True, cwd=ROOT)
    assert result.returncode == 0, result.stdout + result.stderr


def test_stale_file_fails_with_a_diff(
    unasync: ModuleType, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    src, dst = unasync.FILES[0]
    stale = tmp_path / "router.py"
    stale.write_text((ROOT / dst).read_text().replace("time.sleep(min(0.05", "time.sleep(min(0.5"))
    monkeypatch.setattr(unasync, "FILES", [(src, stale)])
    assert unasync.main(["--check"]) == 1
    out = capsys.readouterr().out
    assert "-            time.sleep(min(0.5, remaining))" in out
    assert "+            time.sleep(min(0.05, remaining))" in out


def test_unused_rule_fails(
    unasync: ModuleType, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    rules = [*unasync.RULES, (r"\bAsyncNothing\b", "Nothing")]
    monkeypatch.setattr(unasync, "RULES", rules)
    monkeypatch.setattr(unasync, "COMPILED", [(unasync.re.compile(p), r) for p, r in rules])
    assert unasync.main(["--check"]) == 1
    assert "unused rule: '\\\\bAsyncNothing\\\\b'" in capsys.readouterr().err


def test_generated_classes_have_the_same_methods() -> None:
    from dbscale.routing import aio, router

    for cls in (aio.AsyncGroupRouter, aio.AsyncReadConnection):
        twin = getattr(router, cls.__name__.removeprefix("Async"))
        assert {n for n in vars(cls) if not n.startswith("__")} == {n for n in vars(twin) if not n.startswith("__")}
    assert (router.REPLAY_LSN_SQL, router.INSERT_LSN_SQL) == (aio.REPLAY_LSN_SQL, aio.INSERT_LSN_SQL)


def test_generated_cache_classes_have_the_same_methods() -> None:
    from dbscale.cache import l2, l2_async, tier, tier_async

    for cls, twin in ((tier_async.AsyncCache, tier.Cache), (l2_async.AsyncRedisL2, l2.RedisL2)):
        assert {n for n in vars(cls) if not n.startswith("__")} == {n for n in vars(twin) if not n.startswith("__")}
