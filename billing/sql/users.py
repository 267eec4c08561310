"""Users repository."""
from __future__ import annotations

from uuid import UUID

import asyncpg

_COLUMNS = "id, email, first_name, last_name, is_active, created_at, updated_at"


class EmailTaken(Exception):
    pass


async def create(conn: asyncpg.Connection, *, email: str, password_hash: str, first_name: str | None, last_name: str | None) -> asyncpg.Record:
    try:
        return await conn.fetchrow(
            f"""INSERT INTO users (email, password_hash, first_name, last_name)
                VALUES ($1, $2, $3, $4) RETURNING {_COLUMNS}""",
            email, password_hash, first_name, last_name,
        )
    except asyncpg.UniqueViolationError as exc:
        raise EmailTaken(email) from exc


async def get(conn: asyncpg.Connection, user_id: UUID) -> asyncpg.Record | None:
    return await conn.fetchrow(f"SELECT {_COLUMNS} FROM users WHERE id = $1", user_id)


async def get_credentials(conn: asyncpg.Connection, email: str) -> asyncpg.Record | None:
    return await conn.fetchrow(
        "SELECT id, password_hash, is_active FROM users WHERE lower(email) = lower($1)", email
    )
