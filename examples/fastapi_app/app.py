"""A users service on dbscale: cached reads, read-your-writes carried by header/cookie, /metrics."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI, HTTPException
from sqlalchemy import insert, select

import dbscale
from dbscale.integrations.starlette import CausalTokenMiddleware, lifespan, metrics_endpoint

from .models import UserIn, users


def create_app(cluster: dbscale.AsyncCluster) -> FastAPI:
    app = FastAPI(lifespan=lifespan(cluster))
    app.add_middleware(CausalTokenMiddleware, cluster=cluster)
    app.add_route("/metrics", metrics_endpoint(cluster))

    @cluster.cache.cached(ttl=300, key="user:{user_id}")
    async def load_user(user_id: int) -> dict[str, Any] | None:
        async with cluster.read() as conn:  # a replica that has replayed the caller's token, or the primary
            row = (await conn.execute(select(users).where(users.c.id == user_id))).first()
            return None if row is None else {"id": row.id, "name": row.name, "email": row.email}

    @app.post("/users", status_code=201)
    async def create_user(user: UserIn) -> dict[str, Any]:
        async with cluster.write() as conn:
            result = await conn.execute(insert(users).values(**user.model_dump()).returning(users.c.id))
            user_id: int = result.scalar_one()
        await load_user.invalidate(user_id)
        return {"id": user_id, **user.model_dump()}

    @app.get("/users/{user_id}")
    async def get_user(user_id: int) -> dict[str, Any]:
        user: dict[str, Any] | None = await load_user(user_id)
        if user is None:
            raise HTTPException(404, f"no user {user_id}")
        return user

    return app
