"""libpq_conninfo reads a configured URL as SQLAlchemy does, without importing it."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st
from psycopg.conninfo import conninfo_to_dict
from sqlalchemy.engine import make_url

from dbscale.config import libpq_conninfo


def sqlalchemy_rendered(url: str) -> str:
    """What libpq_conninfo did before it stopped importing SQLAlchemy."""
    return make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


@pytest.mark.parametrize(
    "url",
    [
        "postgresql+psycopg://u:pa/ss@h:5/db",  # a raw "/" in the password: still the password, not the host
        "postgresql://u:pa#ss@h:5/db",
        "postgresql://u:p%40ss@h:5/db?sslmode=disable&application_name=a b",
        "postgres://u@[::1]:5432/db",
        "postgresql://u@/db?host=/tmp/socket&port=6000",
        "postgresql://h/db",
        "postgresql+psycopg://u:@h:5/db?connect_timeout=3&application_name=b&application_name=a",
        "postgresql://u:p:w@h",
    ],
)
def test_the_same_connection_as_sqlalchemy_renders(url: str) -> None:
    assert libpq_conninfo(url) == sqlalchemy_rendered(url)
    assert conninfo_to_dict(libpq_conninfo(url)) == conninfo_to_dict(sqlalchemy_rendered(url))


secrets = st.text(alphabet=st.characters(codec="ascii", exclude_characters="\x00\r\n"), max_size=12)


@given(user=secrets.filter(lambda s: ":" not in s and "/" not in s and "@" not in s), password=secrets)
def test_any_user_and_password_reach_libpq_as_sqlalchemy_reads_them(user: str, password: str) -> None:
    url = f"postgresql+psycopg://{user}:{password}@db.example:5433/app"
    assert libpq_conninfo(url) == sqlalchemy_rendered(url)


def test_a_bad_port_is_a_value_error_as_before() -> None:
    with pytest.raises(ValueError):
        libpq_conninfo("postgresql://u@h:port/db")
    with pytest.raises(ValueError):
        sqlalchemy_rendered("postgresql://u@h:port/db")
