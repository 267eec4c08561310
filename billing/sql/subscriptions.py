"""Subscriptions repository. Every state change is written through `record_event`."""
from __future__ import annotations

from datetime import datetime
from typing import Any
from uuid import UUID

import asyncpg

LIVE_STATUSES = ("trial", "pending", "active", "past_due")

_COLUMNS = """id, user_id, plan_id, status, current_period_start, current_period_end, trial_end,
    cancel_at_period_end, canceled_at, ended_at, pending_plan_id, past_due_since, dunning_attempts,
    next_retry_at, billing_anchor, version, created_at, updated_at"""

# Columns `update` may set; anything else is a programming error.
_UPDATABLE = frozenset({
    "plan_id", "status", "current_period_start", "current_period_end", "trial_end", "cancel_at_period_end",
    "canceled_at", "ended_at", "pending_plan_id", "past_due_since", "dunning_attempts", "next_retry_at",
    "billing_anchor",
})


async def get(conn: asyncpg.Connection, subscription_id: UUID) -> asyncpg.Record | None:
    return await conn.fetchrow(f"SELECT {_COLUMNS} FROM subscriptions WHERE id = $1", subscription_id)


async def get_for_user(conn: asyncpg.Connection, subscription_id: UUID, user_id: UUID) -> asyncpg.Record | None:
    return await conn.fetchrow(
        f"SELECT {_COLUMNS} FROM subscriptions WHERE id = $1 AND user_id = $2", subscription_id, user_id)


async def get_live_for_user(conn: asyncpg.Connection, user_id: UUID) -> asyncpg.Record | None:
    return await conn.fetchrow(
        f"SELECT {_COLUMNS} FROM subscriptions WHERE user_id = $1 AND status = any($2::text[])",
        user_id, list(LIVE_STATUSES))


async def list_for_user(conn: asyncpg.Connection, user_id: UUID) -> list[asyncpg.Record]:
    return await conn.fetch(
        f"SELECT {_COLUMNS} FROM subscriptions WHERE user_id = $1 ORDER BY created_at DESC, id", user_id)


async def create(conn: asyncpg.Connection, *, user_id: UUID, plan_id: UUID, status: str,
                 current_period_start: datetime | None = None, current_period_end: datetime | None = None,
                 trial_end: datetime | None = None, billing_anchor: datetime | None = None,
                 created_at: datetime | None = None) -> asyncpg.Record:
    """Raises asyncpg.UniqueViolationError when the user already has a live subscription."""
    return await conn.fetchrow(
        f"""INSERT INTO subscriptions (user_id, plan_id, status, current_period_start, current_period_end,
                                       trial_end, billing_anchor, created_at, updated_at)
            VALUES ($1, $2, $3, $4, $5, $6, $7, coalesce($8, now()), coalesce($8, now()))
            RETURNING {_COLUMNS}""",
        user_id, plan_id, status, current_period_start, current_period_end, trial_end, billing_anchor, created_at)


async def lock(conn: asyncpg.Connection, subscription_id: UUID, user_id: UUID | None = None) -> asyncpg.Record | None:
    """The row, locked until the transaction ends (SELECT ... FOR UPDATE); scoped to a user when given."""
    if user_id is None:
        return await conn.fetchrow(f"SELECT {_COLUMNS} FROM subscriptions WHERE id = $1 FOR UPDATE", subscription_id)
    return await conn.fetchrow(
        f"SELECT {_COLUMNS} FROM subscriptions WHERE id = $1 AND user_id = $2 FOR UPDATE", subscription_id, user_id)


async def update(conn: asyncpg.Connection, subscription_id: UUID, **changes: Any) -> asyncpg.Record:
    unknown = set(changes) - _UPDATABLE
    if unknown:
        raise ValueError(f"not updatable: {sorted(unknown)}")
    names = list(changes)
    assignments = ", ".join(f"{name} = ${i + 2}" for i, name in enumerate(names))
    sets = f"{assignments}, version = version + 1" if names else "version = version + 1"
    return await conn.fetchrow(
        f"UPDATE subscriptions SET {sets} WHERE id = $1 RETURNING {_COLUMNS}",
        subscription_id, *(changes[n] for n in names))


ENTITLEMENTS_CHANNEL = "billing_entitlements"


async def record_event(conn: asyncpg.Connection, subscription_id: UUID, event_type: str, from_status: str | None,
                       to_status: str | None, data: dict, correlation_id: str | None, *,
                       at: datetime | None = None) -> asyncpg.Record:
    """Append to the subscription's event log: the one place every state change goes through
    (so whatever must follow a change, such as outbound webhooks, hooks in here).

    `at` is the injected clock's time when the caller has one (a test clock moves it).
    """
    # Delivered by PostgreSQL only when the transaction commits: API processes drop the user's
    # cached usage entitlement then (billing.metering.Meter.listen), never before.
    await conn.execute("SELECT pg_notify($1, user_id::text) FROM subscriptions WHERE id = $2",
                       ENTITLEMENTS_CHANNEL, subscription_id)
    return await conn.fetchrow(
        """INSERT INTO subscription_events (subscription_id, event_type, from_status, to_status, data,
                                            correlation_id, created_at)
           VALUES ($1, $2, $3, $4, $5, $6, coalesce($7, clock_timestamp()))
           RETURNING id, subscription_id, event_type, from_status, to_status, data, correlation_id, created_at""",
        subscription_id, event_type, from_status, to_status, data, correlation_id, at)


async def list_events(conn: asyncpg.Connection, subscription_id: UUID) -> list[asyncpg.Record]:
    return await conn.fetch(
        """SELECT id, subscription_id, event_type, from_status, to_status, data, correlation_id, created_at
           FROM subscription_events WHERE subscription_id = $1 ORDER BY seq""", subscription_id)


# Plan-change events: a request, then what became of it.
_PLAN_CHANGE_OPEN = ("plan_change_requested", "upgrade_payment_requested")
_PLAN_CHANGE_EVENTS = _PLAN_CHANGE_OPEN + (
    "plan_change_scheduled", "plan_change_rejected", "change_plan", "upgrade_payment_failed")


async def plan_change_in_flight(conn: asyncpg.Connection, subscription_id: UUID, since: datetime) -> bool:
    """True when the latest plan-change event since `since` is a request not yet resolved
    (a second upgrade now would charge twice)."""
    latest = await conn.fetchval(
        """SELECT event_type FROM subscription_events
           WHERE subscription_id = $1 AND event_type = any($2::text[]) AND created_at >= $3
           ORDER BY seq DESC LIMIT 1""", subscription_id, list(_PLAN_CHANGE_EVENTS), since)
    return latest in _PLAN_CHANGE_OPEN
