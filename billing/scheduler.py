"""Time-driven billing: trial ends, renewals, period-end cancellations, dunning retries, expiries, cleanup.

``tick(deps, now)`` does one pass and is what tests call; ``Scheduler.run`` calls it every
``settings.scheduler_interval_seconds`` while it holds the leader lock.

Never twice, even with two schedulers:
- only the holder of a Redis leader lock ticks (SET NX PX with a token, renewed and released by
  compare-and-set scripts, so nobody extends or deletes a lock it lost);
- should two ticks still overlap (a leader paused past its TTL), each due row is locked
  FOR UPDATE SKIP LOCKED, and the ChargeSubscription is put in the outbox in the same transaction
  that marks the subscription (renewal_requested_for, retry_requested_attempt, conversion_requested_at),
  so a committed mark and its command exist together or not at all;
- each charge carries a deterministic charge_key (``renewal:{id}:{period_end}``, ``dunning:{id}:{attempt}``,
  ``trial_conversion:{id}``) that payments uses as the idempotency key of the charge.

Decisions:
- The demo "trial" plan costs 0: when its trial ends the subscription simply expires
  (trial_expired_no_payment); the customer then subscribes to a paid plan. A trial on a paid plan
  (a plan with trial_days, or a trial switched to a paid plan) converts by charging the user's default
  saved card; without one it expires too.
- A downgrade waiting in pending_plan_id takes effect at the period end: the plan is switched (event
  change_plan) before the renewal is charged at the new plan's price.
- A paid period of a free plan (price 0) renews without a charge.
- Outcomes (active next period, past_due with next_retry_at, canceled after the last retry) are applied by
  the subscription worker when PaymentOutcome comes back; the scheduler only asks. If the ladder in
  settings.dunning_retry_days got shorter than the attempts already made, the scheduler cancels.
"""
from __future__ import annotations

import asyncio
import secrets
import socket
from contextlib import suppress
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Awaitable, Callable
from uuid import UUID

import asyncpg
import redis.asyncio as aioredis
import structlog

from billing import eventloop
from billing.clock import Clock, clock_for, start_clock, stop_clock
from billing.commands import CHARGE_SUBSCRIPTION, ChargeSubscription
from billing.config import Settings
from billing.consumers.deps import Deps
from billing.consumers.payments import enqueue_outcome
from billing.consumers.subscriptions import apply_event, load_plan, note
from billing.plans import BillingCycle, Period, Plan, add_cycle
from billing.metering import reset_expired
from billing.sql import due, payment_methods, pool_for, transactions
from billing.subscriptions import (
    DunningPolicy,
    PeriodEndAction,
    SubscriptionEvent as E,
    SubscriptionStatus as S,
    TrialOutcome,
    decide_trial_end,
    next_period,
    on_period_end,
)

log = structlog.get_logger("billing.scheduler")


@dataclass
class TickReport:
    """What one tick did (counts), for logs and tests."""
    trials_converting: int = 0
    trials_expired: int = 0
    renewals_requested: int = 0
    free_renewals: int = 0
    canceled_at_period_end: int = 0
    retries_requested: int = 0
    dunning_exhausted: int = 0
    pending_expired: int = 0
    unanswered_charges_failed: int = 0
    idempotency_keys_deleted: int = 0
    stream_bookkeeping_deleted: int = 0
    usage_keys_deleted: int = 0
    failed: list[UUID] = field(default_factory=list)

    def count(self, what: str) -> None:
        setattr(self, what, getattr(self, what) + 1)


# -- one pass --------------------------------------------------------------------------------------------

async def tick(deps: Deps, now: datetime) -> TickReport:
    report = TickReport()
    await _sweep(deps, report, lambda conn, limit, skip: due.lock_due_trials(conn, now, limit, skip),
                 lambda conn, row: _trial_ended(deps, conn, row, now))
    await _sweep(deps, report, lambda conn, limit, skip: due.lock_due_period_ends(conn, now, limit, skip),
                 lambda conn, row: _period_ended(deps, conn, row, now))
    await _sweep(deps, report, lambda conn, limit, skip: due.lock_due_retries(conn, now, limit, skip),
                 lambda conn, row: _retry_due(deps, conn, row, now))
    window = timedelta(hours=deps.settings.pending_expiry_hours)
    await _sweep(deps, report, lambda conn, limit, skip: due.lock_stale_pending(conn, now - window, limit, skip),
                 lambda conn, row: _pending_expired(conn, row, now))
    unanswered_before = now - timedelta(minutes=deps.settings.pending_charge_timeout_minutes)
    await _sweep(deps, report, lambda conn, limit, skip: due.lock_unanswered_charges(conn, unanswered_before, limit, skip),
                 lambda conn, row: _charge_unanswered(deps, conn, row, now))
    async with deps.pool.acquire() as conn:
        report.idempotency_keys_deleted = await due.delete_expired_idempotency_keys(conn, now)
        retention = timedelta(days=deps.settings.stream_bookkeeping_retention_days)
        report.stream_bookkeeping_deleted = await due.delete_old_stream_bookkeeping(conn, now - retention)
    report.usage_keys_deleted = await reset_usage(deps, now)
    log.info("tick", now=now.isoformat(), **{k: v for k, v in vars(report).items() if v and k != "failed"},
             failed=len(report.failed))
    return report


Handle = Callable[[asyncpg.Connection, asyncpg.Record], Awaitable[str]]


async def _sweep(deps: Deps, report: TickReport, lock: Callable, handle: Handle) -> None:
    """Lock due rows batch by batch and handle each in a savepoint; a row that fails is logged and skipped
    for the rest of this tick (the next tick tries again), and never blocks the others."""
    batch = deps.settings.scheduler_batch_size
    while True:
        async with deps.pool.acquire() as conn, conn.transaction():
            rows = await lock(conn, batch, report.failed)
            for row in rows:
                try:
                    async with conn.transaction():
                        report.count(await handle(conn, row))
                except Exception:
                    log.exception("scheduler could not handle a subscription", subscription_id=str(row["id"]))
                    report.failed.append(row["id"])
        if len(rows) < batch:
            return


def following_period(row: asyncpg.Record, cycle: BillingCycle) -> Period:
    """The period after the current one, on the billing anchor (as the subscription worker computes it);
    where the anchor does not fit (the cycle changed with a downgrade) the new cycle starts at the end."""
    end = row["current_period_end"]
    with suppress(ValueError):
        return next_period(end, cycle, anchor=row["billing_anchor"] or row["current_period_start"])
    return Period(end, add_cycle(end, cycle))


async def _request_charge(deps: Deps, conn: asyncpg.Connection, row: asyncpg.Record, *, family: str, reason: str,
                          charge_key: str, plan: Plan, period: Period | None, now: datetime) -> None:
    """Put ChargeSubscription in the outbox (same transaction as the caller's mark) and log it as an event."""
    command = ChargeSubscription(
        subscription_id=row["id"], user_id=row["user_id"], amount=plan.price.amount, currency=plan.price.currency,
        reason=reason, charge_key=charge_key,
        period_start=period.start if period else None, period_end=period.end if period else None,
    )
    await deps.enqueue(conn, family, CHARGE_SUBSCRIPTION, command, correlation_id=charge_key,
                       idempotency_key=charge_key)
    await note(conn, row, f"{reason}_requested",
               {"charge_key": charge_key, "amount": str(plan.price.amount), "currency": plan.price.currency},
               now=now, correlation_id=charge_key)


# -- what is due -----------------------------------------------------------------------------------------

async def _trial_ended(deps: Deps, conn: asyncpg.Connection, row: asyncpg.Record, now: datetime) -> str:
    trial_end = row["trial_end"]
    if on_period_end(S.TRIAL, cancel_at_period_end=row["cancel_at_period_end"]) is PeriodEndAction.CANCEL:
        await apply_event(conn, row, E.PERIOD_END_REACHED, {}, now=now, ended_at=trial_end)
        return "canceled_at_period_end"
    _, plan = await load_plan(conn, row["plan_id"])
    has_card = await payment_methods.get_default(conn, row["user_id"]) is not None
    if decide_trial_end(plan, has_payment_method=has_card) is TrialOutcome.EXPIRE:
        await apply_event(conn, row, E.TRIAL_EXPIRED_NO_PAYMENT, {"free_plan": plan.is_free, "had_card": has_card},
                          now=now, ended_at=trial_end)
        return "trials_expired"
    await _request_charge(deps, conn, row, family="trial_payment", reason="trial_conversion",
                          charge_key=f"trial_conversion:{row['id']}", plan=plan,
                          period=Period(trial_end, add_cycle(trial_end, plan.billing_cycle)), now=now)
    await due.mark(conn, row["id"], conversion_requested_at=now)
    return "trials_converting"


async def _period_ended(deps: Deps, conn: asyncpg.Connection, row: asyncpg.Record, now: datetime) -> str:
    period_end = row["current_period_end"]
    if on_period_end(S.ACTIVE, cancel_at_period_end=row["cancel_at_period_end"]) is PeriodEndAction.CANCEL:
        await apply_event(conn, row, E.PERIOD_END_REACHED, {}, now=now, ended_at=period_end)
        return "canceled_at_period_end"
    plan_id = row["plan_id"]
    if row["pending_plan_id"] is not None:  # the downgrade applies from this period end on
        plan_id = row["pending_plan_id"]
        await apply_event(conn, row, E.CHANGE_PLAN, {"from_plan_id": str(row["plan_id"]), "to_plan_id": str(plan_id),
                                                     "effective_at": period_end, "scheduled": True},
                          now=now, plan_id=plan_id, pending_plan_id=None)
    _, plan = await load_plan(conn, plan_id)
    period = following_period(row, plan.billing_cycle)
    if plan.is_free:
        await apply_event(conn, row, E.RENEW_SUCCEEDED, {"free_plan": True}, now=now,
                          current_period_start=period.start, current_period_end=period.end)
        return "free_renewals"
    await _request_charge(deps, conn, row, family="payment_initiation", reason="renewal",
                          charge_key=f"renewal:{row['id']}:{period_end.isoformat()}", plan=plan, period=period, now=now)
    await due.mark(conn, row["id"], renewal_requested_for=period_end)
    return "renewals_requested"


async def _retry_due(deps: Deps, conn: asyncpg.Connection, row: asyncpg.Record, now: datetime) -> str:
    policy = DunningPolicy(tuple(deps.settings.dunning_retry_days))
    made = row["dunning_attempts"]
    if made >= len(policy.retry_after_days):  # the ladder was shortened under this subscription
        await apply_event(conn, row, E.DUNNING_EXHAUSTED, {"attempts": made}, now=now,
                          canceled_at=now, ended_at=now, next_retry_at=None)
        return "dunning_exhausted"
    _, plan = await load_plan(conn, row["plan_id"])
    attempt = made + 1
    await _request_charge(deps, conn, row, family="payment_initiation", reason="dunning_retry",
                          charge_key=f"dunning:{row['id']}:{attempt}", plan=plan, period=None, now=now)
    await due.mark(conn, row["id"], retry_requested_attempt=attempt)
    return "retries_requested"


async def _charge_unanswered(deps: Deps, conn: asyncpg.Connection, row: asyncpg.Record, now: datetime) -> str:
    """The gateway never answered (timeouts): fail the charge the usual way, so the subscription follows
    its failed-payment path and the customer may pay again instead of being blocked by a pending charge.
    (A real gateway integration would first look the charge up by its idempotency key.)"""
    minutes = deps.settings.pending_charge_timeout_minutes
    txn = await transactions.finish(conn, row["id"], status="failed", gateway_reference=None, decline_code="gateway_timeout",
                                    error_message=f"no answer from the gateway within {minutes} minutes")
    plan_id = (row["metadata"] or {}).get("plan_id")
    key = row["idempotency_key"]
    await enqueue_outcome(conn, deps, txn, now=now, plan_id=UUID(plan_id) if plan_id else None,
                          charge_key=key if key and not key.startswith("api:") else None)
    return "unanswered_charges_failed"


async def _pending_expired(conn: asyncpg.Connection, row: asyncpg.Record, now: datetime) -> str:
    await apply_event(conn, row, E.PAYMENT_WINDOW_EXPIRED, {"created_at": row["created_at"]}, now=now, ended_at=now)
    return "pending_expired"


# -- cleanup ---------------------------------------------------------------------------------------------

async def reset_usage(deps: Deps, now: datetime) -> int:
    """End what finished usage periods leave behind (billing.metering.reset_expired): counters of ended
    periods, rows past the retention, acked usage_sync entries. A new period needs no reset: its counters
    are new keys that start at 0. Returns how many counters were deleted."""
    async with deps.pool.acquire() as conn:
        removed = await reset_expired(conn, deps.redis, deps.settings, now)
    return removed["counters"]


# -- leadership and the loop -----------------------------------------------------------------------------

_RENEW = """if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('pexpire', KEYS[1], ARGV[2]) end return 0"""
_RELEASE = """if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) end return 0"""


class LeaderLock:
    """One leader among schedulers: a Redis key holding the leader's random token, with a TTL."""

    def __init__(self, redis: aioredis.Redis, key: str, ttl_seconds: float) -> None:
        self.redis = redis
        self.key = key
        self.ttl_ms = int(ttl_seconds * 1000)
        self.token = f"{socket.gethostname()}:{secrets.token_hex(8)}"

    async def hold(self) -> bool:
        """Renew the lock if it is ours, else try to take it; True while we lead."""
        if await self.redis.eval(_RENEW, 1, self.key, self.token, self.ttl_ms):
            return True
        return bool(await self.redis.set(self.key, self.token, nx=True, px=self.ttl_ms))

    async def release(self) -> bool:
        return bool(await self.redis.eval(_RELEASE, 1, self.key, self.token))


class Scheduler:
    def __init__(self, deps: Deps) -> None:
        self.deps = deps
        self.interval = deps.settings.scheduler_interval_seconds
        self.lock = LeaderLock(deps.redis, deps.settings.key("scheduler", "leader"),
                               max(deps.settings.scheduler_lock_ttl_seconds, 2 * self.interval))

    async def run_once(self) -> TickReport | None:
        """Tick if we are (or become) the leader; None when another scheduler leads."""
        if not await self.lock.hold():
            return None
        # The clock is read per tick, so a moved test clock takes effect on the next tick.
        return await tick(self.deps, self.deps.clock.now())

    async def run(self, stop: asyncio.Event) -> None:
        """Tick whenever the clock has moved an interval since the last tick. Waking up every second (at
        most) to look is what makes it test-clock aware: after POST /v1/test-clock/advance the due work
        runs within about a second instead of at the next interval."""
        log.info("scheduler started", interval=self.interval, token=self.lock.token)
        poll = min(self.interval, 1.0)
        last: datetime | None = None
        try:
            while not stop.is_set():
                now = self.deps.clock.now()
                if last is None or now - last >= timedelta(seconds=self.interval):
                    try:
                        await self.run_once()
                        last = now
                    except (OSError, asyncpg.PostgresError, aioredis.RedisError):
                        log.exception("tick failed; retrying next interval")
                        last = now
                with suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), poll)
        finally:
            with suppress(Exception):
                await self.lock.release()
            log.info("scheduler stopped")


async def run_scheduler(settings: Settings, *, clock: Clock | None = None, stop: asyncio.Event | None = None) -> None:
    stop = stop or asyncio.Event()
    pool = await pool_for(settings, max_size=4)
    redis = aioredis.from_url(settings.redis_url, decode_responses=True)
    clock = clock or clock_for(settings)
    await start_clock(clock, redis)  # development: the test clock every process shares through Redis
    try:
        await Scheduler(Deps(settings=settings, pool=pool, redis=redis, clock=clock)).run(stop)
    finally:
        await stop_clock(clock)
        await redis.aclose()
        await pool.close()


def main(settings: Settings) -> None:
    eventloop.run_until_signalled(lambda stop: run_scheduler(settings, stop=stop))
