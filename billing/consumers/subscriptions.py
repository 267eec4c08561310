"""Subscription actors: payment outcomes (subscription_update) and plan changes (plan_change).

`apply_payment_outcome` is the one place a payment result changes a subscription. Both the
stream actor and the inbound gateway webhook call it; the inbox row keyed by the transaction id
makes each payment count once whichever path delivers it first.

Event types written to the log: the state-machine event that ran (billing.subscriptions
SubscriptionEvent values, e.g. `payment_succeeded`, `renew_failed`, `change_plan`), or, for
facts that change no status: `payment_failed` on pending, `upgrade_payment_failed`,
`upgrade_payment_requested`, `plan_change_scheduled`, `plan_change_rejected`, `payment_unapplied`.
"""
from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any

import asyncpg
import structlog

from billing.commands import ChargeSubscription, PaymentOutcome, RequestPlanChange
from billing.consumers.deps import Deps
from billing.money import CurrencyMismatch
from billing.plans import Period, Plan
from billing.sql import plans
from billing.sql import subscriptions as subs
from billing.streams import Envelope, Router, claim_inbox
from billing.subscriptions import (
    ChangeTiming,
    DunningPolicy,
    IllegalTransition,
    SamePlan,
    SubscriptionEvent as E,
    SubscriptionStatus as S,
    decide_plan_change,
    dunning_after_retry_failure,
    next_dunning_step,
    next_period,
    start_period,
    transition,
)

log = structlog.get_logger("billing.consumers.subscriptions")

PAYMENT_OUTCOME_INBOX = "payment-outcome"
PLAN_CHANGE_INBOX = "plan-change"


# -- shared write helpers ---------------------------------------------------------------------


async def apply_event(conn: asyncpg.Connection, sub: asyncpg.Record, event: E, data: dict, *, now: datetime,
                      correlation_id: str | None = None, **changes: Any) -> asyncpg.Record:
    """Run a state-machine event (raises IllegalTransition), persist its changes, log it."""
    to_status = transition(S(sub["status"]), event)
    row = await subs.update(conn, sub["id"], status=to_status.value, **changes)
    await subs.record_event(conn, sub["id"], event.value, sub["status"], to_status.value, data, correlation_id, at=now)
    return row


async def note(conn: asyncpg.Connection, sub: asyncpg.Record, event_type: str, data: dict, *, now: datetime,
               correlation_id: str | None = None, **changes: Any) -> asyncpg.Record:
    """Log a fact that leaves the status as it is (optionally with field changes)."""
    row = await subs.update(conn, sub["id"], **changes) if changes else sub
    await subs.record_event(conn, sub["id"], event_type, sub["status"], sub["status"], data, correlation_id, at=now)
    return row


async def load_plan(conn: asyncpg.Connection, plan_id) -> tuple[asyncpg.Record, Plan]:
    row = await plans.get(conn, plan_id)
    return row, plans.to_domain(row)


# -- payment outcomes -------------------------------------------------------------------------


def _following_period(sub: asyncpg.Record, plan: Plan, now: datetime) -> tuple[Period, datetime]:
    """The period after the current one on the billing anchor, or a fresh one from now when
    there is no anchor yet (first payment after a trial) or the anchor no longer fits (cycle changed)."""
    anchor, end = sub["billing_anchor"], sub["current_period_end"]
    if anchor is not None and end is not None:
        try:
            return next_period(end, plan.billing_cycle, anchor=anchor), anchor
        except ValueError:
            pass
    return start_period(now, plan.billing_cycle), now


def _period_changes(period: Period, anchor: datetime) -> dict:
    return {"current_period_start": period.start, "current_period_end": period.end, "billing_anchor": anchor}


_DUNNING_CLEARED = {"past_due_since": None, "next_retry_at": None, "dunning_attempts": 0}


async def apply_payment_outcome(conn: asyncpg.Connection, outcome: PaymentOutcome, now: datetime, *,
                                dunning: DunningPolicy = DunningPolicy(),
                                correlation_id: str | None = None) -> str:
    """Apply one payment result to its subscription, inside the caller's transaction.

    Returns "applied", "duplicate" (this transaction was applied before) or "ignored" (no such
    subscription for that user). Every change is recorded through record_event.
    """
    if not await claim_inbox(conn, PAYMENT_OUTCOME_INBOX, str(outcome.transaction_id)):
        return "duplicate"
    if outcome.subscription_id is None:
        return "ignored"
    sub = await subs.lock(conn, outcome.subscription_id, outcome.user_id)
    if sub is None:
        log.warning("payment outcome for an unknown subscription", subscription_id=str(outcome.subscription_id),
                    transaction_id=str(outcome.transaction_id))
        return "ignored"
    _, plan = await load_plan(conn, sub["plan_id"])
    data = {k: v for k, v in {
        "transaction_id": str(outcome.transaction_id), "amount": str(outcome.amount), "currency": outcome.currency,
        "reason": outcome.reason, "charge_key": outcome.charge_key, "decline_code": outcome.decline_code,
        "plan_id": str(outcome.plan_id) if outcome.plan_id else None,
    }.items() if v is not None}
    kw = {"now": now, "correlation_id": correlation_id}
    status, reason = S(sub["status"]), outcome.reason

    if outcome.status == "succeeded":
        if status == S.PENDING:
            period, anchor = start_period(now, plan.billing_cycle), now
            await apply_event(conn, sub, E.PAYMENT_SUCCEEDED, data, **kw, **_period_changes(period, anchor))
        elif status == S.TRIAL and reason == "trial_conversion":
            period, anchor = start_period(now, plan.billing_cycle), now
            await apply_event(conn, sub, E.TRIAL_EXPIRED_CONVERTED, data, **kw, **_period_changes(period, anchor))
        elif status == S.PAST_DUE:
            # Dunning is over: the customer paid for the period that failed to renew.
            period, anchor = _following_period(sub, plan, now)
            await apply_event(conn, sub, E.PAYMENT_SUCCEEDED, data, **kw, **_period_changes(period, anchor),
                              **_DUNNING_CLEARED)
        elif status == S.ACTIVE and reason == "renewal":
            period, anchor = _following_period(sub, plan, now)
            await apply_event(conn, sub, E.RENEW_SUCCEEDED, data, **kw, **_period_changes(period, anchor))
        elif status == S.ACTIVE and reason == "upgrade" and outcome.plan_id is not None \
                and await plans.get(conn, outcome.plan_id) is not None:
            # Paid the prorated difference: the new plan applies now, the period stays.
            await apply_event(conn, sub, E.CHANGE_PLAN, {**data, "from_plan_id": str(sub["plan_id"])}, **kw,
                              plan_id=outcome.plan_id, pending_plan_id=None)
        else:  # e.g. a payment for a subscription that ended meanwhile: kept in the log (refund is manual)
            await note(conn, sub, "payment_unapplied", data, **kw)
        return "applied"

    if status == S.PENDING:
        # Stripe's "incomplete": the customer may retry with another card until the window expires.
        await apply_event(conn, sub, E.PAYMENT_FAILED, data, **kw)
    elif (status == S.ACTIVE and reason == "renewal") or (status == S.TRIAL and reason == "trial_conversion"):
        event = E.RENEW_FAILED if status == S.ACTIVE else E.TRIAL_PAYMENT_FAILED
        retry_at = next_dunning_step(now, 0, dunning)
        await apply_event(conn, sub, event, {**data, "next_retry_at": retry_at}, **kw,
                          past_due_since=now, dunning_attempts=0, next_retry_at=retry_at)
    elif status == S.PAST_DUE and reason == "dunning_retry":
        attempts = sub["dunning_attempts"] + 1
        event, retry_at = dunning_after_retry_failure(now, attempts, dunning)
        if event == E.DUNNING_EXHAUSTED:
            await apply_event(conn, sub, event, {**data, "attempts": attempts}, **kw, dunning_attempts=attempts,
                              next_retry_at=None, canceled_at=now, ended_at=now)
        else:
            await apply_event(conn, sub, event, {**data, "attempts": attempts, "next_retry_at": retry_at}, **kw,
                              dunning_attempts=attempts, next_retry_at=retry_at)
    elif status == S.ACTIVE and reason == "upgrade":
        await note(conn, sub, "upgrade_payment_failed", data, **kw)
    else:
        await note(conn, sub, "payment_unapplied", data, **kw)
    return "applied"


# -- plan changes -----------------------------------------------------------------------------


def current_period(sub: asyncpg.Record) -> Period | None:
    if sub["current_period_start"] is None or sub["current_period_end"] is None:
        return None
    return Period(sub["current_period_start"], sub["current_period_end"])


@dataclass(frozen=True)
class PlanChangeResult:
    outcome: str          # charge_requested | switched | scheduled | rejected | ignored
    detail: dict


async def request_plan_change(deps: Deps, conn: asyncpg.Connection, envelope: Envelope,
                              cmd: RequestPlanChange) -> PlanChangeResult:
    """Carry out a plan change the API accepted, deciding again on the locked row
    (the subscription may have changed since the request)."""
    sub = await subs.lock(conn, cmd.subscription_id, cmd.user_id)
    new_row = await plans.get(conn, cmd.new_plan_id)
    if sub is None or new_row is None:
        return PlanChangeResult("ignored", {})
    now = deps.clock.now()
    kw = {"now": now, "correlation_id": envelope.correlation_id}
    current_row, current = await load_plan(conn, sub["plan_id"])
    new = plans.to_domain(new_row)
    period = current_period(sub) or Period(now, now)
    try:
        if period.start >= period.end:
            raise IllegalTransition(S(sub["status"]), E.CHANGE_PLAN)
        change = decide_plan_change(S(sub["status"]), current, new, period, now)
    except (IllegalTransition, SamePlan, CurrencyMismatch, ValueError) as exc:
        detail = {"new_plan_id": str(cmd.new_plan_id), "error": str(exc)}
        await note(conn, sub, "plan_change_rejected", detail, **kw)
        return PlanChangeResult("rejected", detail)

    detail = {"from_plan_id": str(sub["plan_id"]), "to_plan_id": str(cmd.new_plan_id), "kind": change.kind.value,
              "timing": change.timing.value, "effective_at": change.effective_at}
    if change.timing == ChangeTiming.PERIOD_END:
        await note(conn, sub, "plan_change_scheduled", detail, **kw, pending_plan_id=cmd.new_plan_id)
        return PlanChangeResult("scheduled", detail)
    if change.charge_now.amount > Decimal(0):
        charge = ChargeSubscription(
            subscription_id=sub["id"], user_id=sub["user_id"], amount=change.charge_now.amount,
            currency=change.charge_now.currency, reason="upgrade", plan_id=cmd.new_plan_id,
            charge_key=f"upgrade:{sub['id']}:{envelope.id}",
            period_start=sub["current_period_start"], period_end=sub["current_period_end"])
        await deps.enqueue(conn, "payment_initiation", "charge_subscription", charge,
                           correlation_id=envelope.correlation_id, idempotency_key=charge.charge_key)
        detail = {**detail, "amount": str(charge.amount), "currency": charge.currency, "charge_key": charge.charge_key}
        await note(conn, sub, "upgrade_payment_requested", detail, **kw)
        return PlanChangeResult("charge_requested", detail)
    # Nothing to pay (a trial, or an upgrade at the very end of the period): switch now.
    await apply_event(conn, sub, E.CHANGE_PLAN, detail, **kw, plan_id=cmd.new_plan_id, pending_plan_id=None)
    return PlanChangeResult("switched", detail)


# -- actors -----------------------------------------------------------------------------------


def build_routers(deps: Deps) -> dict[str, Router]:
    dunning = DunningPolicy(tuple(deps.settings.dunning_retry_days))

    async def on_payment_outcome(envelope: Envelope, outcome: PaymentOutcome) -> None:
        async with deps.pool.acquire() as conn, conn.transaction():
            result = await apply_payment_outcome(conn, outcome, deps.clock.now(), dunning=dunning,
                                                 correlation_id=envelope.correlation_id)
        log.info("payment outcome", result=result, transaction_id=str(outcome.transaction_id),
                 subscription_id=str(outcome.subscription_id), status=outcome.status, reason=outcome.reason)

    async def on_request_plan_change(envelope: Envelope, cmd: RequestPlanChange) -> None:
        async with deps.pool.acquire() as conn, conn.transaction():
            if not await claim_inbox(conn, PLAN_CHANGE_INBOX, envelope.id):
                return
            result = await request_plan_change(deps, conn, envelope, cmd)
        log.info("plan change", result=result.outcome, subscription_id=str(cmd.subscription_id))

    updates, changes = Router(), Router()
    updates.register("payment_outcome", PaymentOutcome, on_payment_outcome)
    changes.register("request_plan_change", RequestPlanChange, on_request_plan_change)
    return {"subscription_update": updates, "plan_change": changes}
