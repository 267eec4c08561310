"""Helpers for the payment tests: subscriptions made directly in SQL (the subscriptions API is
another module) and a gateway that counts its calls."""
from __future__ import annotations

from decimal import Decimal
from uuid import UUID

from billing.payments import MockGateway

VISA = "4242424242424242"
DECLINE_ALWAYS = "4000000000000341"


class CountingGateway(MockGateway):
    def __init__(self) -> None:
        self.charges: list[str | None] = []   # idempotency keys of charge / charge_token calls
        self.refunds: list[str | None] = []

    def charge(self, card_number, amount, now, idempotency_key=None):
        self.charges.append(idempotency_key)
        return super().charge(card_number, amount, now, idempotency_key)

    def charge_token(self, token, amount, now, idempotency_key=None):
        self.charges.append(idempotency_key)
        return super().charge_token(token, amount, now, idempotency_key)

    def refund(self, gateway_reference, amount, now, idempotency_key=None):
        self.refunds.append(idempotency_key)
        return super().refund(gateway_reference, amount, now, idempotency_key)


async def make_subscription(pool, user_id, *, plan: str = "basic", status: str = "pending", past_due_since=None) -> UUID:
    plan_id = await pool.fetchval("SELECT id FROM plans WHERE slug = $1", plan)
    return await pool.fetchval(
        "INSERT INTO subscriptions (user_id, plan_id, status, past_due_since) VALUES ($1, $2, $3, $4) RETURNING id",
        UUID(str(user_id)), plan_id, status, past_due_since)


def payment_body(subscription_id, number: str = VISA, /, *, amount: str = "9.99", currency: str = "USD", **overrides) -> dict:
    body = {"subscription_id": str(subscription_id), "amount": amount, "currency": currency, "card_number": number,
            "card_expiry": "12/30", "card_cvv": "1234" if number.startswith(("34", "37")) else "123",
            "cardholder_name": "Ada Lovelace"}
    body.update(overrides)
    return body


async def outbox(pool, family: str | None = None) -> list[dict]:
    import json
    rows = await pool.fetch("SELECT stream, action, fields FROM outbox ORDER BY id")
    out = []
    for r in rows:
        fields = r["fields"] if isinstance(r["fields"], dict) else json.loads(r["fields"])
        if family is None or r["stream"].endswith(":" + family):
            out.append({"stream": r["stream"], "action": r["action"], "payload": json.loads(fields["payload"]),
                        "fields": fields})
    return out


async def all_rows_text(pool) -> str:
    """Every row of every table of the test schema, as text (to search for leaked secrets)."""
    tables = await pool.fetch("SELECT table_name FROM information_schema.tables WHERE table_schema = current_schema()")
    parts = []
    for t in tables:
        parts += [r[0] for r in await pool.fetch(f'SELECT row_to_json(x)::text FROM "{t["table_name"]}" x')]
    return "\n".join(parts)


def money(value) -> Decimal:
    return Decimal(str(value))
