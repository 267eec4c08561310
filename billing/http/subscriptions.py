"""Subscriptions API on the subscriptions service (8001).

Create (trial, or pending until the first payment on 8002 /v1/payments/process), read, change
plan (validated here, carried out by the plan_change actor), cancel now or at period end, resume.
"""
from __future__ import annotations

from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any
from uuid import UUID

import asyncpg
from aiohttp import web
from pydantic import AliasChoices, BaseModel, ConfigDict, Field

from billing.commands import RequestPlanChange, stream_key
from billing.consumers.subscriptions import apply_event, current_period, note
from billing.http.api import Reply, Routes
from billing.http.context import CLOCK, POOL, SETTINGS, path_uuid, user_id
from billing.http.errors import Conflict, NotFound, ValidationFailed
from billing.http.plans import PlanOut, find_plan, plan_out
from billing.money import CurrencyMismatch, Money
from billing.plans import Period
from billing.sql import plans
from billing.sql import subscriptions as subs
from billing.streams import enqueue
from billing.subscriptions import (
    ChangeTiming,
    IllegalTransition,
    SamePlan,
    SubscriptionEvent as E,
    SubscriptionStatus as S,
    decide_plan_change,
    start_period,
    start_trial,
    transition,
)

routes = Routes("subscriptions")

PLAN_CHANGE_WINDOW = timedelta(minutes=15)  # a charge normally settles in seconds


# -- models -----------------------------------------------------------------------------------


class PlanChoice(BaseModel):
    model_config = ConfigDict(extra="forbid")
    # A plan's UUID or slug ("basic"); seed clients sent trial_plan_id / new_plan_id.
    plan_id: str = Field(min_length=1, max_length=100,
                         validation_alias=AliasChoices("plan_id", "trial_plan_id", "new_plan_id"))


class CancelQuery(BaseModel):
    # Default: at period end for an active subscription, now for trial/pending/past_due.
    at_period_end: bool | None = None


class SubscriptionOut(BaseModel):
    id: UUID
    user_id: UUID
    plan: PlanOut
    status: str
    current_period_start: datetime | None
    current_period_end: datetime | None
    trial_end: datetime | None
    cancel_at_period_end: bool
    canceled_at: datetime | None
    ended_at: datetime | None
    pending_plan: PlanOut | None          # a downgrade that applies at the period end
    past_due_since: datetime | None
    next_retry_at: datetime | None
    payment_required: bool                # pending: pay amount_due on 8002 POST /v1/payments/process
    amount_due: Decimal | None
    amount: Decimal | None                # same as amount_due (the seed's name)
    currency: str
    created_at: datetime
    updated_at: datetime


class ProrationOut(BaseModel):
    from_plan_id: UUID
    to_plan_id: UUID
    kind: str                 # upgrade | downgrade | lateral
    timing: str               # immediate | period_end
    effective_at: datetime
    credit: Decimal           # unused part of the current plan
    debit: Decimal            # remaining part of the new plan
    net: Decimal              # charged now when timing is immediate and net > 0
    currency: str


class PlanChangeOut(BaseModel):
    subscription: SubscriptionOut
    change: ProrationOut
    status: str               # queued (the worker carries it out) | applied | payment_required
    payment_required: bool
    amount: Decimal | None
    currency: str


class EventOut(BaseModel):
    id: UUID
    event_type: str
    from_status: str | None
    to_status: str | None
    data: dict[str, Any]
    correlation_id: str | None
    created_at: datetime


# -- helpers ----------------------------------------------------------------------------------


def illegal(exc: IllegalTransition) -> Conflict:
    return Conflict(str(exc), code="illegal_transition")


async def subscription_out(conn: asyncpg.Connection, row: asyncpg.Record) -> SubscriptionOut:
    plan_row = await plans.get(conn, row["plan_id"])
    pending_row = await plans.get(conn, row["pending_plan_id"]) if row["pending_plan_id"] else None
    due = plan_row["price"] if row["status"] == S.PENDING else None
    return SubscriptionOut(
        **{k: row[k] for k in ("id", "user_id", "status", "current_period_start", "current_period_end", "trial_end",
                               "cancel_at_period_end", "canceled_at", "ended_at", "past_due_since", "next_retry_at",
                               "created_at", "updated_at")},
        plan=plan_out(plan_row), pending_plan=plan_out(pending_row) if pending_row else None,
        payment_required=due is not None, amount_due=due, amount=due, currency=plan_row["currency"].strip(),
    )


async def chosen_plan(conn: asyncpg.Connection, body: PlanChoice) -> asyncpg.Record:
    row = await find_plan(conn, body.plan_id)
    if row is None or not row["is_active"]:
        raise NotFound("no such plan", code="plan_not_found")
    return row


async def owned(conn: asyncpg.Connection, request: web.Request, *, for_update: bool = False) -> asyncpg.Record:
    sub_id, owner = path_uuid(request), user_id(request)
    row = await (subs.lock(conn, sub_id, owner) if for_update else subs.get_for_user(conn, sub_id, owner))
    if row is None:
        raise NotFound("no such subscription")
    return row


async def open_subscription(conn: asyncpg.Connection, request: web.Request, plan_row, *, trial: bool) -> asyncpg.Record:
    """Insert the user's new subscription; the unique index on live subscriptions settles races."""
    owner, now = user_id(request), request.app[CLOCK].now()
    plan = plans.to_domain(plan_row)
    correlation = request.get("correlation_id")
    if await subs.get_live_for_user(conn, owner) is not None:
        raise Conflict("you already have a live subscription; cancel it or change its plan",
                       code="subscription_exists")
    try:
        async with conn.transaction():
            if trial:
                period = start_trial(now, plan.trial_days)
                row = await subs.create(conn, user_id=owner, plan_id=plan_row["id"], status=S.TRIAL.value,
                                        current_period_start=period.start, current_period_end=period.end,
                                        trial_end=period.end, created_at=now)
                await subs.record_event(conn, row["id"], E.START_TRIAL.value, None, row["status"],
                                        {"plan_id": str(plan_row["id"]), "trial_end": period.end}, correlation, at=now)
                return row
            row = await subs.create(conn, user_id=owner, plan_id=plan_row["id"],
                                    status=transition(None, E.CREATE_PAID).value, created_at=now)
            await subs.record_event(conn, row["id"], E.CREATE_PAID.value, None, row["status"],
                                    {"plan_id": str(plan_row["id"])}, correlation, at=now)
            if plan.is_free:  # nothing to pay: active at once
                period = start_period(now, plan.billing_cycle)
                row = await apply_event(conn, row, E.PAYMENT_SUCCEEDED, {"free_plan": True}, now=now,
                                        correlation_id=correlation, current_period_start=period.start,
                                        current_period_end=period.end, billing_anchor=now)
            return row
    except asyncpg.UniqueViolationError:
        raise Conflict("you already have a live subscription", code="subscription_exists") from None


# -- create -----------------------------------------------------------------------------------


@routes.post("/v1/subscriptions/trial", body=PlanChoice, response=SubscriptionOut, status=201, idempotent=True,
             errors=(404, 409), summary="Start a free trial of a plan that has trial days")
async def create_trial(request: web.Request, body: PlanChoice):
    async with request.app[POOL].acquire() as conn:
        plan_row = await chosen_plan(conn, body)
        if plan_row["trial_days"] <= 0:
            raise ValidationFailed("this plan has no trial", [{"field": "plan_id", "message": "plan has no trial days",
                                                               "type": "plan_has_no_trial"}], code="plan_has_no_trial")
        row = await open_subscription(conn, request, plan_row, trial=True)
        return Reply(await subscription_out(conn, row), "Trial started")


async def _create(request: web.Request, body: PlanChoice):
    async with request.app[POOL].acquire() as conn:
        row = await open_subscription(conn, request, await chosen_plan(conn, body), trial=False)
        out = await subscription_out(conn, row)
        message = "Payment required: pay amount_due with POST /v1/payments/process" if out.payment_required \
            else "Subscription active"
        return Reply(out, message)


@routes.post("/v1/subscriptions/", body=PlanChoice, response=SubscriptionOut, status=201, idempotent=True,
             errors=(404, 409), summary="Subscribe to a plan (pending until paid; a free plan is active at once)")
async def create_subscription(request: web.Request, body: PlanChoice):
    return await _create(request, body)


@routes.post("/v1/subscriptions", body=PlanChoice, response=SubscriptionOut, status=201, idempotent=True,
             errors=(404, 409), summary="Subscribe to a plan (same as /v1/subscriptions/)")
async def create_subscription_no_slash(request: web.Request, body: PlanChoice):
    return await _create(request, body)


# -- read -------------------------------------------------------------------------------------


@routes.get("/v1/subscriptions/me", response=SubscriptionOut, errors=(404,),
            summary="The caller's live subscription, else the most recent one")
async def my_subscription(request: web.Request):
    async with request.app[POOL].acquire() as conn:
        owner = user_id(request)
        row = await subs.get_live_for_user(conn, owner)
        if row is None:
            rows = await subs.list_for_user(conn, owner)
            row = rows[0] if rows else None
        if row is None:
            raise NotFound("you have no subscription")
        return await subscription_out(conn, row)


async def _list(request: web.Request):
    async with request.app[POOL].acquire() as conn:
        return [await subscription_out(conn, r) for r in await subs.list_for_user(conn, user_id(request))]


@routes.get("/v1/subscriptions/", response=list[SubscriptionOut], summary="The caller's subscriptions, newest first")
async def list_subscriptions(request: web.Request):
    return await _list(request)


@routes.get("/v1/subscriptions", response=list[SubscriptionOut], summary="Same as /v1/subscriptions/")
async def list_subscriptions_no_slash(request: web.Request):
    return await _list(request)


@routes.get("/v1/subscriptions/{id}", response=SubscriptionOut, errors=(404,), summary="One of the caller's subscriptions")
async def get_subscription(request: web.Request):
    async with request.app[POOL].acquire() as conn:
        return await subscription_out(conn, await owned(conn, request))


@routes.get("/v1/subscriptions/{id}/events", response=list[EventOut], errors=(404,),
            summary="The subscription's event log, oldest first")
async def subscription_events(request: web.Request):
    async with request.app[POOL].acquire() as conn:
        row = await owned(conn, request)
        return [EventOut(**dict(e)) for e in await subs.list_events(conn, row["id"])]


# -- change plan ------------------------------------------------------------------------------


@routes.put("/v1/subscriptions/{id}", body=PlanChoice, response=PlanChangeOut, status=202, errors=(404, 409, 422),
            summary="Change plan: upgrades now with proration, downgrades at the period end")
async def change_plan(request: web.Request, body: PlanChoice):
    now, correlation = request.app[CLOCK].now(), request.get("correlation_id")
    async with request.app[POOL].acquire() as conn, conn.transaction():
        sub = await owned(conn, request, for_update=True)
        new_row = await chosen_plan(conn, body)
        current_row = await plans.get(conn, sub["plan_id"])
        current, new = plans.to_domain(current_row), plans.to_domain(new_row)
        status = S(sub["status"])
        period = current_period(sub) or Period(now, now)
        try:
            change = decide_plan_change(status, current, new, period, now)
        except IllegalTransition as exc:
            raise illegal(exc) from None
        except SamePlan as exc:
            raise Conflict(str(exc), code="same_plan") from None
        except CurrencyMismatch as exc:
            raise ValidationFailed(str(exc), [{"field": "plan_id", "message": str(exc), "type": "currency_mismatch"}],
                                   code="currency_mismatch") from None
        except ValueError:  # the period ended and the scheduler has not renewed it yet
            raise Conflict("the current period has ended; retry once it has renewed", code="period_ended") from None
        zero = Money.zero(current.price.currency)
        p = change.proration
        preview = ProrationOut(from_plan_id=current_row["id"], to_plan_id=new_row["id"], kind=change.kind.value,
                               timing=change.timing.value, effective_at=change.effective_at,
                               credit=(p.credit if p else zero).amount, debit=(p.debit if p else zero).amount,
                               net=(p.net if p else zero).amount, currency=current.price.currency)
        detail = {"from_plan_id": str(current_row["id"]), "to_plan_id": str(new_row["id"]),
                  "kind": change.kind.value, "timing": change.timing.value, "effective_at": change.effective_at,
                  "net": str(preview.net)}

        if status == S.TRIAL:
            # A trial changes at once and synchronously. Leaving a free trial for a paid plan ends
            # the trial now: the subscription is pending on the new plan until the user pays.
            if current.is_free and not new.is_free:
                sub = await apply_event(conn, sub, E.END_TRIAL_FOR_PAYMENT, detail, now=now,
                                        correlation_id=correlation, plan_id=new_row["id"], trial_end=now,
                                        current_period_end=now, pending_plan_id=None)
                out = await subscription_out(conn, sub)
                return Reply(PlanChangeOut(subscription=out, change=preview, status="payment_required",
                                           payment_required=True, amount=out.amount_due, currency=out.currency),
                             "Trial ended: pay amount with POST /v1/payments/process", 200)
            sub = await apply_event(conn, sub, E.CHANGE_PLAN, detail, now=now, correlation_id=correlation,
                                    plan_id=new_row["id"], pending_plan_id=None)
            out = await subscription_out(conn, sub)
            return Reply(PlanChangeOut(subscription=out, change=preview, status="applied", payment_required=False,
                                       amount=None, currency=out.currency), "Plan changed", 200)

        # Active: record the request and hand it to the plan_change actor in the same transaction.
        # One change at a time (the row lock orders concurrent requests): a second upgrade before
        # the first is paid would charge twice. A request stuck longer than the window is let go.
        if await subs.plan_change_in_flight(conn, sub["id"], now - PLAN_CHANGE_WINDOW):
            raise Conflict("a plan change is already in progress", code="plan_change_in_progress")
        await note(conn, sub, "plan_change_requested", detail, now=now, correlation_id=correlation)
        command = RequestPlanChange(subscription_id=sub["id"], user_id=sub["user_id"], new_plan_id=new_row["id"],
                                    requested_at=now)
        settings = request.app[SETTINGS]
        await enqueue(conn, stream_key(settings.redis_prefix, "plan_change"), "request_plan_change", command,
                      correlation_id=correlation)
        out = await subscription_out(conn, sub)
        message = ("Upgrade accepted: the prorated net is charged to your saved payment method"
                   if change.timing == ChangeTiming.IMMEDIATE else "Plan change scheduled for the period end")
        return Reply(PlanChangeOut(subscription=out, change=preview, status="queued", payment_required=False,
                                   amount=preview.net if change.timing == ChangeTiming.IMMEDIATE else None,
                                   currency=out.currency), message)


# -- cancel and resume ------------------------------------------------------------------------


@routes.delete("/v1/subscriptions/{id}", query=CancelQuery, response=SubscriptionOut, errors=(404, 409),
               summary="Cancel now, or at the period end (default for active subscriptions)")
async def cancel_subscription(request: web.Request, query: CancelQuery):
    now, correlation = request.app[CLOCK].now(), request.get("correlation_id")
    async with request.app[POOL].acquire() as conn, conn.transaction():
        sub = await owned(conn, request, for_update=True)
        at_period_end = query.at_period_end if query.at_period_end is not None else sub["status"] == S.ACTIVE
        try:
            if at_period_end:
                transition(S(sub["status"]), E.CANCEL_AT_PERIOD_END)
                if not sub["cancel_at_period_end"]:
                    sub = await note(conn, sub, E.CANCEL_AT_PERIOD_END.value, {"at": sub["current_period_end"]},
                                     now=now, correlation_id=correlation, cancel_at_period_end=True)
                message = "Subscription will cancel at the period end"
            else:
                sub = await apply_event(conn, sub, E.CANCEL_NOW, {}, now=now, correlation_id=correlation,
                                        canceled_at=now, ended_at=now, next_retry_at=None, pending_plan_id=None)
                message = "Subscription canceled"
        except IllegalTransition as exc:
            raise illegal(exc) from None
        return Reply(await subscription_out(conn, sub), message)


@routes.post("/v1/subscriptions/{id}/resume", response=SubscriptionOut, errors=(404, 409),
             summary="Undo a cancellation scheduled for the period end")
async def resume_subscription(request: web.Request):
    now, correlation = request.app[CLOCK].now(), request.get("correlation_id")
    async with request.app[POOL].acquire() as conn, conn.transaction():
        sub = await owned(conn, request, for_update=True)
        try:
            transition(S(sub["status"]), E.RESUME)
        except IllegalTransition as exc:
            raise illegal(exc) from None
        if not sub["cancel_at_period_end"]:
            raise Conflict("the subscription is not scheduled to cancel", code="not_canceling")
        sub = await note(conn, sub, E.RESUME.value, {}, now=now, correlation_id=correlation,
                         cancel_at_period_end=False)
        return Reply(await subscription_out(conn, sub), "Subscription resumed")
