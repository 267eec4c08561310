"""Usage metering: POST /v1/usage/use, GET /v1/usage/me, GET /v1/usage/limits.

Choices (see billing/metering for the mechanics):
- No live subscription -> 403 `no_active_subscription` (not 402: nothing is being charged here, the
  caller is not entitled; the seed answered 400). Live = trial, active or past_due: past_due keeps
  access during dunning, like Stripe.
- A feature absent from the plan -> 403 `feature_not_included`; null in the plan = unlimited.
- Over the limit -> 429 `usage_limit_exceeded`, nothing counted (all or nothing), Retry-After = seconds
  until the period resets.
- No Idempotency-Key (a metering endpoint, like Lago events): an optional `event_id` makes a retry
  count once; a repeated event_id answers 200 with the current figures and `duplicate` in the message.
"""
from __future__ import annotations

import math
from datetime import datetime
from uuid import UUID

from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field, StrictInt

from billing.http.api import Reply, Routes
from billing.http.context import CLOCK, POOL, REDIS, SETTINGS, user_id
from billing.http.errors import Forbidden, TooManyRequests
from billing.metering import DUPLICATE, REFUSED, FeatureNotIncluded, Meter, NoActiveSubscription

MAX_DELTA = 1_000_000
FEATURE_NAME = r"^[a-z][a-z0-9_]{0,63}$"

METER = web.AppKey("usage_meter", Meter)


class UsageRoutes(Routes):
    """Also gives the app its Meter (entitlement cache + script) once the pool and Redis exist."""

    def register(self, app: web.Application) -> None:
        super().register(app)

        async def meter(app: web.Application):
            app[METER] = Meter(app[SETTINGS], app[POOL], app[REDIS])
            listener = await app[METER].listen()
            yield
            await listener.close()

        app.cleanup_ctx.append(meter)


routes = UsageRoutes("usage")


class UseFeature(BaseModel):
    model_config = ConfigDict(extra="forbid")
    feature_name: str = Field(pattern=FEATURE_NAME, description="a feature of the plan, e.g. api_calls")
    delta: StrictInt = Field(1, ge=1, le=MAX_DELTA, description="units to use, all or nothing")
    event_id: str | None = Field(None, min_length=1, max_length=128, pattern=r"^[A-Za-z0-9_.:-]+$",
                                 description="client id of this event: a retry with the same id counts once")


class FeatureUsage(BaseModel):
    feature_name: str
    current_usage: int
    limit: int | None = Field(description="per billing period; null = unlimited")
    remaining: int | None
    reset_at: datetime


class UsageOut(BaseModel):
    subscription_id: UUID
    period_start: datetime
    reset_at: datetime
    features: list[FeatureUsage]


class LimitsOut(BaseModel):
    subscription_id: UUID
    status: str
    plan_id: UUID
    plan_slug: str
    period_start: datetime
    reset_at: datetime
    limits: dict[str, int | None]


def _meter(request: web.Request) -> Meter:
    return request.app[METER]


def _no_subscription() -> Forbidden:
    return Forbidden("no active subscription", code="no_active_subscription")


@routes.post("/v1/usage/use", body=UseFeature, response=FeatureUsage, errors=(401, 403, 422, 429),
             summary="Use units of a feature against the plan's limit (all or nothing)")
async def use(request: web.Request, body: UseFeature):
    now = request.app[CLOCK].now()
    try:
        result = await _meter(request).use(user_id(request), body.feature_name, body.delta, now,
                                           event_id=body.event_id, correlation_id=request.get("correlation_id"))
    except NoActiveSubscription:
        raise _no_subscription() from None
    except FeatureNotIncluded:
        raise Forbidden(f"feature {body.feature_name!r} is not included in your plan", code="feature_not_included",
                        details={"feature_name": body.feature_name}) from None
    data = result.as_dict()
    if result.status == REFUSED:
        retry_after = max(1, math.ceil((result.reset_at - now).total_seconds()))
        raise TooManyRequests("usage limit exceeded", {**data, "requested": body.delta}, code="usage_limit_exceeded",
                              headers={"Retry-After": str(retry_after)})
    return Reply(data, "duplicate event ignored" if result.status == DUPLICATE else "usage recorded")


@routes.get("/v1/usage/me", response=UsageOut, errors=(401, 403),
            summary="Current usage of every feature of the plan in this period")
async def me(request: web.Request):
    try:
        entitlement, period, results = await _meter(request).usage(user_id(request), request.app[CLOCK].now())
    except NoActiveSubscription:
        raise _no_subscription() from None
    return UsageOut(subscription_id=entitlement.subscription_id, period_start=period.start, reset_at=period.end,
                    features=[FeatureUsage(**r.as_dict()) for r in results])


@routes.get("/v1/usage/limits", response=LimitsOut, errors=(401, 403),
            summary="The plan's limits and the current usage period")
async def limits(request: web.Request):
    try:
        entitlement = await _meter(request).entitlement(user_id(request))
    except NoActiveSubscription:
        raise _no_subscription() from None
    period = entitlement.period(request.app[CLOCK].now())
    return LimitsOut(subscription_id=entitlement.subscription_id, status=entitlement.status, plan_id=entitlement.plan_id,
                     plan_slug=entitlement.plan_slug, period_start=period.start, reset_at=period.end,
                     limits=dict(entitlement.features))
