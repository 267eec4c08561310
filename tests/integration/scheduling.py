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


# -- driving the real actors without a Redis consumer ----------------------------------------------------

async def run_actors(deps) -> int:
    """Deliver every outbox message to the payments and subscriptions actors' handlers, in order, until
    nothing new is produced (what the workers do through Redis). Gateway webhook deliveries to 8001 are
    skipped: they carry the same outcome as the subscription_update command (the inbox dedups them)."""
    from billing.consumers import payments, subscriptions

    routers = {deps.stream(family): router for module in (payments, subscriptions)
               for family, router in module.build_routers(deps).items()}
    delivered = 0
    while True:
        rows = await deps.pool.fetch(
            """UPDATE outbox SET published_at = now() WHERE published_at IS NULL
               RETURNING id, stream, fields""")
        if not rows:
            return delivered
        for row in sorted(rows, key=lambda r: r["id"]):
            if row["stream"] not in routers:
                continue
            fields = row["fields"] if isinstance(row["fields"], dict) else json.loads(row["fields"])
            envelope = Envelope.from_fields(fields)
            route, payload = routers[row["stream"]].resolve(envelope)
            await route.handler(envelope, payload)
            delivered += 1


CARD_OK = "4242424242424242"
CARD_CHARGE_FAILS = "4000000000000341"  # attaches fine, every charge is declined


def card(number: str) -> dict:
    return {"card_number": number, "card_expiry": "12/39", "card_cvv": "123", "cardholder_name": "Ada Lovelace"}


async def post(client, path, user, body) -> dict:
    resp = await client.post(path, json=body, headers={**user["headers"], "Idempotency-Key": uuid.uuid4().hex})
    data = await resp.json()
    assert resp.status in (200, 201, 202), data
    return data["data"]


async def subscribe_and_pay(sub_client, pay_client, user, plan: str = "basic") -> dict:
    sub = await post(sub_client, "/v1/subscriptions/", user, {"plan_id": plan})
    await post(pay_client, "/v1/payments/process", user, {
        "subscription_id": sub["id"], "amount": sub["amount_due"], "currency": sub["currency"],
        "save_payment_method": True, **card(CARD_OK)})
    return sub
