"""Payments front door (8002): pay a subscription with a card, refunds, history, saved cards.

Card numbers and CVVs live only in SecretStr fields and in the pure gateway call; responses,
tables and logs only ever see brand, last4 and expiry.

A gateway timeout answers 504 `gateway_timeout` and leaves the transaction pending. A 5xx is not
stored by the idempotency layer, so the client retries with the SAME Idempotency-Key: the retry
finds the pending transaction by that key and asks the gateway again with the same gateway key,
which maps to the same gateway charge. A request with a different key while a charge of the
subscription is pending answers 409 `payment_pending`. Either way a timeout never charges twice.
"""
from __future__ import annotations

import re
from datetime import datetime
from decimal import Decimal
from typing import Any
from uuid import UUID

import asyncpg
import structlog
from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, field_validator

from billing.commands import REFUND_PAYMENT, RefundPayment
from billing.consumers import payments as payment_actors
from billing.consumers.deps import Deps
from billing.http.api import Reply, Routes
from billing.http.pagination import Page, PageQuery
from billing.http.context import CLOCK, POOL, REDIS, SETTINGS, path_uuid, user_id
from billing.http.errors import ApiError, Conflict, NotFound, PaymentRequired, ValidationFailed
from billing.http.idempotency import HEADER
from billing.money import CurrencyMismatch, Money, parse_amount
from billing.payments import (CardDetails, MockGateway, RefundError, TransactionStatus, status_for_gateway_result,
                              validate_refund)
from billing.sql import payment_methods, transactions

routes = Routes("payments")
log = structlog.get_logger("billing.payments")

# Tests put a counting gateway here; the default is the pure mock.
GATEWAY = web.AppKey("gateway", MockGateway)


class GatewayTimedOut(ApiError):
    status, code = 504, "gateway_timeout"


# -- request and response models ------------------------------------------------------------------


def _amount(value: Any) -> Decimal:
    try:
        amount = parse_amount(value)
    except TypeError:
        raise ValueError("amount must be a decimal string such as \"9.99\"") from None
    if amount <= 0:
        raise ValueError("amount must be positive")
    return amount


class CardFields(BaseModel):
    model_config = ConfigDict(hide_input_in_errors=True)

    card_number: SecretStr = Field(description="12-19 digits, spaces or dashes allowed; never stored")
    card_expiry: str = Field(description="MM/YY", examples=["12/30"])
    card_cvv: SecretStr = Field(description="3 digits, 4 for Amex; never stored")
    cardholder_name: str = Field(min_length=2, max_length=100, pattern=r"^[a-zA-Z\s\-'.]+$")


class PaymentRequest(CardFields):
    subscription_id: UUID
    amount: Decimal = Field(description="decimal string, must equal what is due", examples=["9.99"])
    currency: str = Field(pattern=r"^[A-Z]{3}$", examples=["USD"])
    save_payment_method: bool = True

    @field_validator("amount", mode="before")
    @classmethod
    def _positive(cls, value: Any) -> Decimal:
        return _amount(value)


class RefundRequest(BaseModel):
    amount: Decimal | None = Field(None, description="omit for a full refund", examples=["5.00"])
    reason: str | None = Field(None, max_length=200)

    @field_validator("amount", mode="before")
    @classmethod
    def _positive(cls, value: Any) -> Decimal | None:
        return None if value is None else _amount(value)


class TransactionOut(BaseModel):
    id: UUID
    kind: str
    status: str
    amount: Decimal
    refunded_amount: Decimal
    currency: str
    reason: str | None
    subscription_id: UUID | None
    parent_id: UUID | None
    card_brand: str | None
    card_last4: str | None
    gateway_reference: str | None
    decline_code: str | None
    created_at: datetime
    updated_at: datetime


class PaymentMethodOut(BaseModel):
    id: UUID
    brand: str
    last4: str
    exp_month: int
    exp_year: int
    is_default: bool
    created_at: datetime


def transaction_out(row: asyncpg.Record) -> dict:
    data = {k: row[k] for k in TransactionOut.model_fields if k != "currency"}
    return TransactionOut(**data, currency=row["currency"].strip()).model_dump(mode="json")


def method_out(row: asyncpg.Record) -> dict:
    return PaymentMethodOut(**{k: row[k] for k in PaymentMethodOut.model_fields}).model_dump(mode="json")


_FIELD = {"number": "card_number", "exp_month": "card_expiry", "exp_year": "card_expiry", "cvv": "card_cvv"}
_EXPIRY = re.compile(r"^(\d{2})/(\d{2})$")


def parse_card(body: CardFields, now: datetime) -> CardDetails:
    """The validated card, or 422 with card_number / card_expiry / card_cvv details (never the values)."""
    details = []
    match = _EXPIRY.match(body.card_expiry.strip())
    month, year = (int(match[1]), int(match[2])) if match else (12, 99)
    if not match:
        details.append({"field": "card_expiry", "message": "expiry must be MM/YY", "type": "invalid_expiry"})
    try:
        card = CardDetails.parse({"number": body.card_number.get_secret_value(), "exp_month": month,
                                  "exp_year": year, "cvv": body.card_cvv.get_secret_value()}, now)
    except ValidationError as exc:
        for err in exc.errors(include_url=False, include_input=False, include_context=False):
            name = _FIELD.get(str(err["loc"][0]) if err["loc"] else "", "card")
            details.append({"field": name, "message": err["msg"], "type": err["type"]})
    if details:
        raise ValidationFailed("invalid card", details, code="invalid_card")
    return card


def _deps(request: web.Request) -> Deps:
    app = request.app
    return Deps(settings=app[SETTINGS], pool=app[POOL], redis=app[REDIS], clock=app[CLOCK])


def _gateway(request: web.Request) -> MockGateway:
    return request.app.get(GATEWAY) or payment_actors.GATEWAY


# -- paying a subscription ------------------------------------------------------------------------


@routes.post("/v1/payments/process", body=PaymentRequest, response=TransactionOut, status=201, idempotent=True,
             errors=(402, 404, 409, 422, 504), summary="Pay a pending or past-due subscription with a card")
async def process_payment(request: web.Request, body: PaymentRequest):
    """Charge the amount due on a pending (first payment) or past_due (dunning) subscription."""
    uid, now = user_id(request), request.app[CLOCK].now()
    # Namespaced so a client's key can never collide with a worker's charge_key (or a refund's key).
    key = "api:" + request.headers[HEADER].strip()
    card = parse_card(body, now)
    deps, gateway = _deps(request), _gateway(request)
    async with request.app[POOL].acquire() as conn:
        async with conn.transaction():
            sub = await transactions.lock_subscription_for_user(conn, body.subscription_id, uid)
            if sub is None:
                raise NotFound("no such subscription")
            txn = await transactions.get_by_key(conn, uid, key, for_update=True)
            if txn is None:
                txn = await _new_charge(conn, sub, body, card, uid, key, now)
            elif not _same_charge(txn, body, card):
                raise Conflict(f"this {HEADER} was already used with a different request", code="idempotency_key_reused")
            if txn["status"] == TransactionStatus.PENDING:  # new, or a retry after a gateway timeout
                amount = Money.of(txn["amount"], txn["currency"].strip())
                # The gateway key is the client's key (per user): a retry reaches the same gateway charge.
                result = gateway.charge(card.number.get_secret_value(), amount, now, idempotency_key=f"{uid}:{key}")
                status = status_for_gateway_result(result)
                if status != TransactionStatus.PENDING:
                    txn = await transactions.finish(
                        conn, txn["id"], status=status.value, gateway_reference=result.gateway_reference,
                        decline_code=result.decline_code,
                        error_message=None if status == TransactionStatus.SUCCEEDED else result.message)
                    if status == TransactionStatus.SUCCEEDED and body.save_payment_method:
                        await payment_methods.create_default(
                            conn, user_id=uid, brand=card.brand.value, last4=card.last4, exp_month=card.exp_month,
                            exp_year=card.exp_year, gateway_token=gateway.tokenize(card))
                    await payment_actors.enqueue_outcome(conn, deps, txn, now=now, plan_id=sub["plan_id"])
    out = transaction_out(txn)
    log.info("payment processed", transaction_id=out["id"], status=out["status"], card_last4=out["card_last4"])
    if txn["status"] == TransactionStatus.PENDING:
        raise GatewayTimedOut("the payment gateway did not answer; retry with the same Idempotency-Key", out)
    if txn["status"] == TransactionStatus.FAILED:
        raise PaymentRequired(txn["error_message"] or "payment declined", out)
    return Reply(out, "payment succeeded", 201)


async def _new_charge(conn, sub, body: PaymentRequest, card: CardDetails, uid: UUID, key: str,
                      now: datetime) -> asyncpg.Record:
    """Check the subscription can be paid for this amount now, then insert the pending charge."""
    if sub["status"] == "pending":
        reason, since = "subscription_create", None
    elif sub["status"] == "past_due":
        # A charge since the subscription fell due settles it. Unknown since when: any charge does.
        reason, since = "dunning_retry", sub["past_due_since"] or sub["current_period_start"]
    else:
        raise Conflict(f"a {sub['status']} subscription has nothing to pay", code="subscription_not_payable")
    due = Money.of(sub["price"], sub["currency"].strip())
    if body.currency != due.currency or body.amount != due.amount:
        raise ValidationFailed("amount does not match what is due", code="amount_mismatch",
                               details={"amount_due": str(due.amount), "currency": due.currency})
    blocking = await transactions.blocking_charge(conn, sub["id"], since=since)
    if blocking is not None:
        code = "payment_pending" if blocking["status"] == TransactionStatus.PENDING else "already_paid"
        raise Conflict("this subscription already has a payment " + ("in progress" if code == "payment_pending" else "for this period"),
                       code=code, details={"transaction_id": str(blocking["id"])})
    txn = await transactions.create(
        conn, user_id=uid, subscription_id=sub["id"], kind="charge", amount=due.amount, currency=due.currency,
        reason=reason, card_brand=card.brand.value, card_last4=card.last4, idempotency_key=key, created_at=now)
    if txn is None:  # the key is held by a transaction of another kind (e.g. no subscription match)
        raise Conflict(f"this {HEADER} was already used with a different request", code="idempotency_key_reused")
    return txn


def _same_charge(txn: asyncpg.Record, body: PaymentRequest, card: CardDetails) -> bool:
    return (txn["kind"] == "charge" and txn["subscription_id"] == body.subscription_id
            and txn["amount"] == body.amount and txn["currency"].strip() == body.currency
            and txn["card_last4"] == card.last4 and txn["card_brand"] == card.brand.value)


# -- refunds -------------------------------------------------------------------------------------


@routes.post("/v1/payments/{id}/refund", body=RefundRequest, response=TransactionOut, status=202, idempotent=True,
             errors=(404, 409, 422), summary="Refund a payment, fully or partly")
async def refund_payment(request: web.Request, body: RefundRequest):
    """The refund is pending until the payments worker has the gateway's answer."""
    uid, key, charge_id = user_id(request), request.headers[HEADER].strip(), path_uuid(request)
    deps = _deps(request)
    async with request.app[POOL].acquire() as conn:
        async with conn.transaction():
            # The charge's row lock serialises refunds of one payment: their sum never exceeds it.
            charge = await transactions.get_for_user(conn, charge_id, uid, for_update=True)
            if charge is None:
                raise NotFound("no such payment")
            if charge["kind"] != "charge" or charge["status"] not in ("succeeded", "partially_refunded"):
                raise Conflict(f"a {charge['status']} {charge['kind']} cannot be refunded", code="not_refundable")
            currency = charge["currency"].strip()
            committed = charge["refunded_amount"] + await transactions.pending_refunds(conn, charge["id"])
            try:
                amount = validate_refund(Money.of(charge["amount"], currency), Money.of(committed, currency),
                                         None if body.amount is None else Money.of(body.amount, currency))
            except RefundError as exc:
                if exc.reason == "nothing_to_refund":
                    raise Conflict(str(exc), code="nothing_to_refund") from None
                raise ValidationFailed(str(exc), code=exc.reason, details={
                    "refundable": str(charge["amount"] - committed), "currency": currency}) from None
            except CurrencyMismatch as exc:  # pragma: no cover - the amount takes the charge's currency
                raise ValidationFailed(str(exc), code="currency_mismatch") from None
            refund = await transactions.create(
                conn, user_id=uid, subscription_id=charge["subscription_id"], parent_id=charge["id"], kind="refund",
                amount=amount.amount, currency=currency, reason=body.reason or "requested_by_customer",
                idempotency_key=f"refund:{key}", created_at=request.app[CLOCK].now())
            if refund is None:
                raise Conflict(f"this {HEADER} was already used for another refund", code="idempotency_key_reused")
            await deps.enqueue(conn, "refund_initiation", REFUND_PAYMENT, RefundPayment(
                refund_id=refund["id"], charge_id=charge["id"], user_id=uid, amount=amount.amount, currency=currency),
                correlation_id=str(charge["id"]))
    return Reply(transaction_out(refund), "refund initiated", 202)


# -- reads ----------------------------------------------------------------------------------------


@routes.get("/v1/payments/history", query=PageQuery, response=Page[TransactionOut], summary="Your charges and refunds, newest first")
async def history(request: web.Request, query: PageQuery):
    uid = user_id(request)
    async with request.app[POOL].acquire() as conn:
        rows = await transactions.list_for_user(conn, uid, limit=query.page_size, offset=query.offset)
        total = await transactions.count_for_user(conn, uid)
    return {"items": [transaction_out(r) for r in rows], "total": total, "page": query.page, "page_size": query.page_size}


@routes.get("/v1/payments/{id}", response=TransactionOut, errors=(404,), summary="One of your transactions")
async def get_payment(request: web.Request):
    row = await transactions.get_for_user(request.app[POOL], path_uuid(request), user_id(request))
    if row is None:
        raise NotFound("no such payment")
    return transaction_out(row)


# -- saved cards ----------------------------------------------------------------------------------


@routes.post("/v1/payment-methods", body=CardFields, response=PaymentMethodOut, status=201, idempotent=True,
             errors=(422,), summary="Attach a card as your default without charging it (used for renewals)")
async def attach_payment_method(request: web.Request, body: CardFields):
    uid, now = user_id(request), request.app[CLOCK].now()
    card = parse_card(body, now)
    token = _gateway(request).tokenize(card)
    async with request.app[POOL].acquire() as conn:
        async with conn.transaction():
            row = await payment_methods.create_default(conn, user_id=uid, brand=card.brand.value, last4=card.last4,
                                                       exp_month=card.exp_month, exp_year=card.exp_year,
                                                       gateway_token=token)
    return method_out(row)


@routes.get("/v1/payment-methods", response=list[PaymentMethodOut], summary="Your saved cards, default first")
async def list_payment_methods(request: web.Request):
    return [method_out(r) for r in await payment_methods.list_for_user(request.app[POOL], user_id(request))]
