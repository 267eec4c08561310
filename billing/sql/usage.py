"""Usage repository: the live entitlement of a user and the per-period usage counters' durable copy."""
from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import datetime
from uuid import UUID

import asyncpg

# Statuses that keep access to the plan's features. past_due keeps it, like Stripe during dunning:
# the customer is being retried, not cut off; cancellation/expiry ends it.
LIVE_STATUSES = ("trial", "active", "past_due")


async def get_entitlement(conn: asyncpg.Connection, user_id: UUID) -> asyncpg.Record | None:
    """The user's live subscription with its plan's cycle and features, or None."""
    return await conn.fetchrow(
        """SELECT s.id AS subscription_id, s.status, s.current_period_start, s.current_period_end, s.trial_end,
                  s.created_at, p.id AS plan_id, p.slug AS plan_slug, p.billing_cycle, p.features
           FROM subscriptions s JOIN plans p ON p.id = s.plan_id
           WHERE s.user_id = $1 AND s.status = ANY($2::text[])
           ORDER BY s.created_at DESC LIMIT 1""",
        user_id, list(LIVE_STATUSES),
    )


async def used_in_period(conn: asyncpg.Connection, user_id: UUID, features: Sequence[str],
                         period_start: datetime) -> dict[str, int]:
    rows = await conn.fetch(
        "SELECT feature_name, used FROM usage WHERE user_id = $1 AND feature_name = ANY($2::text[]) AND period_start = $3",
        user_id, list(features), period_start,
    )
    return {r["feature_name"]: r["used"] for r in rows}


async def list_for_user(conn: asyncpg.Connection, user_id: UUID) -> list[asyncpg.Record]:
    return await conn.fetch(
        "SELECT feature_name, period_start, reset_at, used FROM usage WHERE user_id = $1 ORDER BY period_start, feature_name",
        user_id,
    )


async def add_many(conn: asyncpg.Connection,
                   rows: Iterable[tuple[UUID, UUID | None, str, datetime, datetime, int]]) -> None:
    """Add `used` to each (user, subscription, feature, period_start, reset_at, used) row, creating it at 0 first.

    Rows are written in key order, so two concurrent batches never deadlock on each other.
    """
    rows = sorted(rows, key=lambda r: (str(r[0]), r[2], r[3]))
    if not rows:
        return
    columns = list(zip(*rows))
    await conn.execute(
        """INSERT INTO usage (user_id, subscription_id, feature_name, period_start, reset_at, used)
           SELECT * FROM unnest($1::uuid[], $2::uuid[], $3::text[], $4::timestamptz[], $5::timestamptz[], $6::bigint[])
           ON CONFLICT (user_id, feature_name, period_start) DO UPDATE
           SET used = usage.used + EXCLUDED.used, reset_at = EXCLUDED.reset_at,
               subscription_id = COALESCE(EXCLUDED.subscription_id, usage.subscription_id)""",
        *(list(c) for c in columns),
    )


async def delete_ended_before(conn: asyncpg.Connection, before: datetime) -> int:
    status = await conn.execute("DELETE FROM usage WHERE reset_at < $1", before)
    return int(status.split()[-1])
