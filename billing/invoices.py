"""Invoice composition: lines in, totals out.

Line amounts are always non-negative magnitudes and the line's kind carries
the sign (credits and refunds subtract). A sign convention in one place
beats remembering to negate credits everywhere else.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Optional, Sequence

from billing.money import CurrencyMismatch, Money
from billing.plans import Period, Plan
from billing.subscriptions import Proration
from billing.utc import require_utc


class LineKind(StrEnum):
    PLAN_CHARGE = "plan_charge"
    PRORATION_DEBIT = "proration_debit"
    PRORATION_CREDIT = "proration_credit"
    REFUND = "refund"


_SUBTRACTS = frozenset({LineKind.PRORATION_CREDIT, LineKind.REFUND})


@dataclass(frozen=True)
class InvoiceLine:
    kind: LineKind
    description: str
    amount: Money  # magnitude, >= 0
    period_start: Optional[datetime] = None  # required except for refunds
    period_end: Optional[datetime] = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "kind", LineKind(self.kind))
        if not self.description.strip():
            raise ValueError("line description must not be empty")
        if self.amount.is_negative():
            raise ValueError("line amounts are magnitudes; the kind gives the sign")
        if (self.period_start is None) != (self.period_end is None):
            raise ValueError("give both period_start and period_end, or neither")
        if self.period_start is None:
            if self.kind != LineKind.REFUND:
                raise ValueError(f"{self.kind.value} lines need a period")
            return
        start = require_utc(self.period_start, "period_start")
        end = require_utc(self.period_end, "period_end")
        if not start < end:
            raise ValueError("period_start must be before period_end")
        object.__setattr__(self, "period_start", start)
        object.__setattr__(self, "period_end", end)

    @property
    def signed_amount(self) -> Money:
        return -self.amount if self.kind in _SUBTRACTS else self.amount


@dataclass(frozen=True)
class InvoiceTotals:
    currency: str
    subtotal: Money  # charges: plan_charge + proration_debit
    credits: Money  # proration_credit + refund, as a positive amount
    total: Money  # subtotal - credits; negative means we owe the customer
    amount_due: Money  # what to charge: total, floored at zero


def build_invoice(lines: Sequence[InvoiceLine]) -> InvoiceTotals:
    if not lines:
        raise ValueError("an invoice needs at least one line")
    currency = lines[0].amount.currency
    for line in lines:
        if line.amount.currency != currency:
            raise CurrencyMismatch(currency, line.amount.currency)
    zero = Money.zero(currency)
    subtotal = sum((l.amount for l in lines if l.kind not in _SUBTRACTS), zero)
    credits = sum((l.amount for l in lines if l.kind in _SUBTRACTS), zero)
    total = subtotal - credits
    return InvoiceTotals(currency, subtotal, credits, total, max(total, zero))


# -- line builders for the usual cases ----------------------------------------------


def plan_charge_line(plan: Plan, period: Period) -> InvoiceLine:
    return InvoiceLine(LineKind.PLAN_CHARGE, f"{plan.name} ({plan.billing_cycle.value})", plan.price, *period)


def proration_lines(proration: Proration, old: Plan, new: Plan, at: datetime, period_end: datetime) -> list[InvoiceLine]:
    """Credit for unused ``old`` time and debit for ``new`` over [at, period_end)."""
    return [
        InvoiceLine(LineKind.PRORATION_CREDIT, f"Unused time on {old.name}", proration.credit, at, period_end),
        InvoiceLine(LineKind.PRORATION_DEBIT, f"Remaining time on {new.name}", proration.debit, at, period_end),
    ]
