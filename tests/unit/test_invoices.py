from datetime import datetime, timezone
from decimal import Decimal

import pytest
from hypothesis import given
from hypothesis import strategies as st

from billing.invoices import InvoiceLine, InvoiceTotals, LineKind, build_invoice, plan_charge_line, proration_lines
from billing.money import CurrencyMismatch, Money
from billing.plans import DEMO_PLANS_BY_ID, Period
from billing.subscriptions import prorate
from billing.utc import NaiveDatetime

UTC = timezone.utc
BASIC, PRO = DEMO_PLANS_BY_ID["basic"], DEMO_PLANS_BY_ID["pro"]
APRIL = Period(datetime(2025, 4, 1, tzinfo=UTC), datetime(2025, 5, 1, tzinfo=UTC))
MID_APRIL = datetime(2025, 4, 16, tzinfo=UTC)


def usd(x: str) -> Money:
    return Money.of(x, "USD")


def test_plan_charge_invoice():
    line = plan_charge_line(PRO, APRIL)
    assert (line.kind, line.description, line.amount, line.period_start, line.period_end) == (
        LineKind.PLAN_CHARGE, "Pro (monthly)", usd("29.99"), APRIL.start, APRIL.end)
    totals = build_invoice([line])
    assert totals == InvoiceTotals("USD", usd("29.99"), usd("0"), usd("29.99"), usd("29.99"))


def test_upgrade_invoice_totals_equal_the_proration_net():
    proration = prorate(BASIC.price, PRO.price, APRIL.start, APRIL.end, MID_APRIL)
    lines = proration_lines(proration, BASIC, PRO, MID_APRIL, APRIL.end)
    assert [(l.kind, l.amount) for l in lines] == [
        (LineKind.PRORATION_CREDIT, usd("5.00")), (LineKind.PRORATION_DEBIT, usd("15.00"))]
    assert lines[0].description == "Unused time on Basic" and lines[1].description == "Remaining time on Pro"
    totals = build_invoice(lines)
    assert (totals.subtotal, totals.credits, totals.total, totals.amount_due) == (usd("15.00"), usd("5.00"), usd("10.00"), usd("10.00"))
    assert totals.total == proration.net


def test_credits_larger_than_charges_leave_nothing_due():
    refund = InvoiceLine(LineKind.REFUND, "Refund", usd("40"))
    totals = build_invoice([plan_charge_line(PRO, APRIL), refund])
    assert totals.total == Money.of("-10.01", "USD", allow_negative=True)
    assert totals.amount_due == usd("0")
    assert refund.signed_amount == -usd("40")


def test_free_plan_charge_is_a_zero_line():
    totals = build_invoice([plan_charge_line(DEMO_PLANS_BY_ID["trial"], APRIL)])
    assert totals.total.is_zero() and totals.amount_due.is_zero()


def test_invoice_refuses_empty_and_mixed_currencies():
    with pytest.raises(ValueError):
        build_invoice([])
    euro = InvoiceLine(LineKind.PLAN_CHARGE, "Pro EUR", Money.of("1", "EUR"), *APRIL)
    with pytest.raises(CurrencyMismatch):
        build_invoice([plan_charge_line(PRO, APRIL), euro])


@pytest.mark.parametrize(
    "kwargs, error",
    [
        (dict(kind=LineKind.PLAN_CHARGE, description="x", amount=-usd("1"), period_start=APRIL.start, period_end=APRIL.end), ValueError),
        (dict(kind=LineKind.PLAN_CHARGE, description=" ", amount=usd("1"), period_start=APRIL.start, period_end=APRIL.end), ValueError),
        (dict(kind=LineKind.PLAN_CHARGE, description="x", amount=usd("1")), ValueError),
        (dict(kind=LineKind.PRORATION_CREDIT, description="x", amount=usd("1")), ValueError),
        (dict(kind=LineKind.REFUND, description="x", amount=usd("1"), period_start=APRIL.start), ValueError),
        (dict(kind=LineKind.PLAN_CHARGE, description="x", amount=usd("1"), period_start=APRIL.end, period_end=APRIL.start), ValueError),
        (dict(kind="discount", description="x", amount=usd("1")), ValueError),
        (dict(kind=LineKind.PLAN_CHARGE, description="x", amount=usd("1"), period_start=datetime(2025, 4, 1), period_end=datetime(2025, 5, 1)), NaiveDatetime),
    ],
)
def test_invalid_lines(kwargs, error):
    with pytest.raises(error):
        InvoiceLine(**kwargs)


def test_kind_accepts_its_string_value():
    assert InvoiceLine("refund", "Refund", usd("1")).kind == LineKind.REFUND  # type: ignore[arg-type]


lines = st.builds(
    lambda kind, cents: InvoiceLine(kind, "line", Money(Decimal(cents).scaleb(-2), "USD"), *APRIL),
    st.sampled_from(list(LineKind)),
    st.integers(0, 10**7),
)


@given(st.lists(lines, min_size=1, max_size=20))
def test_total_is_the_sum_of_signed_lines(invoice_lines):
    totals = build_invoice(invoice_lines)
    assert totals.total == sum((l.signed_amount for l in invoice_lines), Money.zero("USD"))
    assert totals.total == totals.subtotal - totals.credits
    assert totals.amount_due == max(totals.total, Money.zero("USD"))
    assert not totals.subtotal.is_negative() and not totals.credits.is_negative()
