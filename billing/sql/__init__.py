"""PostgreSQL access: the pool, numbered migrations, and the repositories beside this file."""
from __future__ import annotations

import json
from decimal import Decimal
from importlib import resources
from typing import Any

import asyncpg

MIGRATIONS_LOCK = "billing.migrations"
PREFIX_SETTING = "billing.redis_prefix"


def _json_default(value: Any) -> Any:
    if isinstance(value, Decimal):
        return str(value)  # money stays exact in jsonb
    if hasattr(value, "isoformat"):
        return value.isoformat()
    return str(value)


def dumps(value: Any) -> str:
    return json.dumps(value, default=_json_default)


async def _init_connection(conn: asyncpg.Connection) -> None:
    for name in ("json", "jsonb"):
        await conn.set_type_codec(name, encoder=dumps, decoder=json.loads, schema="pg_catalog")


def _server_settings(schema: str, redis_prefix: str | None) -> dict[str, str]:
    # A connection knows its deployment: the schema (search_path) and the Redis key prefix, which
    # code writing outbox rows reads with redis_prefix(conn) instead of threading it everywhere.
    settings = {"search_path": schema, "timezone": "UTC"}
    if redis_prefix:
        settings[PREFIX_SETTING] = redis_prefix
    return settings


async def create_pool(database_url: str, schema: str = "public", *, redis_prefix: str | None = None,
                      min_size: int = 1, max_size: int = 10) -> asyncpg.Pool:
    return await asyncpg.create_pool(
        database_url,
        min_size=min_size,
        max_size=max_size,
        init=_init_connection,
        server_settings=_server_settings(schema, redis_prefix),
        command_timeout=30,
    )


async def connect(database_url: str, schema: str = "public", *, redis_prefix: str | None = None) -> asyncpg.Connection:
    conn = await asyncpg.connect(database_url, server_settings=_server_settings(schema, redis_prefix))
    await _init_connection(conn)
    return conn


async def pool_for(settings, *, max_size: int | None = None) -> asyncpg.Pool:
    """The pool of a deployment (billing.config.Settings): its schema and its Redis prefix."""
    return await create_pool(settings.database_url, settings.database_schema, redis_prefix=settings.redis_prefix,
                             max_size=max_size or settings.database_pool_size)


async def connect_for(settings) -> asyncpg.Connection:
    return await connect(settings.database_url, settings.database_schema, redis_prefix=settings.redis_prefix)


async def redis_prefix(conn: asyncpg.Connection) -> str:
    prefix = await conn.fetchval("SELECT current_setting($1, true)", PREFIX_SETTING)
    if not prefix:
        raise RuntimeError("this connection was not opened with pool_for/connect_for: no Redis prefix")
    return prefix


def migration_files() -> list[tuple[int, str, str]]:
    """(version, name, sql) of every numbered file in billing/sql/migrations, in order."""
    found = []
    for entry in resources.files("billing.sql").joinpath("migrations").iterdir():
        if entry.name.endswith(".sql"):
            version = int(entry.name.split("_", 1)[0])
            found.append((version, entry.name, entry.read_text()))
    found.sort()
    versions = [v for v, _, _ in found]
    if len(versions) != len(set(versions)):
        raise RuntimeError(f"duplicate migration numbers: {versions}")
    return found


async def migrate(conn: asyncpg.Connection) -> list[str]:
    """Apply pending migrations, each in its own transaction, under an advisory lock.

    The lock is per schema, so two processes starting at once never apply the same file twice,
    while parallel tests (one schema each) do not wait for each other.
    """
    schema = await conn.fetchval("SELECT current_schema()")
    if schema is None:  # search_path names a schema that does not exist yet
        raise RuntimeError("the configured schema does not exist")
    await conn.execute("SELECT pg_advisory_lock(hashtext($1 || current_schema()))", MIGRATIONS_LOCK)
    try:
        await conn.execute(
            """CREATE TABLE IF NOT EXISTS schema_migrations (
                   version integer PRIMARY KEY,
                   name text NOT NULL,
                   applied_at timestamptz NOT NULL DEFAULT now())"""
        )
        done = {r["version"] for r in await conn.fetch("SELECT version FROM schema_migrations")}
        applied = []
        for version, name, sql in migration_files():
            if version in done:
                continue
            async with conn.transaction():
                await conn.execute(sql)
                await conn.execute("INSERT INTO schema_migrations (version, name) VALUES ($1, $2)", version, name)
            applied.append(name)
        return applied
    finally:
        await conn.execute("SELECT pg_advisory_unlock(hashtext($1 || current_schema()))", MIGRATIONS_LOCK)
