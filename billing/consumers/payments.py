"""Payment actors: charge a subscription with the saved card, complete refunds.

Each handler is a plain function of (deps, payload, ...) that tests call directly; the routers
bind them to their streams. A charge is idempotent by its charge_key (the transaction's
idempotency key), so a redelivered or duplicated command never charges twice.
"""
from __future__ import annotations

from datetime import datetime
from uuid import UUID

import asyncpg
import structlog

from billing.commands import (CHARGE_SUBSCRIPTION, DELIVER_GATEWAY_WEBHOOK, PAYMENT_OUTCOME, REFUND_PAYMENT,
                              ChargeSubscription, GatewayWebhook, PaymentOutcome, RefundPayment)
from billing.consumers.deps import Deps
from billing.money import Money
from billing.payments import (CardError, GatewayResult, GatewayStatus, MockGateway, TransactionStatus, check_expiry,
                              status_after_refund, status_for_gateway_result)
from billing.sql import payment_methods, transactions
from billing.streams import Envelope, PermanentError, Router, claim_inbox

log = structlog.get_logger("billing.payments")

GATEWAY = MockGateway()


class GatewayTimeout(Exception):
    """The gateway did not answer: the transaction stays pending and the command is retried."""


async def enqueue_outcome(conn: asyncpg.Connection, deps: Deps, txn: asyncpg.Record, *, now: datetime,
                          plan_id: UUID | None = None, charge_key: str | None = None) -> PaymentOutcome:
    """In the caller's transaction: tell subscriptions what happened to a finished charge, both as a
    PaymentOutcome command and as the mock gateway's signed webhook to POST /v1/webhooks/payment."""
    outcome = PaymentOutcome(
        transaction_id=txn["id"], subscription_id=txn["subscription_id"], user_id=txn["user_id"],
        status=txn["status"], amount=txn["amount"], currency=txn["currency"].strip(), reason=txn["reason"],
        charge_key=charge_key, plan_id=plan_id, decline_code=txn["decline_code"], occurred_at=now,
    )
    await deps.enqueue(conn, "subscription_update", PAYMENT_OUTCOME, outcome, correlation_id=str(txn["id"]))
    body = webhook_body(outcome)
    await deps.enqueue(conn, "gateway_webhook", DELIVER_GATEWAY_WEBHOOK,
                       GatewayWebhook(event_id=body["event_id"], body=body), correlation_id=str(txn["id"]))
    return outcome


def webhook_body(outcome: PaymentOutcome) -> dict:
    """The gateway's notification for 8001; money as a string, ids as strings, one event per transaction."""
    data = outcome.model_dump(mode="json")
    return {
        "event_id": f"evt_{outcome.transaction_id}",
        "event_type": f"payment.{outcome.status}",
        **{k: data[k] for k in ("transaction_id", "subscription_id", "user_id", "status", "currency", "reason",
                                "plan_id", "decline_code", "charge_key", "occurred_at")},
        "amount": str(outcome.amount),
    }


async def charge_subscription(deps: Deps, envelope: Envelope, cmd: ChargeSubscription, *,
                              gateway: MockGateway = GATEWAY, consumer: str = "payments.charge_subscription") -> None:
    """Charge the user's default card once per charge_key. No card: a failed outcome
    (no_payment_method). Gateway timeout: the pending row commits and GatewayTimeout makes the
    runtime retry later; the retry finds the row by charge_key and asks the gateway with the same key."""
    now = deps.clock.now()
    amount = Money.of(cmd.amount, cmd.currency)
    async with deps.pool.acquire() as conn:
        async with conn.transaction():
            method = await payment_methods.get_default(conn, cmd.user_id)
            txn = await _pending_charge(conn, cmd, amount, method)
            if txn is None:  # already finished by an earlier delivery or a duplicate command
                await claim_inbox(conn, consumer, envelope.id)
                log.info("charge already done", charge_key=cmd.charge_key)
                return
            if method is None:
                result = GatewayResult(GatewayStatus.DECLINED, None, "no_payment_method", "no default payment method")
            else:
                result = _charge_method(gateway, method, amount, now, cmd.charge_key)
            status = status_for_gateway_result(result)
            if status == TransactionStatus.PENDING:
                timed_out = txn["id"]  # commit the pending row, but not the inbox claim: the retry must run
            else:
                timed_out = None
                txn = await transactions.finish(conn, txn["id"], status=status.value,
                                                gateway_reference=result.gateway_reference,
                                                decline_code=result.decline_code,
                                                error_message=None if status == TransactionStatus.SUCCEEDED else result.message)
                await claim_inbox(conn, consumer, envelope.id)
                await enqueue_outcome(conn, deps, txn, now=now, plan_id=cmd.plan_id, charge_key=cmd.charge_key)
    if timed_out is not None:
        raise GatewayTimeout(f"gateway timeout for charge {cmd.charge_key}; transaction {timed_out} stays pending")
    log.info("subscription charged", charge_key=cmd.charge_key, status=txn["status"],
             transaction_id=str(txn["id"]), decline_code=txn["decline_code"])


async def _pending_charge(conn: asyncpg.Connection, cmd: ChargeSubscription, amount: Money,
                          method: asyncpg.Record | None) -> asyncpg.Record | None:
    """The locked pending transaction of this charge_key (created if new); None if it is already final."""
    txn = await transactions.create(
        conn, user_id=cmd.user_id, subscription_id=cmd.subscription_id, kind="charge", amount=amount.amount,
        currency=amount.currency, reason=cmd.reason, idempotency_key=cmd.charge_key,
        card_brand=method["brand"] if method else None, card_last4=method["last4"] if method else None,
        metadata={"plan_id": str(cmd.plan_id) if cmd.plan_id else None})
    if txn is None:  # the key exists (a concurrent duplicate waited here for the first one to commit)
        txn = await transactions.get_by_key(conn, cmd.user_id, cmd.charge_key, for_update=True)
        if txn["status"] != TransactionStatus.PENDING:
            return None
    return txn


def _charge_method(gateway: MockGateway, method: asyncpg.Record, amount: Money, now: datetime, key: str) -> GatewayResult:
    try:
        check_expiry(method["exp_month"], method["exp_year"], now)
    except CardError as exc:  # the saved card expired since it was attached: no gateway call
        return GatewayResult(GatewayStatus.DECLINED, None, exc.code, str(exc))
    return gateway.charge_token(method["gateway_token"], amount, now, idempotency_key=key)


async def refund_payment(deps: Deps, envelope: Envelope, cmd: RefundPayment, *,
                         gateway: MockGateway = GATEWAY, consumer: str = "payments.refund_payment") -> None:
    now = deps.clock.now()
    async with deps.pool.acquire() as conn:
        async with conn.transaction():
            if not await claim_inbox(conn, consumer, envelope.id):
                return
            # Lock order charge -> refund, the same as the refund endpoint's, so they cannot deadlock.
            charge = await transactions.get(conn, cmd.charge_id, for_update=True)
            refund = await transactions.get(conn, cmd.refund_id, for_update=True)
            if charge is None or refund is None or refund["parent_id"] != charge["id"]:
                raise PermanentError(f"refund {cmd.refund_id} of charge {cmd.charge_id} not found")
            if refund["status"] != "pending":  # completed by an earlier command for the same refund
                return
            currency = charge["currency"].strip()
            amount = Money.of(refund["amount"], currency)
            result = gateway.refund(charge["gateway_reference"], amount, now, idempotency_key=str(refund["id"]))
            if result.status != GatewayStatus.SUCCEEDED:
                raise RuntimeError(f"gateway refund {result.status}: {result.message}")
            await transactions.finish(conn, refund["id"], status="succeeded", gateway_reference=result.gateway_reference)
            refunded = Money.of(charge["refunded_amount"], currency) + amount
            status = status_after_refund(Money.of(charge["amount"], currency), refunded)
            await transactions.add_refunded(conn, charge["id"], amount.amount, status.value)
    log.info("refund completed", refund_id=str(cmd.refund_id), charge_id=str(cmd.charge_id), amount=str(amount))


def build_routers(deps: Deps) -> dict[str, Router]:
    async def on_charge(envelope: Envelope, cmd: ChargeSubscription) -> None:
        await charge_subscription(deps, envelope, cmd)

    async def on_refund(envelope: Envelope, cmd: RefundPayment) -> None:
        await refund_payment(deps, envelope, cmd)

    routers = {family: Router() for family in ("payment_initiation", "trial_payment", "refund_initiation")}
    routers["payment_initiation"].register(CHARGE_SUBSCRIPTION, ChargeSubscription, on_charge)
    routers["trial_payment"].register(CHARGE_SUBSCRIPTION, ChargeSubscription, on_charge)
    routers["refund_initiation"].register(REFUND_PAYMENT, RefundPayment, on_refund)
    return routers
