"""Helpers for the usage tests: subscriptions inserted directly, tokens at the test clock's time."""
from __future__ import annotations

from datetime import datetime, timedelta
from uuid import UUID

from billing import auth
from billing.plans import BillingCycle, add_cycle


async def subscribe(pool, user_id, slug: str = "basic", *, status: str = "active", start: datetime,
                    end: datetime | None = None) -> UUID:
    """A live subscription row: [start, end) defaults to one cycle of the plan (the trial for status trial)."""
    async with pool.acquire() as conn:
        plan = await conn.fetchrow("SELECT id, billing_cycle, trial_days FROM plans WHERE slug = $1", slug)
        if end is None:
            end = (start + timedelta(days=plan["trial_days"]) if status == "trial"
                   else add_cycle(start, BillingCycle(plan["billing_cycle"])))
        return await conn.fetchval(
            """INSERT INTO subscriptions (user_id, plan_id, status, current_period_start, current_period_end, trial_end)
               VALUES ($1, $2, $3, $4, $5, $6) RETURNING id""",
            UUID(str(user_id)), plan["id"], status, start, end, end if status == "trial" else None,
        )


def headers_at(settings, clock, user_id) -> dict:
    """A fresh bearer token at the clock's current time (tokens expire when the clock jumps months)."""
    token = auth.create_token(UUID(str(user_id)), settings.jwt_secret.get_secret_value(), now=clock.now(),
                              expires_in=timedelta(hours=1))
    return {"Authorization": f"Bearer {token}"}
