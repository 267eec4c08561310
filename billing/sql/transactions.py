"""Transactions repository: charges and refunds. Reads for users always carry the user_id."""
from __future__ import annotations

from decimal import Decimal
from uuid import UUID

import asyncpg

_COLUMNS = ("id, user_id, subscription_id, kind, parent_id, amount, currency, refunded_amount, status, reason, "
            "card_brand, card_last4, gateway_reference, decline_code, error_message, idempotency_key, metadata, "
            "created_at, updated_at")


async def create(conn: asyncpg.Connection, *, user_id: UUID, kind: str, amount: Decimal, currency: str,
                 status: str = "pending", subscription_id: UUID | None = None, parent_id: UUID | None = None,
                 reason: str | None = None, card_brand: str | None = None, card_last4: str | None = None,
                 idempotency_key: str | None = None, metadata: dict | None = None) -> asyncpg.Record | None:
    """Insert; None when (user_id, idempotency_key) already exists (the caller then reads that row)."""
    return await conn.fetchrow(
        f"""INSERT INTO transactions (user_id, subscription_id, kind, parent_id, amount, currency, status, reason,
                                      card_brand, card_last4, idempotency_key, metadata)
            VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)
            ON CONFLICT (user_id, idempotency_key) WHERE idempotency_key IS NOT NULL DO NOTHING
            RETURNING {_COLUMNS}""",
        user_id, subscription_id, kind, parent_id, amount, currency, status, reason,
        card_brand, card_last4, idempotency_key, metadata or {},
    )


async def get(conn: asyncpg.Connection, transaction_id: UUID, *, for_update: bool = False) -> asyncpg.Record | None:
    lock = " FOR UPDATE" if for_update else ""
    return await conn.fetchrow(f"SELECT {_COLUMNS} FROM transactions WHERE id = $1{lock}", transaction_id)


async def get_for_user(conn: asyncpg.Connection, transaction_id: UUID, user_id: UUID, *,
                       for_update: bool = False) -> asyncpg.Record | None:
    lock = " FOR UPDATE" if for_update else ""
    return await conn.fetchrow(
        f"SELECT {_COLUMNS} FROM transactions WHERE id = $1 AND user_id = $2{lock}", transaction_id, user_id)


async def get_by_key(conn: asyncpg.Connection, user_id: UUID, idempotency_key: str, *,
                     for_update: bool = False) -> asyncpg.Record | None:
    lock = " FOR UPDATE" if for_update else ""
    return await conn.fetchrow(
        f"SELECT {_COLUMNS} FROM transactions WHERE user_id = $1 AND idempotency_key = $2{lock}",
        user_id, idempotency_key)


async def list_for_user(conn: asyncpg.Connection, user_id: UUID, *, limit: int, offset: int) -> list[asyncpg.Record]:
    return await conn.fetch(
        f"""SELECT {_COLUMNS} FROM transactions WHERE user_id = $1
            ORDER BY created_at DESC, id DESC LIMIT $2 OFFSET $3""",
        user_id, limit, offset)


async def count_for_user(conn: asyncpg.Connection, user_id: UUID) -> int:
    return await conn.fetchval("SELECT count(*) FROM transactions WHERE user_id = $1", user_id)


async def blocking_charge(conn: asyncpg.Connection, subscription_id: UUID, *, since=None) -> asyncpg.Record | None:
    """A charge of this subscription that forbids another one: still pending (outcome unknown), or
    succeeded (or since refunded) at or after ``since`` (None: ever)."""
    return await conn.fetchrow(
        f"""SELECT {_COLUMNS} FROM transactions
            WHERE subscription_id = $1 AND kind = 'charge'
              AND (status = 'pending' OR (status <> 'failed' AND ($2::timestamptz IS NULL OR created_at >= $2)))
            ORDER BY created_at DESC LIMIT 1""",
        subscription_id, since)


async def pending_refunds(conn: asyncpg.Connection, charge_id: UUID) -> Decimal:
    return await conn.fetchval(
        "SELECT coalesce(sum(amount), 0) FROM transactions WHERE parent_id = $1 AND kind = 'refund' AND status = 'pending'",
        charge_id)


async def finish(conn: asyncpg.Connection, transaction_id: UUID, *, status: str, gateway_reference: str | None,
                 decline_code: str | None = None, error_message: str | None = None) -> asyncpg.Record:
    return await conn.fetchrow(
        f"""UPDATE transactions SET status = $2, gateway_reference = $3, decline_code = $4, error_message = $5
            WHERE id = $1 RETURNING {_COLUMNS}""",
        transaction_id, status, gateway_reference, decline_code, error_message)


async def add_refunded(conn: asyncpg.Connection, charge_id: UUID, amount: Decimal, status: str) -> asyncpg.Record:
    return await conn.fetchrow(
        f"""UPDATE transactions SET refunded_amount = refunded_amount + $2, status = $3
            WHERE id = $1 RETURNING {_COLUMNS}""",
        charge_id, amount, status)


async def lock_subscription_for_user(conn: asyncpg.Connection, subscription_id: UUID, user_id: UUID) -> asyncpg.Record | None:
    """The user's subscription with its plan's price, row-locked so charges for it run one at a time.
    (Lives here until the subscriptions repository offers it.)"""
    return await conn.fetchrow(
        """SELECT s.id, s.user_id, s.plan_id, s.status, s.past_due_since, p.price, p.currency
           FROM subscriptions s JOIN plans p ON p.id = s.plan_id
           WHERE s.id = $1 AND s.user_id = $2 FOR UPDATE OF s""",
        subscription_id, user_id)
