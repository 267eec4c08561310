"""The stream contract: command families, their Redis keys, and the payload of each command.

Hash tags ({sub}, {pay}, {hook}) keep each family's stream, delayed set and dead letters in one
Redis Cluster slot. Payloads are validated when published and again when consumed.
"""
from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from typing import Literal
from uuid import UUID

from pydantic import BaseModel, ConfigDict

SUBSCRIPTION_STREAMS = ("payment_initiation", "trial_payment", "plan_change", "usage_sync")
PAYMENT_STREAMS = ("subscription_update", "refund_initiation")
WEBHOOK_STREAMS = ("gateway_webhook", "webhook_delivery")
_TAGS = {**{f: "sub" for f in SUBSCRIPTION_STREAMS}, **{f: "pay" for f in PAYMENT_STREAMS},
         **{f: "hook" for f in WEBHOOK_STREAMS}}


def stream_key(prefix: str, family: str) -> str:
    try:
        return f"{prefix}:{{{_TAGS[family]}}}:{family}"
    except KeyError:
        raise KeyError(f"unknown stream family {family!r}") from None


def all_stream_keys(prefix: str) -> list[str]:
    return [stream_key(prefix, f) for f in _TAGS]


class Command(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


ChargeReason = Literal["renewal", "upgrade", "trial_conversion", "dunning_retry"]


class ChargeSubscription(Command):
    """payment_initiation / trial_payment: charge the user's default payment method (subscriptions -> payments)."""
    subscription_id: UUID
    user_id: UUID
    amount: Decimal
    currency: str
    reason: ChargeReason
    charge_key: str                  # one charge per (subscription, reason, period): the payment idempotency key
    plan_id: UUID | None = None      # upgrade: the plan that applies once paid
    period_start: datetime | None = None
    period_end: datetime | None = None


class PaymentOutcome(Command):
    """subscription_update: what happened to a charge (payments -> subscriptions)."""
    transaction_id: UUID
    subscription_id: UUID | None
    user_id: UUID
    status: Literal["succeeded", "failed"]
    amount: Decimal
    currency: str
    reason: str                      # subscription_create | renewal | upgrade | trial_conversion | dunning_retry
    charge_key: str | None = None
    plan_id: UUID | None = None
    decline_code: str | None = None
    occurred_at: datetime


class RequestPlanChange(Command):
    """plan_change: a user asked to move to another plan (subscriptions API -> subscriptions worker)."""
    subscription_id: UUID
    user_id: UUID
    new_plan_id: UUID
    requested_at: datetime


class RefundPayment(Command):
    """refund_initiation: send a pending refund to the gateway (payments API -> payments worker)."""
    refund_id: UUID
    charge_id: UUID
    user_id: UUID
    amount: Decimal
    currency: str


class UsageRecorded(Command):
    """usage_sync: units accepted in Redis, to be added to PostgreSQL in batches."""
    user_id: UUID
    subscription_id: UUID | None = None
    feature_name: str
    delta: int
    period_start: datetime
    reset_at: datetime


class GatewayWebhook(Command):
    """gateway_webhook: the mock gateway's signed notification to POST /v1/webhooks/payment."""
    event_id: str
    body: dict


class DeliverWebhook(Command):
    """webhook_delivery: one event to one user-registered endpoint (signed, retried, logged)."""
    event_id: UUID
    endpoint_id: UUID
    event_type: str
    payload: dict
    created_at: datetime | None = None   # when the event happened (the body's "created")


# Action names on the payment-side streams.
CHARGE_SUBSCRIPTION = "charge_subscription"   # payment_initiation, trial_payment: ChargeSubscription
PAYMENT_OUTCOME = "payment_outcome"           # subscription_update: PaymentOutcome
REFUND_PAYMENT = "refund_payment"             # refund_initiation: RefundPayment
DELIVER_GATEWAY_WEBHOOK = "deliver"           # gateway_webhook: GatewayWebhook
