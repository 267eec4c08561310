"""Inbound payment webhook: POST /v1/webhooks/payment (the gateway's signed notification).

The signature is checked on the raw bytes before anything is parsed. Each event_id is
processed once (gateway_webhook_requests.event_id is UNIQUE), and each payment once whether the
webhook or the subscription_update stream delivers it first (apply_payment_outcome's inbox).
"""
from __future__ import annotations

import json
from datetime import datetime
from decimal import Decimal
from typing import Literal
from uuid import UUID

from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field

from billing.commands import PaymentOutcome
from billing.consumers.subscriptions import apply_payment_outcome
from billing.http.api import Reply, Routes, parse
from billing.http.context import CLOCK, POOL, SETTINGS
from billing.http.errors import BadRequest, Unauthorized
from billing.signing import SIGNATURE_HEADER, TIMESTAMP_HEADER, SignatureError, SignatureFailure, verify
from billing.subscriptions import DunningPolicy

routes = Routes("webhooks")


class PaymentWebhook(BaseModel):
    model_config = ConfigDict(extra="ignore")  # gateways add fields over time; unknown keys are not an error
    event_id: str = Field(min_length=1, max_length=255)
    event_type: Literal["payment.succeeded", "payment.failed"]
    transaction_id: UUID
    subscription_id: UUID | None
    user_id: UUID
    status: Literal["succeeded", "failed"]
    amount: Decimal = Field(ge=0, max_digits=12, decimal_places=2)
    currency: str = Field(pattern=r"^[A-Z]{3}$")
    reason: str = Field("subscription_create", max_length=50)
    plan_id: UUID | None = None
    decline_code: str | None = Field(None, max_length=100)
    charge_key: str | None = Field(None, max_length=255)
    occurred_at: datetime

    def outcome(self) -> PaymentOutcome:
        return PaymentOutcome(**self.model_dump(exclude={"event_id", "event_type"}))


class WebhookResult(BaseModel):
    event_id: str
    status: Literal["processed", "duplicate", "ignored"]


def _signature_error(exc: SignatureError):
    # A wrong signature is an authentication failure; anything else is a malformed request.
    cls = Unauthorized if exc.reason == SignatureFailure.MISMATCH else BadRequest
    return cls(f"invalid webhook signature: {exc}", {"reason": exc.reason.value}, code=f"signature_{exc.reason.value}")


@routes.post("/v1/webhooks/payment", auth=False, body=None, response=WebhookResult, errors=(400, 401, 422),
             summary="Payment gateway notification (HMAC-SHA256 signed: X-Webhook-Signature, X-Webhook-Timestamp)")
async def payment_webhook(request: web.Request):
    settings, now = request.app[SETTINGS], request.app[CLOCK].now()
    raw = await request.read()
    signature = request.headers.get(SIGNATURE_HEADER)
    try:
        verify(settings.webhook_secret.get_secret_value(), raw, signature, request.headers.get(TIMESTAMP_HEADER),
               now, settings.webhook_tolerance_seconds)
    except SignatureError as exc:
        raise _signature_error(exc) from None
    try:
        data = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        raise BadRequest("request body is not valid JSON", code="malformed_json") from None
    event: PaymentWebhook = parse(PaymentWebhook, data)

    async with request.app[POOL].acquire() as conn, conn.transaction():
        row_id = await conn.fetchval(
            """INSERT INTO gateway_webhook_requests (event_id, event_type, payload, signature)
               VALUES ($1, $2, $3, $4) ON CONFLICT (event_id) DO NOTHING RETURNING id""",
            event.event_id, event.event_type, data, signature)
        if row_id is None:  # a gateway retry of an event we already have: no second effect
            return Reply(WebhookResult(event_id=event.event_id, status="duplicate"), "Event already processed")
        result = await apply_payment_outcome(conn, event.outcome(), now,
                                             dunning=DunningPolicy(tuple(settings.dunning_retry_days)),
                                             correlation_id=request.get("correlation_id"))
        # An unknown subscription is kept as 'ignored' and still answered 200: a gateway retries
        # any non-2xx for days, and no retry will ever make this subscription exist.
        status = "ignored" if result == "ignored" else "processed"
        await conn.execute(
            "UPDATE gateway_webhook_requests SET status = $2, processed_at = $3, error = $4 WHERE id = $1",
            row_id, status, now, "unknown subscription" if status == "ignored" else None)
    message = "Webhook processed successfully" if status == "processed" else "Webhook ignored: unknown subscription"
    return Reply(WebhookResult(event_id=event.event_id, status=status), message)
