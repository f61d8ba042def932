"""Tables and request bodies of the example users service (not counted in its 35 lines)."""

from __future__ import annotations

from pydantic import BaseModel
from sqlalchemy import Column, Identity, Integer, MetaData, Table, Text

metadata = MetaData()
users = Table(
    "example_users",
    metadata,
    Column("id", Integer, Identity(), primary_key=True),
    Column("name", Text, nullable=False),
    Column("email", Text, nullable=False),
)


class UserIn(BaseModel):
    name: str
    email: str
