"""Serde: formats, falsy values, compression, HMAC, pickle refusal, errors naming the type."""

from __future__ import annotations

import contextlib
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from dbscale.cache.core import CacheCore
from dbscale.cache.serde import HEADER_LEN, Serializer, decode_header, encode_header
from dbscale.config import CacheConfig
from dbscale.errors import ConfigError, SerializationError

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**63 - 1)
    | st.text()
    | st.floats(allow_nan=False, allow_infinity=False),  # orjson writes inf as null
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=5), inner, max_size=4),
    max_leaves=10,
)


@pytest.mark.parametrize("kind", ["orjson", "msgpack"])
@pytest.mark.parametrize("value", [0, "", [], None, False, {}, {"a": [1, 2.5, "x"]}])
def test_round_trip_including_falsy(kind: str, value: Any) -> None:
    s = Serializer(kind)
    assert s.loads(s.dumps(value)) == value


@given(json_values)
def test_property_round_trip_signed_and_compressed(value: Any) -> None:
    s = Serializer("orjson", compress_threshold=8, hmac_key="k")
    assert s.loads(s.dumps(value)) == value
    m = Serializer("msgpack", compress_threshold=8)
    assert m.loads(m.dumps(value)) == value


def test_compression_above_threshold() -> None:
    s = Serializer("orjson", compress_threshold=100)
    small, big = s.dumps("x"), s.dumps("x" * 1000)
    assert small[:1] == b"j" and big[:1] == b"J" and len(big) < 100
    assert s.loads(big) == "x" * 1000


class Unserializable:
    pass


@pytest.mark.parametrize("kind", ["orjson", "msgpack"])
def test_unserializable_value_names_its_type(kind: str) -> None:
    with pytest.raises(SerializationError, match="Unserializable"):
        Serializer(kind).dumps({"nested": [Unserializable()]})


def test_hmac_rejects_tampering_and_other_keys() -> None:
    s = Serializer("orjson", hmac_key="secret")
    payload = bytearray(s.dumps({"a": 1}))
    payload[-2] ^= 1
    with pytest.raises(SerializationError, match="HMAC"):
        s.loads(bytes(payload))
    with pytest.raises(SerializationError, match="HMAC"):
        Serializer("orjson", hmac_key="other").loads(s.dumps(1))


def test_pickle_needs_explicit_opt_in_and_signature() -> None:
    with pytest.raises(SerializationError):
        Serializer("pickle")
    with pytest.raises(SerializationError):
        Serializer("pickle", allow_pickle=True)
    signed = Serializer("pickle", allow_pickle=True, hmac_key="k")
    assert signed.loads(signed.dumps({1, 2})) == {1, 2}
    # a pickle payload is never unpickled by a reader without allow_pickle
    evil = b"p" + b"\x80\x04K\x01."
    with pytest.raises(SerializationError, match="allow_pickle"):
        Serializer("orjson").loads(evil)
    with pytest.raises(ConfigError):
        from dbscale.config import load_config

        load_config(environ={}, primary="postgresql://u@h/db", cache={"allow_pickle": True})
    with pytest.raises(ValueError, match="hmac_key"):
        CacheConfig(allow_pickle=True)  # type: ignore[call-arg]


def test_corrupt_payload_is_serialization_error() -> None:
    with pytest.raises(SerializationError):
        Serializer("orjson").loads(b"j{not json")
    with pytest.raises(SerializationError):
        Serializer("orjson").loads(b"")


@given(st.integers(0, 10**13 - 1), st.integers(0, 10**8 - 1))
def test_header_round_trip(expires_ms: int, delta_ms: int) -> None:
    header = encode_header(expires_ms, delta_ms)
    assert len(header) == HEADER_LEN
    assert decode_header(header + b"j0") == (expires_ms, delta_ms)


def test_foreign_entry_rejected() -> None:
    with pytest.raises(SerializationError, match="header"):
        decode_header(b"plain value written by someone else")


@pytest.mark.parametrize("digits", [b"x" * 21, b"+" + b" " * 20, b"1_0" + b"0" * 18, b"-" + b"0" * 20])
def test_header_with_non_digits_is_serialization_error(digits: bytes) -> None:
    with pytest.raises(SerializationError, match="header"):
        decode_header(b"1" + digits + b"j1")


_core = CacheCore(CacheConfig.model_validate({"redis_url": None, "compress_threshold": 1}))


@given(st.binary(max_size=64))
def test_any_bytes_decode_or_raise_serialization_error(junk: bytes) -> None:
    for entry in (junk, encode_header(1, 1) + junk, encode_header(1, 1) + b"J" + junk):
        with contextlib.suppress(SerializationError):  # anything else would reach the caller
            _core.decode(entry)


def test_junk_compressed_payload_is_serialization_error() -> None:
    with pytest.raises(SerializationError, match="corrupt"):
        Serializer("orjson", compress_threshold=1).loads(b"Jnot zlib")


class _Name(str):
    """A str subclass as a dict key, like SQLAlchemy's ``quoted_name`` of a reflected column."""


@given(json_values)
def test_str_subclass_keys_encode_as_str(value: Any) -> None:
    def rename(v: Any) -> Any:
        if isinstance(v, dict):
            return {_Name(k): rename(x) for k, x in v.items()}
        if isinstance(v, list):
            return [rename(x) for x in v]
        return v

    ser = Serializer("orjson")
    assert ser.loads(ser.dumps(rename(value))) == ser.loads(ser.dumps(value))


def test_quoted_name_keys_of_a_reflected_row_can_be_cached() -> None:
    from sqlalchemy.sql.elements import quoted_name

    ser = Serializer("orjson")
    assert ser.loads(ser.dumps({quoted_name("Id", True): 1, "rows": [{quoted_name("n", None): 2}]})) == {
        "Id": 1,
        "rows": [{"n": 2}],
    }


@pytest.mark.parametrize("value", [{1: "a"}, [{"ok": {(1, 2): 3}}], {_Name("a"): {2.5: 1}}])
def test_non_str_keys_are_refused_not_silently_turned_into_strings(value: Any) -> None:
    with pytest.raises(SerializationError, match=r"with the key .* JSON keys are strings"):
        Serializer("orjson").dumps(value)


def test_unencodable_value_under_str_subclass_keys_names_its_type() -> None:
    with pytest.raises(SerializationError, match=r"builtins\.object"):
        Serializer("orjson").dumps({_Name("a"): object()})
