"""Key building: templates bound to signatures, canonical default keys, clear errors."""

from __future__ import annotations

import datetime
import enum
import uuid
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from dbscale.cache.keys import CacheKeyError, KeyBuilder, RedisKeys, TagBuilder, glob_to_regex
from dbscale.errors import CacheError


def user(user_id: int, org: str = "acme", *, verbose: bool = False) -> None: ...


def test_template_same_key_for_positional_keyword_and_default() -> None:
    kb = KeyBuilder(user, "user:{user_id}:{org}")
    assert kb.build((42,), {}) == "user:42:acme"
    assert kb.build((), {"user_id": 42}) == "user:42:acme"
    assert kb.build((42, "acme"), {}) == "user:42:acme"
    assert kb.build((), {"org": "acme", "user_id": 42}) == "user:42:acme"
    assert kb.build((42,), {"verbose": True}) == "user:42:acme"


def test_single_field_template_fast_path() -> None:
    kb = KeyBuilder(user, "user:{user_id}")
    assert kb.build((7, "x"), {}) == "user:7"
    assert kb.build(("abc",), {}) == "user:abc"
    assert kb.build((), {"user_id": uuid.UUID(int=1)}) == f"user:{uuid.UUID(int=1)}"


class Color(enum.Enum):
    RED = "red"


@pytest.mark.parametrize(
    ("value", "text"),
    [(True, "True"), (None, "None"), (1.5, "1.5"), (Color.RED, "red"), (datetime.date(2024, 1, 2), "2024-01-02")],
)
def test_template_field_types(value: Any, text: str) -> None:
    assert KeyBuilder(user, "u:{user_id}").build((value,), {}) == f"u:{text}"


def test_template_unencodable_field_is_clear_error() -> None:
    kb = KeyBuilder(user, "u:{user_id}")
    with pytest.raises(CacheKeyError, match=r"'user_id' of type object"):
        kb.build((object(),), {})
    assert issubclass(CacheKeyError, CacheError)


def test_template_unknown_field_and_bad_spec() -> None:
    with pytest.raises(CacheKeyError, match="not a parameter"):
        KeyBuilder(user, "u:{nope}")
    with pytest.raises(CacheKeyError, match="plain parameter name"):
        KeyBuilder(user, "u:{user_id!r}")


def test_missing_and_extra_arguments_raise_type_error() -> None:
    kb = KeyBuilder(user, "u:{user_id}")
    with pytest.raises(TypeError, match="missing"):
        kb.build((), {})
    with pytest.raises(TypeError, match="unexpected"):
        kb.build((1,), {"zzz": 2})
    with pytest.raises(TypeError, match="multiple"):
        kb.build((1,), {"user_id": 2})


def test_default_key_is_canonical_and_never_str_args() -> None:
    kb = KeyBuilder(user)
    a = kb.build((42,), {})
    assert a == kb.build((), {"user_id": 42}) == kb.build((42, "acme"), {"verbose": False})
    assert a.startswith(f"{__name__}.user:")
    assert a != kb.build((43,), {})


def test_default_key_sorts_dict_keys_and_hashes_long_values() -> None:
    def f(filters: dict[str, int]) -> None: ...

    kb = KeyBuilder(f)
    assert kb.build(({"a": 1, "b": 2},), {}) == kb.build(({"b": 2, "a": 1},), {})
    long_key = kb.build(({"x" * 300: 1},), {})
    assert "#" in long_key and len(long_key) < 200


def test_default_key_unencodable_names_parameter() -> None:
    class Conn: ...

    def f(conn: Conn, user_id: int) -> None: ...

    with pytest.raises(CacheKeyError, match=r"argument 'conn' of type .*Conn"):
        KeyBuilder(f).build((Conn(), 1), {})


def test_varargs_functions_bind_through_signature() -> None:
    def f(*ids: int, **opts: str) -> None: ...

    kb = KeyBuilder(f)
    assert kb.build((1, 2), {"a": "b", "c": "d"}) == kb.build((1, 2), {"c": "d", "a": "b"})
    assert kb.build((1, 2), {"a": "b"}) != kb.build((1, 3), {"a": "b"}) != kb.build((1, 3), {"a": "x"})
    with pytest.raises(CacheKeyError, match="callable"):
        KeyBuilder(f, "x:{ids}")


def test_callable_key_and_tags() -> None:
    kb = KeyBuilder(user, lambda user_id, **_: f"k{user_id}")
    assert kb.build((3,), {}) == "k3"
    tb = TagBuilder(user, ["user:{user_id}", "org:{org}"])
    assert tb.build((3,), {"org": "x"}) == ("user:3", "org:x")


@given(st.integers(), st.text(min_size=0, max_size=20))
def test_property_positional_equals_keyword(uid: int, org: str) -> None:
    for template in (None, "user:{user_id}", "user:{user_id}/{org}"):
        kb = KeyBuilder(user, template)
        assert kb.build((uid, org), {}) == kb.build((), {"org": org, "user_id": uid})


@given(st.integers(), st.integers())
def test_property_distinct_args_distinct_default_keys(a: int, b: int) -> None:
    kb = KeyBuilder(user)
    assert (kb.build((a,), {}) == kb.build((b,), {})) == (a == b)


def test_redis_keys_layout_and_round_trip() -> None:
    rk = RedisKeys("app")
    v, lease, stale = rk.triple("user:1")
    assert (v, lease, stale) == ("app:v:{user:1}", "app:l:{user:1}", "app:s:{user:1}")
    assert rk.user_key(v.encode()) == rk.user_key(lease) == "user:1"
    assert rk.tag("t") == "app:t:{t}"
    assert rk.channel == "app:__invalidate__"


@pytest.mark.parametrize(
    ("pattern", "yes", "no"),
    [("user:*", "user:1", "users:1"), ("u?", "u1", "u12"), ("u[ab]", "ua", "uc"), (r"a\*", "a*", "ab")],
)
def test_glob_to_regex(pattern: str, yes: str, no: str) -> None:
    rx = glob_to_regex(pattern)
    assert rx.match(yes) and not rx.match(no)
