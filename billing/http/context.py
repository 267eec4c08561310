"""Typed keys for what an app holds, and small accessors handlers use."""
from __future__ import annotations

from uuid import UUID

import asyncpg
import redis.asyncio as aioredis
from aiohttp import web

from billing.clock import Clock
from billing.config import Settings
from billing.http.errors import NotFound, Unauthorized

SETTINGS = web.AppKey("settings", Settings)
CLOCK = web.AppKey("clock", Clock)
POOL = web.AppKey("pool", asyncpg.Pool)
REDIS = web.AppKey("redis", aioredis.Redis)
SERVICE = web.AppKey("service", str)


def user_id(request: web.Request) -> UUID:
    """The authenticated user; the auth middleware has already refused anonymous callers."""
    value = request.get("user_id")
    if value is None:
        raise Unauthorized("authentication required")
    return value


def path_uuid(request: web.Request, name: str = "id") -> UUID:
    # An id that is not even a UUID names nothing: 404, like an id that does not exist.
    try:
        return UUID(request.match_info[name])
    except ValueError:
        raise NotFound(f"no such {name}") from None
