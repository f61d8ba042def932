"""``cached`` keeps the decorated function's signature for mypy (issue 16, item 3).

``tests/typing/cached_signatures.py`` states the types with ``assert_type`` (mypy checks it here and
in ``make lint``); the snippets below must fail, naming the wrong argument.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from mypy import api

ROOT = Path(__file__).resolve().parents[2]


def mypy(*args: str) -> tuple[str, int]:
    stdout, stderr, status = api.run(["--strict", "--no-error-summary", "--hide-error-context", *args])
    return stdout + stderr, status


def test_decorated_functions_keep_their_types() -> None:
    out, status = mypy(str(ROOT / "tests" / "typing" / "cached_signatures.py"))
    assert status == 0, out


SNIPPET = """
from dbscale.cache import AsyncCache, Cache

def f(cache: Cache, acache: AsyncCache) -> None:
    @cache.cached(ttl=60, key="user:{{user_id}}")
    def get_user(user_id: int) -> str:
        return ""

    @acache.cached(ttl=60)
    async def get_order(order_id: str) -> int:
        return 1

    {line}
"""

WRONG = [
    ('get_user("42")', 'Argument 1 to "__call__" of "CachedFunction" has incompatible type "str"; expected "int"'),
    ("get_user.invalidate(user=1)", 'Unexpected keyword argument "user" for "invalidate" of "CachedFunction"'),
    ("get_user.refresh()", 'Missing positional argument "user_id" in call to "refresh" of "CachedFunction"'),
    ("x: int = get_user(1)", 'Incompatible types in assignment (expression has type "str", variable has type "int")'),
    ("get_order(1)", 'Argument 1 to "__call__" of "AsyncCachedFunction" has incompatible type "int"; expected "str"'),
    ("y: int = get_order('a')", 'expression has type "Coroutine[Any, Any, int]", variable has type "int"'),
]


@pytest.mark.parametrize(("line", "error"), WRONG, ids=[line for line, _ in WRONG])
def test_a_wrong_call_is_a_mypy_error(tmp_path: Path, line: str, error: str) -> None:
    path = tmp_path / "snippet.py"
    path.write_text(SNIPPET.format(line=line))
    out, status = mypy(str(path))
    assert status == 1 and error in out, out
