"""Invoices repository: one paid invoice per successful charge, refund lines as credit notes.

Lines and totals come from billing.invoices (pure); this module only numbers and stores them.
Both writers are idempotent (an invoice per charge transaction, a line per refund transaction),
so a redelivered PaymentOutcome or refund result never bills or credits twice.
"""
from __future__ import annotations

from datetime import datetime, timedelta
from typing import Sequence
from uuid import UUID

import asyncpg
import structlog

from billing.commands import PaymentOutcome
from billing.invoices import InvoiceLine, LineKind, build_invoice, plan_charge_line, proration_lines
from billing.money import Money
from billing.plans import Period, Plan
from billing.sql import plans
from billing.subscriptions import prorate

log = structlog.get_logger("billing.invoices")

_COLUMNS = ("id, user_id, subscription_id, number, status, reason, currency, subtotal, total, amount_due, amount_paid,"
            " amount_refunded, period_start, period_end, transaction_id, paid_at, created_at")
_LINE_COLUMNS = "id, invoice_id, position, kind, description, amount, period_start, period_end, transaction_id, created_at"


async def next_number(conn: asyncpg.Connection) -> str:
    n = await conn.fetchval("SELECT nextval('invoice_number_seq')")
    return f"INV-{n:06d}"  # grows past six digits instead of truncating


async def create(conn: asyncpg.Connection, *, user_id: UUID, subscription_id: UUID | None, reason: str,
                 lines: Sequence[InvoiceLine], now: datetime, status: str = "paid",
                 transaction_id: UUID | None = None) -> asyncpg.Record:
    """Store an invoice with its lines; with a transaction_id, the existing invoice of that charge if any."""
    if transaction_id is not None:
        existing = await get_by_transaction(conn, transaction_id)
        if existing is not None:
            return existing
    totals = build_invoice(lines)
    starts = [line.period_start for line in lines if line.period_start is not None]
    ends = [line.period_end for line in lines if line.period_end is not None]
    paid = status == "paid"
    async with conn.transaction():  # a savepoint inside the caller's transaction
        row = await conn.fetchrow(
            f"""INSERT INTO invoices (user_id, subscription_id, number, status, reason, currency, subtotal, total,
                                      amount_due, amount_paid, period_start, period_end, transaction_id, paid_at, created_at)
                VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15)
                RETURNING {_COLUMNS}""",
            user_id, subscription_id, await next_number(conn), status, reason, totals.currency,
            totals.subtotal.amount, totals.total.amount, totals.amount_due.amount,
            totals.amount_due.amount if paid else 0, min(starts, default=None), max(ends, default=None),
            transaction_id, now if paid else None, now,
        )
        for position, line in enumerate(lines, start=1):
            await _insert_line(conn, row["id"], position, line, now)
    return row


async def _insert_line(conn: asyncpg.Connection, invoice_id: UUID, position: int, line: InvoiceLine, now: datetime,
                       transaction_id: UUID | None = None) -> None:
    await conn.execute(
        """INSERT INTO invoice_lines (invoice_id, position, kind, description, amount, period_start, period_end,
                                      transaction_id, created_at)
           VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)""",
        invoice_id, position, line.kind.value, line.description, line.amount.amount, line.period_start,
        line.period_end, transaction_id, now,
    )


async def create_invoice_for_payment(conn: asyncpg.Connection, outcome: PaymentOutcome, *,
                                     now: datetime) -> asyncpg.Record | None:
    """The paid invoice of a successful subscription charge. Call it where the outcome has just been applied
    to the subscription, in the same transaction: the subscription row then holds the period paid for.

    - subscription_create / renewal / trial_conversion / dunning_retry (any reason but upgrade): one
      plan_charge line for the current period, at the amount actually charged;
    - upgrade: the proration credit for the old plan and debit for the new one from the moment of the change
      (its upgrade_payment_requested event, found by charge_key) to the period end; if those do not add up to
      the amount charged (a bug upstream), one proration_debit line for what was charged, logged as such.
    Returns None for a failed outcome or one without a subscription (nothing to invoice). Idempotent.
    """
    if outcome.status != "succeeded" or outcome.subscription_id is None:
        return None
    sub = await conn.fetchrow(
        "SELECT plan_id, current_period_start, current_period_end FROM subscriptions WHERE id = $1",
        outcome.subscription_id)
    if sub is None:
        return None
    charged = Money.of(outcome.amount, outcome.currency)
    plan = plans.to_domain(await plans.get(conn, outcome.plan_id if outcome.reason == "upgrade" and outcome.plan_id
                                           else sub["plan_id"]))
    period = Period(sub["current_period_start"], sub["current_period_end"])
    if outcome.reason == "upgrade":
        lines = await _upgrade_lines(conn, outcome, plan, period, charged)
    else:
        line = plan_charge_line(plan, period)
        lines = [InvoiceLine(line.kind, line.description, charged, line.period_start, line.period_end)]
    return await create(conn, user_id=outcome.user_id, subscription_id=outcome.subscription_id,
                        reason=outcome.reason, lines=lines, now=now, transaction_id=outcome.transaction_id)


async def _upgrade_lines(conn: asyncpg.Connection, outcome: PaymentOutcome, new: Plan, period: Period,
                         charged: Money) -> list[InvoiceLine]:
    requested = await conn.fetchrow(
        """SELECT data FROM subscription_events
           WHERE subscription_id = $1 AND event_type = 'upgrade_payment_requested' AND data->>'charge_key' = $2""",
        outcome.subscription_id, outcome.charge_key)
    if requested is not None:
        at = datetime.fromisoformat(requested["data"]["effective_at"])
        old = plans.to_domain(await plans.get(conn, UUID(requested["data"]["from_plan_id"])))
        lines = proration_lines(prorate(old.price, new.price, period.start, period.end, at), old, new, at, period.end)
        if build_invoice(lines).amount_due == charged:
            return lines
        log.error("upgrade proration does not match the charge", charge_key=outcome.charge_key,
                  lines_total=str(build_invoice(lines).amount_due), charged=str(charged))
    else:
        at = outcome.occurred_at
    start = min(max(at, period.start), period.end - timedelta(microseconds=1))
    return [InvoiceLine(LineKind.PRORATION_DEBIT, f"Upgrade to {new.name} (prorated)", charged, start, period.end)]


async def record_refund(conn: asyncpg.Connection, *, charge_id: UUID, refund_id: UUID, amount: Money,
                        now: datetime) -> asyncpg.Record | None:
    """A completed refund becomes a refund line (a credit note) on the invoice of the charge it refunds.

    The invoice's original totals stay as billed; amount_refunded grows. Adding the same refund twice is a
    no-op. Returns the invoice, or None when the charge has no invoice (e.g. a charge outside subscriptions).
    """
    invoice = await conn.fetchrow(f"SELECT {_COLUMNS} FROM invoices WHERE transaction_id = $1 FOR UPDATE", charge_id)
    if invoice is None:
        return None
    if await conn.fetchval("SELECT 1 FROM invoice_lines WHERE transaction_id = $1", refund_id):
        return invoice
    if amount.currency != invoice["currency"].strip():
        raise ValueError(f"refund in {amount.currency}, invoice in {invoice['currency']}")
    if invoice["amount_refunded"] + amount.amount > invoice["amount_paid"]:
        raise ValueError("refunds would exceed what the invoice was paid")
    position = await conn.fetchval("SELECT max(position) + 1 FROM invoice_lines WHERE invoice_id = $1", invoice["id"])
    line = InvoiceLine(LineKind.REFUND, f"Refund of invoice {invoice['number']}", amount)
    await _insert_line(conn, invoice["id"], position, line, now, transaction_id=refund_id)
    return await conn.fetchrow(
        f"UPDATE invoices SET amount_refunded = amount_refunded + $2 WHERE id = $1 RETURNING {_COLUMNS}",
        invoice["id"], amount.amount,
    )


async def get_by_transaction(conn: asyncpg.Connection, transaction_id: UUID) -> asyncpg.Record | None:
    return await conn.fetchrow(f"SELECT {_COLUMNS} FROM invoices WHERE transaction_id = $1", transaction_id)


async def get_for_user(conn: asyncpg.Connection, invoice_id: UUID, user_id: UUID) -> asyncpg.Record | None:
    return await conn.fetchrow(f"SELECT {_COLUMNS} FROM invoices WHERE id = $1 AND user_id = $2", invoice_id, user_id)


async def lines(conn: asyncpg.Connection, invoice_id: UUID) -> list[asyncpg.Record]:
    return await conn.fetch(f"SELECT {_LINE_COLUMNS} FROM invoice_lines WHERE invoice_id = $1 ORDER BY position",
                            invoice_id)


async def list_for_user(conn: asyncpg.Connection, user_id: UUID, *, limit: int, offset: int
                        ) -> tuple[list[asyncpg.Record], int]:
    """One page of the user's invoices, newest first, and how many there are in all."""
    rows = await conn.fetch(
        f"""SELECT {_COLUMNS} FROM invoices WHERE user_id = $1
            ORDER BY created_at DESC, number DESC LIMIT $2 OFFSET $3""",
        user_id, limit, offset,
    )
    total = await conn.fetchval("SELECT count(*) FROM invoices WHERE user_id = $1", user_id)
    return list(rows), total
