"""Saved payment methods (cards as brand, last4, expiry and a gateway token)."""
from __future__ import annotations

from uuid import UUID

import asyncpg

_COLUMNS = "id, user_id, brand, last4, exp_month, exp_year, gateway_token, is_default, created_at, updated_at"


async def create_default(conn: asyncpg.Connection, *, user_id: UUID, brand: str, last4: str, exp_month: int,
                         exp_year: int, gateway_token: str) -> asyncpg.Record:
    """Attach a card as the user's default. Call inside a transaction: the old default is demoted first."""
    await conn.execute("UPDATE payment_methods SET is_default = false WHERE user_id = $1 AND is_default", user_id)
    return await conn.fetchrow(
        f"""INSERT INTO payment_methods (user_id, brand, last4, exp_month, exp_year, gateway_token, is_default)
            VALUES ($1, $2, $3, $4, $5, $6, true) RETURNING {_COLUMNS}""",
        user_id, brand, last4, exp_month, exp_year, gateway_token,
    )


async def get_default(conn: asyncpg.Connection, user_id: UUID) -> asyncpg.Record | None:
    return await conn.fetchrow(f"SELECT {_COLUMNS} FROM payment_methods WHERE user_id = $1 AND is_default", user_id)


async def list_for_user(conn: asyncpg.Connection, user_id: UUID) -> list[asyncpg.Record]:
    return await conn.fetch(
        f"SELECT {_COLUMNS} FROM payment_methods WHERE user_id = $1 ORDER BY is_default DESC, created_at DESC, id",
        user_id,
    )
