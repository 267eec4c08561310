"""Plans repository and the demo catalog seed."""
from __future__ import annotations

from uuid import UUID

import asyncpg

from billing.money import Money
from billing.plans import DEMO_PLANS, Plan

_COLUMNS = "id, slug, name, description, price, currency, billing_cycle, trial_days, features, is_active, created_at, updated_at"

_DESCRIPTIONS = {
    "trial": "Try everything for 14 days, no card needed",
    "basic": "For individuals",
    "pro": "For growing teams",
    "pro-yearly": "Pro, billed yearly: two months free",
}


async def seed_demo(conn: asyncpg.Connection) -> None:
    """Upsert the demo plans by slug, so seeding twice changes nothing."""
    for plan in DEMO_PLANS:
        await conn.execute(
            """INSERT INTO plans (slug, name, description, price, currency, billing_cycle, trial_days, features)
               VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
               ON CONFLICT (slug) DO UPDATE SET name = EXCLUDED.name, description = EXCLUDED.description,
                   price = EXCLUDED.price, currency = EXCLUDED.currency, billing_cycle = EXCLUDED.billing_cycle,
                   trial_days = EXCLUDED.trial_days, features = EXCLUDED.features""",
            plan.id, plan.name, _DESCRIPTIONS.get(plan.id, ""), plan.price.amount, plan.price.currency,
            plan.billing_cycle.value, plan.trial_days, dict(plan.features),
        )


async def list_active(conn: asyncpg.Connection) -> list[asyncpg.Record]:
    return await conn.fetch(f"SELECT {_COLUMNS} FROM plans WHERE is_active ORDER BY price, name")


async def get(conn: asyncpg.Connection, plan_id: UUID) -> asyncpg.Record | None:
    return await conn.fetchrow(f"SELECT {_COLUMNS} FROM plans WHERE id = $1", plan_id)


async def get_by_slug(conn: asyncpg.Connection, slug: str) -> asyncpg.Record | None:
    return await conn.fetchrow(f"SELECT {_COLUMNS} FROM plans WHERE slug = $1", slug)


def to_domain(row: asyncpg.Record) -> Plan:
    """The pure Plan of a row; its id is the slug (the pure layer knows nothing of UUIDs)."""
    return Plan(id=row["slug"], name=row["name"], price=Money.of(row["price"], row["currency"].strip()),
                billing_cycle=row["billing_cycle"], trial_days=row["trial_days"], features=row["features"])
