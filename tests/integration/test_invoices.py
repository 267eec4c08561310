"""Invoices from real payments, and the time-driven billing cycle end to end: HTTP -> outbox -> the payments
and subscriptions actors' handlers -> scheduler ticks, with a frozen clock moved by months."""
import uuid
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest

from billing.clock import FrozenClock
from billing.commands import PaymentOutcome
from billing.consumers.deps import Deps
from billing.plans import BillingCycle, add_cycle
from billing.scheduler import tick
from billing.sql import invoices
from tests.conftest import register
from tests.integration.scheduling import (CARD_CHARGE_FAILS, card, events, make_charge, make_subscription, post,
                                          run_actors, subscribe_and_pay, subscription)

T0 = datetime(2027, 1, 31, 9, 30, tzinfo=UTC)  # a month end: renewals must keep the 31st where it exists


@pytest.fixture
def clock():
    return FrozenClock(T0)


@pytest.fixture
def deps(settings, pool, redis, clock):
    return Deps(settings=settings, pool=pool, redis=redis, clock=clock)


async def until(clock, at: datetime) -> None:
    clock.advance(at - clock.now())


async def login(client, user) -> None:
    """A fresh token: after the clock moved, the old one has expired."""
    resp = await client.post("/v1/auth/login", json={"email": user["email"], "password": user["password"]})
    user["headers"] = {"Authorization": f"Bearer {(await resp.json())['data']['access_token']}"}


async def get(client, path, user):
    resp = await client.get(path, headers=user["headers"])
    return resp.status, await resp.json()


async def test_a_year_of_renewals_in_seconds(sub_client, pay_client, deps, pool, clock):
    user = await register(sub_client)
    sub = await subscribe_and_pay(sub_client, pay_client, user)
    await run_actors(deps)
    sub_id = uuid.UUID(sub["id"])
    assert (await subscription(pool, sub_id))["status"] == "active"

    for month in range(1, 13):
        await until(clock, add_cycle(T0, BillingCycle.MONTHLY, month))
        report = await tick(deps, clock.now())
        assert report.renewals_requested == 1, month
        await run_actors(deps)
        assert (await tick(deps, clock.now())).renewals_requested == 0  # the next period is not due yet

    row = await subscription(pool, sub_id)
    assert row["status"] == "active"
    assert (row["current_period_start"], row["current_period_end"]) == (
        datetime(2028, 1, 31, 9, 30, tzinfo=UTC), datetime(2028, 2, 29, 9, 30, tzinfo=UTC))
    charges = await pool.fetch("SELECT reason, status, amount FROM transactions WHERE subscription_id = $1", sub_id)
    assert len(charges) == 13 and {(c["status"], c["amount"]) for c in charges} == {("succeeded", Decimal("9.99"))}

    rows, total = await invoices.list_for_user(pool, uuid.UUID(user["user"]["id"]), limit=100, offset=0)
    assert total == 13 and {r["status"] for r in rows} == {"paid"}
    assert sorted(r["number"] for r in rows) == [f"INV-{n:06d}" for n in range(1, 14)]
    assert [r["reason"] for r in sorted(rows, key=lambda r: r["number"])] == ["subscription_create"] + ["renewal"] * 12
    periods = sorted((r["period_start"], r["period_end"]) for r in rows)
    assert periods[1] == (datetime(2027, 2, 28, 9, 30, tzinfo=UTC), datetime(2027, 3, 31, 9, 30, tzinfo=UTC))
    assert all(a[1] == b[0] for a, b in zip(periods, periods[1:]))  # back to back, no gap, no overlap

    await login(sub_client, user)  # a year has passed for the tokens too
    status, body = await get(sub_client, "/v1/invoices?page=2&page_size=5", user)
    assert status == 200 and body["data"]["total"] == 13 and len(body["data"]["items"]) == 5
    assert body["data"]["items"][0]["number"] == "INV-000008"  # newest first
    status, body = await get(sub_client, f"/v1/invoices/{rows[0]['id']}", user)
    assert status == 200 and body["data"]["amount_paid"] == "9.99"
    assert [(l["kind"], l["amount"], l["description"]) for l in body["data"]["lines"]] == [
        ("plan_charge", "9.99", "Basic (monthly)")]


async def test_dunning_with_a_card_that_declines_ends_in_cancellation(sub_client, pay_client, deps, pool, clock):
    user = await register(sub_client)
    sub = await subscribe_and_pay(sub_client, pay_client, user)
    await post(pay_client, "/v1/payment-methods", user, card(CARD_CHARGE_FAILS))  # the new default
    await run_actors(deps)
    sub_id = uuid.UUID(sub["id"])

    period_end = add_cycle(T0, BillingCycle.MONTHLY, 1)
    await until(clock, period_end)
    assert (await tick(deps, clock.now())).renewals_requested == 1
    await run_actors(deps)
    row = await subscription(pool, sub_id)
    assert row["status"] == "past_due" and row["next_retry_at"] == period_end + timedelta(days=1)

    retry_at = period_end
    for attempt, days in enumerate((1, 3, 5), start=1):
        await until(clock, retry_at + timedelta(days=days) - timedelta(seconds=1))
        assert (await tick(deps, clock.now())).retries_requested == 0   # not a second early
        retry_at += timedelta(days=days)
        await until(clock, retry_at)
        assert (await tick(deps, clock.now())).retries_requested == 1
        assert (await tick(deps, clock.now())).retries_requested == 0   # asked once
        await run_actors(deps)

    row = await subscription(pool, sub_id)
    assert row["status"] == "canceled" and row["ended_at"] == period_end + timedelta(days=9)
    assert await events(pool, sub_id) == [
        "create_paid", "payment_succeeded", "renewal_requested", "renew_failed",
        "dunning_retry_requested", "dunning_retry_failed", "dunning_retry_requested", "dunning_retry_failed",
        "dunning_retry_requested", "dunning_exhausted"]
    keys = [r["idempotency_key"] for r in await pool.fetch(
        "SELECT idempotency_key FROM transactions WHERE subscription_id = $1 AND status = 'failed' ORDER BY created_at",
        sub_id)]
    assert keys == [f"renewal:{sub_id}:{period_end.isoformat()}"] + [f"dunning:{sub_id}:{n}" for n in (1, 2, 3)]
    _, total = await invoices.list_for_user(pool, uuid.UUID(user["user"]["id"]), limit=10, offset=0)
    assert total == 1  # only the first, paid, invoice; declined charges invoice nothing
    assert (await tick(deps, clock.now() + timedelta(days=30))).renewals_requested == 0


async def test_an_upgrade_invoices_the_exact_proration_and_a_refund_adds_a_credit_line(
        sub_client, pay_client, deps, pool, clock):
    user = await register(sub_client)
    sub = await subscribe_and_pay(sub_client, pay_client, user)  # Basic 9.99, Jan 31 -> Feb 28 (28 days)
    await run_actors(deps)
    await until(clock, T0 + timedelta(days=14))  # exactly half of the period left
    await login(sub_client, user)
    resp = await sub_client.put(f"/v1/subscriptions/{sub['id']}", json={"plan_id": "pro"}, headers=user["headers"])
    assert resp.status == 202, await resp.json()
    await run_actors(deps)  # plan change -> upgrade charge on the saved card -> outcome -> invoice

    invoice = await pool.fetchrow("SELECT * FROM invoices WHERE reason = 'upgrade'")
    lines = await invoices.lines(pool, invoice["id"])
    half = (T0 + timedelta(days=14), datetime(2027, 2, 28, 9, 30, tzinfo=UTC))
    assert [(l["kind"], l["description"], l["amount"], (l["period_start"], l["period_end"])) for l in lines] == [
        ("proration_credit", "Unused time on Basic", Decimal("5.00"), half),    # 9.99 / 2 = 4.995 -> 5.00 (half even)
        ("proration_debit", "Remaining time on Pro", Decimal("15.00"), half),   # 29.99 / 2 = 14.995 -> 15.00
    ]
    assert (invoice["subtotal"], invoice["total"], invoice["amount_due"], invoice["amount_paid"]) == (
        Decimal("15.00"), Decimal("10.00"), Decimal("10.00"), Decimal("10.00"))
    charge = await pool.fetchrow("SELECT * FROM transactions WHERE id = $1", invoice["transaction_id"])
    assert charge["amount"] == Decimal("10.00") and charge["reason"] == "upgrade"
    assert (await subscription(pool, uuid.UUID(sub["id"])))["plan_id"] == await pool.fetchval(
        "SELECT id FROM plans WHERE slug = 'pro'")

    # A partial refund of that charge: a refund line on the same invoice, once however often it is delivered.
    refund = await post(pay_client, f"/v1/payments/{charge['id']}/refund", user, {"amount": "4.00"})
    await run_actors(deps)
    invoice = await pool.fetchrow("SELECT * FROM invoices WHERE id = $1", invoice["id"])
    assert invoice["amount_refunded"] == Decimal("4.00") and invoice["total"] == Decimal("10.00")
    lines = await invoices.lines(pool, invoice["id"])
    assert (lines[-1]["kind"], lines[-1]["amount"], str(lines[-1]["transaction_id"])) == ("refund", Decimal("4.00"), refund["id"])
    async with pool.acquire() as conn:
        from billing.money import Money
        await invoices.record_refund(conn, charge_id=charge["id"], refund_id=uuid.UUID(refund["id"]),
                                     amount=Money.of("4.00", "USD"), now=clock.now())
    assert len(await invoices.lines(pool, invoice["id"])) == 3


async def test_one_invoice_per_charge_with_sequential_numbers(pool, clock):
    sub = await make_subscription(pool, current_period_start=T0, current_period_end=T0 + timedelta(days=28))
    outcomes = []
    for reason in ("renewal", "dunning_retry"):
        txn = await make_charge(pool, sub["user_id"], sub["id"], "9.99", reason)
        outcomes.append(PaymentOutcome(transaction_id=txn, subscription_id=sub["id"], user_id=sub["user_id"],
                                       status="succeeded", amount=Decimal("9.99"), currency="USD", reason=reason,
                                       occurred_at=T0))
    async with pool.acquire() as conn:
        first = await invoices.create_invoice_for_payment(conn, outcomes[0], now=T0)
        again = await invoices.create_invoice_for_payment(conn, outcomes[0], now=T0)
        second = await invoices.create_invoice_for_payment(conn, outcomes[1], now=T0)
        failed = await invoices.create_invoice_for_payment(
            conn, outcomes[1].model_copy(update={"status": "failed"}), now=T0)
    assert first["id"] == again["id"] and failed is None
    assert (first["number"], second["number"]) == ("INV-000001", "INV-000002")
    assert (first["period_start"], first["period_end"]) == (T0, T0 + timedelta(days=28))
    assert await pool.fetchval("SELECT count(*) FROM invoices") == 2


async def test_invoices_are_private_and_pages_are_validated(sub_client, pool):
    owner, other = await register(sub_client), await register(sub_client)
    sub = await make_subscription(pool, user_id=uuid.UUID(owner["user"]["id"]), current_period_start=T0,
                                  current_period_end=T0 + timedelta(days=28))
    txn = await make_charge(pool, sub["user_id"], sub["id"], "9.99", "renewal")
    async with pool.acquire() as conn:
        invoice = await invoices.create_invoice_for_payment(conn, PaymentOutcome(
            transaction_id=txn, subscription_id=sub["id"], user_id=sub["user_id"], status="succeeded",
            amount=Decimal("9.99"), currency="USD", reason="renewal", occurred_at=T0), now=T0)
    status, body = await get(sub_client, f"/v1/invoices/{invoice['id']}", owner)
    assert status == 200 and body["data"]["number"] == invoice["number"]
    status, body = await get(sub_client, f"/v1/invoices/{invoice['id']}", other)
    assert status == 404 and body["code"] == "not_found"
    status, body = await get(sub_client, "/v1/invoices/not-a-uuid", owner)
    assert status == 404
    status, body = await get(sub_client, "/v1/invoices", other)
    assert status == 200 and body["data"] == {"items": [], "total": 0, "page": 1, "page_size": 20}
    status, body = await get(sub_client, "/v1/invoices?page=0&page_size=1000", owner)
    assert status == 422 and {d["field"] for d in body["details"]} == {"page", "page_size"}
    resp = await sub_client.get("/v1/invoices")
    assert resp.status == 401


async def test_a_page_beyond_any_offset_is_a_422_not_a_500(sub_client, register_user):
    # Found by schemathesis: page * page_size overflowed PostgreSQL's bigint OFFSET.
    user = await register_user(sub_client)
    resp = await sub_client.get("/v1/invoices?page=4726433203957842944&page_size=60", headers=user["headers"])
    assert resp.status == 422, await resp.json()
