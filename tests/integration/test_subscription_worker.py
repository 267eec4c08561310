"""The subscription actors, called directly with envelopes (and once through a real Consumer)."""
import asyncio
import json
import uuid
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest

from billing.clock import FrozenClock
from billing.commands import ChargeSubscription, PaymentOutcome, RequestPlanChange, stream_key
from billing.consumers.deps import Deps, retry_policy
from billing.consumers.subscriptions import apply_payment_outcome, build_routers
from billing.streams import Consumer, Envelope
from tests.conftest import register

NOW = datetime(2024, 2, 29, 12, tzinfo=UTC)


@pytest.fixture
def clock():
    return FrozenClock(NOW)


@pytest.fixture
def deps(settings, pool, redis, clock):
    return Deps(settings=settings, pool=pool, redis=redis, clock=clock)


async def plan_id(pool, slug):
    return await pool.fetchval("SELECT id FROM plans WHERE slug = $1", slug)


async def make_subscription(pool, *, status="pending", plan="basic", start=None, end=None, anchor=None, **extra):
    user = await pool.fetchval("INSERT INTO users (email, password_hash) VALUES ($1, 'x') RETURNING id",
                               f"{uuid.uuid4().hex[:8]}@example.com")
    cols = {"user_id": user, "plan_id": await plan_id(pool, plan), "status": status, "current_period_start": start,
            "current_period_end": end, "billing_anchor": anchor, **extra}
    names = ", ".join(cols)
    marks = ", ".join(f"${i + 1}" for i in range(len(cols)))
    return await pool.fetchrow(f"INSERT INTO subscriptions ({names}) VALUES ({marks}) RETURNING *", *cols.values())


def outcome(sub, status="succeeded", reason="subscription_create", **kw) -> PaymentOutcome:
    values = dict(transaction_id=uuid.uuid4(), subscription_id=sub["id"], user_id=sub["user_id"], status=status,
                  amount=Decimal("9.99"), currency="USD", reason=reason, occurred_at=NOW)
    values.update(kw)
    return PaymentOutcome(**values)


async def deliver(deps, family, action, payload) -> Envelope:
    envelope = Envelope.build(action, payload)
    router = build_routers(deps)[family]
    route, model = router.resolve(envelope)
    await route.handler(envelope, model)
    return envelope


async def state(pool, sub):
    return await pool.fetchrow("SELECT * FROM subscriptions WHERE id = $1", sub["id"])


async def events(pool, sub):
    return [(r["event_type"], r["from_status"], r["to_status"]) for r in await pool.fetch(
        "SELECT * FROM subscription_events WHERE subscription_id = $1 ORDER BY seq", sub["id"])]


# -- payment outcomes ------------------------------------------------------------------------


async def test_first_payment_activates_with_the_period_starting_now_once(deps, pool):
    sub = await make_subscription(pool)
    paid = outcome(sub)
    await deliver(deps, "subscription_update", "payment_outcome", paid)
    await deliver(deps, "subscription_update", "payment_outcome", paid)  # redelivered: no second effect
    row = await state(pool, sub)
    assert row["status"] == "active" and row["billing_anchor"] == NOW
    assert (row["current_period_start"], row["current_period_end"]) == (NOW, datetime(2024, 3, 29, 12, tzinfo=UTC))
    assert await events(pool, sub) == [("payment_succeeded", "pending", "active")]


async def test_a_declined_first_payment_stays_pending_and_another_card_may_pay(deps, pool):
    sub = await make_subscription(pool)
    await deliver(deps, "subscription_update", "payment_outcome", outcome(sub, "failed", decline_code="card_declined"))
    assert (await state(pool, sub))["status"] == "pending"
    await deliver(deps, "subscription_update", "payment_outcome", outcome(sub))
    assert (await state(pool, sub))["status"] == "active"
    assert await events(pool, sub) == [("payment_failed", "pending", "pending"), ("payment_succeeded", "pending", "active")]
    data = await pool.fetchval("SELECT data FROM subscription_events WHERE event_type = 'payment_failed'")
    assert data["decline_code"] == "card_declined"


async def test_renewal_follows_the_anchor(deps, pool):
    anchor = datetime(2024, 1, 31, tzinfo=UTC)
    sub = await make_subscription(pool, status="active", start=anchor, end=datetime(2024, 2, 29, tzinfo=UTC), anchor=anchor)
    await deliver(deps, "subscription_update", "payment_outcome", outcome(sub, reason="renewal"))
    row = await state(pool, sub)
    assert (row["current_period_start"], row["current_period_end"]) == (
        datetime(2024, 2, 29, tzinfo=UTC), datetime(2024, 3, 31, tzinfo=UTC))  # not Mar 29: no drift
    assert await events(pool, sub) == [("renew_succeeded", "active", "active")]


async def test_failed_renewal_runs_dunning_until_exhausted(deps, pool, clock):
    anchor = NOW - timedelta(days=29)
    sub = await make_subscription(pool, status="active", start=anchor, end=NOW, anchor=anchor)
    await deliver(deps, "subscription_update", "payment_outcome", outcome(sub, "failed", reason="renewal"))
    row = await state(pool, sub)
    assert row["status"] == "past_due" and row["past_due_since"] == NOW
    assert row["next_retry_at"] == NOW + timedelta(days=1) and row["dunning_attempts"] == 0
    for days, attempts in ((3, 1), (5, 2)):
        await deliver(deps, "subscription_update", "payment_outcome", outcome(sub, "failed", reason="dunning_retry"))
        row = await state(pool, sub)
        assert row["status"] == "past_due" and row["dunning_attempts"] == attempts
        assert row["next_retry_at"] == NOW + timedelta(days=days)
    await deliver(deps, "subscription_update", "payment_outcome", outcome(sub, "failed", reason="dunning_retry"))
    row = await state(pool, sub)
    assert row["status"] == "canceled" and row["canceled_at"] == NOW and row["ended_at"] == NOW
    assert row["next_retry_at"] is None
    assert [e[0] for e in await events(pool, sub)] == [
        "renew_failed", "dunning_retry_failed", "dunning_retry_failed", "dunning_exhausted"]


async def test_paying_during_dunning_reactivates_and_renews(deps, pool):
    anchor = datetime(2024, 1, 29, 12, tzinfo=UTC)
    sub = await make_subscription(pool, status="past_due", start=anchor, end=NOW - timedelta(days=1),
                                  anchor=anchor, past_due_since=NOW - timedelta(days=1),
                                  next_retry_at=NOW + timedelta(days=2), dunning_attempts=1)
    # period end is not on the anchor (a test shortcut): the period restarts now
    await deliver(deps, "subscription_update", "payment_outcome", outcome(sub, reason="dunning_retry"))
    row = await state(pool, sub)
    assert row["status"] == "active" and row["past_due_since"] is None and row["next_retry_at"] is None
    assert row["dunning_attempts"] == 0 and row["current_period_start"] == NOW


async def test_upgrade_outcomes(deps, pool):
    start = NOW - timedelta(days=10)
    sub = await make_subscription(pool, status="active", start=start, end=start + timedelta(days=30), anchor=start)
    pro = await plan_id(pool, "pro")
    await deliver(deps, "subscription_update", "payment_outcome", outcome(sub, "failed", reason="upgrade", plan_id=pro))
    row = await state(pool, sub)
    assert row["plan_id"] == sub["plan_id"] and row["status"] == "active"
    await deliver(deps, "subscription_update", "payment_outcome", outcome(sub, reason="upgrade", plan_id=pro))
    row = await state(pool, sub)
    assert row["plan_id"] == pro and row["current_period_start"] == start  # the period stays
    assert [e[0] for e in await events(pool, sub)] == ["upgrade_payment_failed", "change_plan"]


async def test_trial_conversion_outcomes(deps, pool):
    sub = await make_subscription(pool, status="trial", plan="trial", start=NOW - timedelta(days=14), end=NOW)
    await deliver(deps, "subscription_update", "payment_outcome", outcome(sub, "failed", reason="trial_conversion"))
    assert (await state(pool, sub))["status"] == "past_due"
    other = await make_subscription(pool, status="trial", plan="trial", start=NOW - timedelta(days=14), end=NOW)
    await deliver(deps, "subscription_update", "payment_outcome", outcome(other, reason="trial_conversion"))
    row = await state(pool, other)
    assert row["status"] == "active" and row["current_period_start"] == NOW


async def test_unknown_or_foreign_subscription_is_ignored(pool):
    sub = await make_subscription(pool)
    async with pool.acquire() as conn, conn.transaction():
        assert await apply_payment_outcome(conn, outcome(sub, user_id=uuid.uuid4()), NOW) == "ignored"
        assert await apply_payment_outcome(conn, outcome(sub, subscription_id=uuid.uuid4()), NOW) == "ignored"
        assert await apply_payment_outcome(conn, outcome(sub, subscription_id=None), NOW) == "ignored"
    assert (await state(pool, sub))["status"] == "pending"


async def test_a_payment_for_an_ended_subscription_is_logged_not_applied(deps, pool):
    sub = await make_subscription(pool, status="canceled")
    await deliver(deps, "subscription_update", "payment_outcome", outcome(sub))
    assert await events(pool, sub) == [("payment_unapplied", "canceled", "canceled")]


# -- plan changes ----------------------------------------------------------------------------


def change(sub, new_plan) -> RequestPlanChange:
    return RequestPlanChange(subscription_id=sub["id"], user_id=sub["user_id"], new_plan_id=new_plan, requested_at=NOW)


async def test_upgrade_enqueues_the_prorated_charge_once(deps, pool, settings):
    start = NOW - timedelta(days=15)
    sub = await make_subscription(pool, status="active", start=start, end=NOW + timedelta(days=15), anchor=start)
    pro = await plan_id(pool, "pro")
    envelope = Envelope.build("request_plan_change", change(sub, pro))
    route, payload = build_routers(deps)["plan_change"].resolve(envelope)
    await route.handler(envelope, payload)
    await route.handler(envelope, payload)  # redelivered
    rows = await pool.fetch("SELECT stream, action, fields FROM outbox")
    assert len(rows) == 1 and rows[0]["stream"] == stream_key(settings.redis_prefix, "payment_initiation")
    charge = ChargeSubscription.model_validate(json.loads(rows[0]["fields"]["payload"]))
    assert charge.amount == Decimal("10.00") and charge.reason == "upgrade" and charge.plan_id == pro
    assert charge.charge_key == f"upgrade:{sub['id']}:{envelope.id}"
    assert (await state(pool, sub))["plan_id"] == sub["plan_id"]  # switched only once paid
    assert [e[0] for e in await events(pool, sub)] == ["upgrade_payment_requested"]


async def test_downgrade_waits_for_the_period_end(deps, pool):
    start = NOW - timedelta(days=5)
    sub = await make_subscription(pool, status="active", plan="pro", start=start, end=start + timedelta(days=30), anchor=start)
    basic = await plan_id(pool, "basic")
    await deliver(deps, "plan_change", "request_plan_change", change(sub, basic))
    row = await state(pool, sub)
    assert row["pending_plan_id"] == basic and row["plan_id"] == sub["plan_id"]
    assert await events(pool, sub) == [("plan_change_scheduled", "active", "active")]
    assert await pool.fetchval("SELECT count(*) FROM outbox") == 0


async def test_upgrade_with_nothing_left_to_pay_switches_now(deps, pool):
    start = NOW - timedelta(days=30)
    sub = await make_subscription(pool, status="active", start=start, end=NOW, anchor=start)
    pro = await plan_id(pool, "pro")
    await deliver(deps, "plan_change", "request_plan_change", change(sub, pro))
    assert (await state(pool, sub))["plan_id"] == pro
    assert await events(pool, sub) == [("change_plan", "active", "active")]


async def test_a_change_that_became_illegal_is_rejected_in_the_log(deps, pool):
    sub = await make_subscription(pool, status="canceled", start=NOW, end=NOW + timedelta(days=30))
    await deliver(deps, "plan_change", "request_plan_change", change(sub, await plan_id(pool, "pro")))
    assert await events(pool, sub) == [("plan_change_rejected", "canceled", "canceled")]
    assert (await state(pool, sub))["plan_id"] == sub["plan_id"]


# -- through a real consumer on Redis --------------------------------------------------------


async def test_a_real_consumer_applies_a_published_outcome(deps, pool, redis, settings):
    sub = await make_subscription(pool)
    await deps.publish("subscription_update", "payment_outcome", outcome(sub))
    routers = build_routers(deps)
    consumer = Consumer(redis, deps.stream("subscription_update"), group="billing-subscriptions", name="test-0",
                        router=routers["subscription_update"], policy=retry_policy(settings, base_delay=0.1, jitter=0),
                        block_ms=100)
    stop = asyncio.Event()
    task = asyncio.create_task(consumer.run(stop))
    try:
        for _ in range(50):
            if (await state(pool, sub))["status"] == "active":
                break
            await asyncio.sleep(0.05)
    finally:
        stop.set()
        await task
    assert (await state(pool, sub))["status"] == "active"
    assert await redis.xpending(deps.stream("subscription_update"), "billing-subscriptions") == {
        "pending": 0, "min": None, "max": None, "consumers": []}


# -- the journey: trial -> upgrade -> pending -> paid -> active -------------------------------


async def test_trial_upgrade_pay_active_journey(sub_client, deps, pool):
    user = await register(sub_client)
    headers = {**user["headers"], "Idempotency-Key": uuid.uuid4().hex}
    trial = (await (await sub_client.post("/v1/subscriptions/trial", json={"plan_id": "trial"}, headers=headers)).json())["data"]
    resp = await sub_client.put(f"/v1/subscriptions/{trial['id']}", json={"plan_id": "pro"}, headers=user["headers"])
    body = (await resp.json())["data"]
    assert body["subscription"]["status"] == "pending" and body["amount"] == "29.99"
    sub = await pool.fetchrow("SELECT * FROM subscriptions WHERE id = $1", uuid.UUID(trial["id"]))
    # what the payment service publishes after /v1/payments/process charged the card
    await deliver(deps, "subscription_update", "payment_outcome",
                  outcome(sub, amount=Decimal("29.99"), reason="subscription_create"))
    me = (await (await sub_client.get("/v1/subscriptions/me", headers=user["headers"])).json())["data"]
    assert me["status"] == "active" and me["plan"]["slug"] == "pro" and me["payment_required"] is False
    assert me["current_period_start"] == NOW.isoformat().replace("+00:00", "Z")
    events_ = (await (await sub_client.get(f"/v1/subscriptions/{trial['id']}/events", headers=user["headers"])).json())["data"]
    assert [e["event_type"] for e in events_] == ["start_trial", "end_trial_for_payment", "payment_succeeded"]


async def test_active_upgrade_journey_through_the_outbox(sub_client, deps, pool):
    user = await register(sub_client)
    headers = {**user["headers"], "Idempotency-Key": uuid.uuid4().hex}
    created = (await (await sub_client.post("/v1/subscriptions/", json={"plan_id": "basic"}, headers=headers)).json())["data"]
    sub = await pool.fetchrow("SELECT * FROM subscriptions WHERE id = $1", uuid.UUID(created["id"]))
    await deliver(deps, "subscription_update", "payment_outcome", outcome(sub))
    deps.clock.advance(timedelta(minutes=30))  # (the access token lives 60 minutes on this clock)
    resp = await sub_client.put(f"/v1/subscriptions/{created['id']}", json={"plan_id": "pro"}, headers=user["headers"])
    assert resp.status == 202
    net = Decimal((await resp.json())["data"]["change"]["net"])
    # the worker takes the command from the outbox
    row = await pool.fetchrow("SELECT fields FROM outbox WHERE action = 'request_plan_change'")
    envelope = Envelope.from_fields(row["fields"])
    route, payload = build_routers(deps)["plan_change"].resolve(envelope)
    await route.handler(envelope, payload)
    row = await pool.fetchrow("SELECT fields FROM outbox WHERE action = 'charge_subscription'")
    charge = ChargeSubscription.model_validate(Envelope.from_fields(row["fields"]).payload)
    assert charge.amount == net > 0
    await deliver(deps, "subscription_update", "payment_outcome",
                  outcome(sub, amount=charge.amount, reason="upgrade", plan_id=charge.plan_id, charge_key=charge.charge_key))
    me = (await (await sub_client.get("/v1/subscriptions/me", headers=user["headers"])).json())["data"]
    assert me["plan"]["slug"] == "pro" and me["status"] == "active"
