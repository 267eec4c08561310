"""Shared fixtures. Every test gets its own PostgreSQL schema and Redis key prefix on the real
servers (127.0.0.1:5432 database `test`, 127.0.0.1:6379), so tests and parallel runs never collide."""
from __future__ import annotations

import os
import uuid

import asyncpg
import pytest
import redis.asyncio as aioredis

from billing.clock import SystemClock
from billing.config import Settings
from billing.http.app import create_app
from billing.sql import connect, migrate

PG_URL = os.environ.get("TEST_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/test")
REDIS_URL = os.environ.get("TEST_REDIS_URL", "redis://127.0.0.1:6379/0")


def make_settings(tag: str, **overrides) -> Settings:
    values = dict(database_url=PG_URL, redis_url=REDIS_URL, database_schema=f"t_{tag}", redis_prefix=f"t{tag}",
                  bcrypt_rounds=4, environment="development", log_json=True)
    values.update(overrides)
    return Settings(_env_file=None, **values)


async def create_schema(settings: Settings) -> None:
    admin = await asyncpg.connect(PG_URL)
    try:
        await admin.execute(f"CREATE SCHEMA {settings.database_schema}")
    finally:
        await admin.close()
    conn = await connect(PG_URL, settings.database_schema)
    try:
        await migrate(conn)
        try:
            from billing.sql import plans
            await plans.seed_demo(conn)
        except ImportError:  # the plans catalog is not there yet
            pass
    finally:
        await conn.close()


async def drop_schema(settings: Settings) -> None:
    admin = await asyncpg.connect(PG_URL)
    try:
        await admin.execute(f"DROP SCHEMA IF EXISTS {settings.database_schema} CASCADE")
    finally:
        await admin.close()
    client = aioredis.from_url(REDIS_URL)
    try:
        keys = [k async for k in client.scan_iter(match=f"{settings.redis_prefix}:*", count=1000)]
        if keys:
            await client.delete(*keys)
    finally:
        await client.aclose()


@pytest.fixture
async def settings():
    s = make_settings(uuid.uuid4().hex[:10])
    await create_schema(s)
    yield s
    await drop_schema(s)


@pytest.fixture
async def pool(settings):
    from billing.sql import pool_for
    p = await pool_for(settings)
    yield p
    await p.close()


@pytest.fixture
async def redis(settings):
    client = aioredis.from_url(settings.redis_url, decode_responses=True)
    yield client
    await client.aclose()


@pytest.fixture
def clock():
    return SystemClock()


@pytest.fixture
async def sub_client(aiohttp_client, settings, clock):
    return await aiohttp_client(create_app(settings, "subscriptions", clock=clock))


@pytest.fixture
async def pay_client(aiohttp_client, settings, clock):
    return await aiohttp_client(create_app(settings, "payments", clock=clock))


async def register(client, email: str | None = None, password: str = "s3cure-Passw0rd") -> dict:
    """Register a user; returns {token, user, headers}."""
    email = email or f"user-{uuid.uuid4().hex[:8]}@example.com"
    resp = await client.post("/v1/auth/register", json={"email": email, "password": password})
    body = await resp.json()
    assert resp.status == 201, body
    token = body["data"]["access_token"]
    return {"token": token, "user": body["data"]["user"], "email": email, "password": password,
            "headers": {"Authorization": f"Bearer {token}"}}


@pytest.fixture
def register_user():
    return register
