"""Helpers for scheduler and invoice tests: rows straight in the database, commands read from the outbox."""
from __future__ import annotations

import json
import uuid
from datetime import datetime
from decimal import Decimal

from billing.commands import ChargeSubscription
from billing.streams import Envelope


async def make_user(pool) -> uuid.UUID:
    return await pool.fetchval("INSERT INTO users (email, password_hash) VALUES ($1, 'x') RETURNING id",
                               f"u-{uuid.uuid4().hex[:10]}@example.com")


async def plan_id(pool, slug: str) -> uuid.UUID:
    return await pool.fetchval("SELECT id FROM plans WHERE slug = $1", slug)


async def make_subscription(pool, *, plan: str = "basic", status: str = "active", user_id=None,
                            created_at: datetime | None = None, **columns) -> dict:
    user_id = user_id or await make_user(pool)
    values = {"user_id": user_id, "plan_id": await plan_id(pool, plan), "status": status, **columns}
    if created_at is not None:
        values["created_at"] = created_at
    names = list(values)
    row = await pool.fetchrow(
        f"INSERT INTO subscriptions ({', '.join(names)}) VALUES ({', '.join(f'${i}' for i in range(1, len(names) + 1))})"
        " RETURNING *", *values.values())
    return dict(row)


async def subscription(pool, sub_id) -> dict:
    return dict(await pool.fetchrow("SELECT * FROM subscriptions WHERE id = $1", sub_id))


async def charges(pool) -> list[tuple[str, ChargeSubscription]]:
    """(stream, command) of every ChargeSubscription in the outbox, oldest first."""
    out = []
    for row in await pool.fetch("SELECT stream, fields FROM outbox WHERE action = 'charge_subscription' ORDER BY id"):
        fields = row["fields"] if isinstance(row["fields"], dict) else json.loads(row["fields"])
        out.append((row["stream"], ChargeSubscription.model_validate(Envelope.from_fields(fields).payload)))
    return out


async def events(pool, sub_id) -> list[str]:
    return [r["event_type"] for r in await pool.fetch(
        "SELECT event_type FROM subscription_events WHERE subscription_id = $1 ORDER BY seq", sub_id)]


async def make_charge(pool, user_id, sub_id, amount: str, reason: str, currency: str = "USD") -> uuid.UUID:
    """A succeeded charge row, as payments would have written it."""
    return await pool.fetchval(
        """INSERT INTO transactions (user_id, subscription_id, kind, amount, currency, status, reason)
           VALUES ($1, $2, 'charge', $3, $4, 'succeeded', $5) RETURNING id""",
        user_id, sub_id, Decimal(amount), currency, reason)
