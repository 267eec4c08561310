"""Queries of the scheduler: which subscriptions are due at ``now``, and the marks it leaves on them.

Every ``lock_due_*`` locks its rows FOR UPDATE SKIP LOCKED: two schedulers (say the leader lost its lock
while still ticking) take disjoint rows, and a row one of them has already handled no longer matches
once that transaction commits (PostgreSQL rechecks the WHERE on the newest row version).
"""
from __future__ import annotations

from datetime import datetime
from typing import Any, Sequence
from uuid import UUID

import asyncpg

_SUB = ("s.id, s.user_id, s.plan_id, s.status, s.current_period_start, s.current_period_end, s.trial_end,"
        " s.cancel_at_period_end, s.pending_plan_id, s.dunning_attempts, s.next_retry_at, s.billing_anchor, s.created_at")

# The scheduler's own marks (migration 006); state changes go through billing.sql.subscriptions.
_MARKS = frozenset({"renewal_requested_for", "retry_requested_attempt", "conversion_requested_at"})


async def lock_due_trials(conn: asyncpg.Connection, now: datetime, limit: int, skip: Sequence[UUID]) -> list[asyncpg.Record]:
    """Trials that have ended and whose conversion charge was not asked for yet."""
    return await conn.fetch(
        f"""SELECT {_SUB} FROM subscriptions s
            WHERE s.status = 'trial' AND s.trial_end <= $1 AND s.conversion_requested_at IS NULL
              AND NOT (s.id = any($3::uuid[]))
            ORDER BY s.trial_end LIMIT $2 FOR UPDATE SKIP LOCKED""",
        now, limit, list(skip),
    )


async def lock_due_period_ends(conn: asyncpg.Connection, now: datetime, limit: int, skip: Sequence[UUID]) -> list[asyncpg.Record]:
    """Active subscriptions whose period has ended and whose renewal was not asked for yet."""
    return await conn.fetch(
        f"""SELECT {_SUB} FROM subscriptions s
            WHERE s.status = 'active' AND s.current_period_end <= $1
              AND s.renewal_requested_for IS DISTINCT FROM s.current_period_end
              AND NOT (s.id = any($3::uuid[]))
            ORDER BY s.current_period_end LIMIT $2 FOR UPDATE SKIP LOCKED""",
        now, limit, list(skip),
    )


async def lock_due_retries(conn: asyncpg.Connection, now: datetime, limit: int, skip: Sequence[UUID]) -> list[asyncpg.Record]:
    """Past-due subscriptions whose next dunning retry is due and not asked for yet."""
    return await conn.fetch(
        f"""SELECT {_SUB} FROM subscriptions s
            WHERE s.status = 'past_due' AND s.next_retry_at <= $1
              AND s.retry_requested_attempt IS DISTINCT FROM s.dunning_attempts + 1
              AND NOT (s.id = any($3::uuid[]))
            ORDER BY s.next_retry_at LIMIT $2 FOR UPDATE SKIP LOCKED""",
        now, limit, list(skip),
    )


async def lock_stale_pending(conn: asyncpg.Connection, pending_before: datetime, limit: int,
                             skip: Sequence[UUID]) -> list[asyncpg.Record]:
    """Pending subscriptions whose first payment never succeeded within the payment window. The window
    opens when the subscription became pending (a trial that switched to a paid plan did so long after it
    was created): its latest event into 'pending', else its creation."""
    return await conn.fetch(
        f"""SELECT {_SUB} FROM subscriptions s
            WHERE s.status = 'pending' AND NOT (s.id = any($3::uuid[]))
              AND coalesce((SELECT max(e.created_at) FROM subscription_events e
                            WHERE e.subscription_id = s.id AND e.to_status = 'pending'
                              AND e.from_status IS DISTINCT FROM 'pending'), s.created_at) <= $1
            ORDER BY s.created_at LIMIT $2 FOR UPDATE OF s SKIP LOCKED""",
        pending_before, limit, list(skip),
    )


async def mark(conn: asyncpg.Connection, subscription_id: UUID, **marks: Any) -> None:
    """Remember what the scheduler asked for (in the transaction that put the command in the outbox)."""
    if not marks or set(marks) - _MARKS:
        raise ValueError(f"not a scheduler mark: {sorted(set(marks) - _MARKS)}")
    names = list(marks)
    assignments = ", ".join(f"{name} = ${i}" for i, name in enumerate(names, start=2))
    await conn.execute(f"UPDATE subscriptions SET {assignments} WHERE id = $1",
                       subscription_id, *(marks[n] for n in names))


async def delete_expired_idempotency_keys(conn: asyncpg.Connection, now: datetime) -> int:
    result = await conn.execute("DELETE FROM idempotency_keys WHERE expires_at < $1", now)
    return int(result.split()[-1])


async def delete_old_stream_bookkeeping(conn: asyncpg.Connection, before: datetime) -> int:
    """Published outbox rows and inbox rows older than the retention: the streams are trimmed and leases
    last minutes, so no message can be redelivered (or republished) that late."""
    published = await conn.execute("DELETE FROM outbox WHERE published_at < $1", before)
    consumed = await conn.execute("DELETE FROM inbox WHERE processed_at < $1", before)
    return int(published.split()[-1]) + int(consumed.split()[-1])


async def lock_unanswered_charges(conn: asyncpg.Connection, created_before: datetime, limit: int,
                                  skip: Sequence[UUID]) -> list[asyncpg.Record]:
    """Charges still pending (the gateway never answered) long after they were made."""
    return await conn.fetch(
        """SELECT id, user_id, subscription_id, idempotency_key, metadata FROM transactions
           WHERE kind = 'charge' AND status = 'pending' AND created_at <= $1 AND NOT (id = any($3::uuid[]))
           ORDER BY created_at LIMIT $2 FOR UPDATE SKIP LOCKED""",
        created_before, limit, list(skip),
    )
