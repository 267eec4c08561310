import asyncio
import uuid
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest

from billing.commands import CHARGE_SUBSCRIPTION, REFUND_PAYMENT, ChargeSubscription, RefundPayment
from billing.consumers import payments as actors
from billing.consumers.deps import Deps
from billing.consumers.worker import SERVICES, build_routers
from billing.payments import CardDetails
from billing.sql import payment_methods, transactions
from billing.streams import Consumer, Envelope, OutboxRelay, PermanentError, RetryPolicy
from tests.integration.payment_support import DECLINE_ALWAYS, VISA, CountingGateway, make_subscription, outbox


@pytest.fixture
def deps(settings, pool, redis, clock):
    return Deps(settings=settings, pool=pool, redis=redis, clock=clock)


@pytest.fixture
def gateway():
    return CountingGateway()


async def new_user(pool) -> uuid.UUID:
    return await pool.fetchval(
        "INSERT INTO users (email, password_hash) VALUES ($1, 'x') RETURNING id", f"{uuid.uuid4().hex[:8]}@example.com")


async def attach(pool, user_id, number=VISA, exp=(12, 2030)):
    card = CardDetails.parse({"number": number, "exp_month": exp[0], "exp_year": exp[1], "cvv": "123"},
                             datetime(2025, 1, 1, tzinfo=UTC))
    async with pool.acquire() as conn, conn.transaction():
        return await payment_methods.create_default(conn, user_id=user_id, brand=card.brand.value, last4=card.last4,
                                                    exp_month=card.exp_month, exp_year=card.exp_year,
                                                    gateway_token=actors.GATEWAY.tokenize(card))


async def renewal(pool, number=VISA, *, attach_card=True, key=None):
    user_id = await new_user(pool)
    if attach_card:
        await attach(pool, user_id, number)
    sub = await make_subscription(pool, user_id, status="active")
    cmd = ChargeSubscription(subscription_id=sub, user_id=user_id, amount=Decimal("9.99"), currency="USD",
                             reason="renewal", charge_key=key or f"renewal:{sub}:1")
    return cmd, Envelope.build(CHARGE_SUBSCRIPTION, cmd)


async def test_renewal_charges_the_default_card_by_token(deps, pool, gateway, clock):
    clock.advance(timedelta(days=40))  # the transaction's time is the injected clock's
    cmd, env = await renewal(pool)
    await actors.charge_subscription(deps, env, cmd, gateway=gateway)
    txn = await transactions.get_by_key(pool, cmd.user_id, cmd.charge_key)
    assert txn["created_at"] > datetime.now(UTC) + timedelta(days=39)
    assert (txn["status"], txn["reason"], txn["card_last4"], txn["amount"]) == ("succeeded", "renewal", "4242", Decimal("9.99"))
    assert txn["gateway_reference"].startswith("mock_ch_") and gateway.charges == [cmd.charge_key]
    [outcome] = await outbox(pool, "subscription_update")
    assert outcome["payload"]["status"] == "succeeded" and outcome["payload"]["charge_key"] == cmd.charge_key
    [hook] = await outbox(pool, "gateway_webhook")
    assert hook["payload"]["body"]["event_type"] == "payment.succeeded"
    assert hook["payload"]["body"]["charge_key"] == cmd.charge_key and hook["payload"]["body"]["reason"] == "renewal"


async def test_duplicate_commands_and_redeliveries_charge_once(deps, pool, gateway):
    cmd, env = await renewal(pool)
    duplicate = Envelope.build(CHARGE_SUBSCRIPTION, cmd)  # same charge_key, another message
    await asyncio.gather(*(actors.charge_subscription(deps, e, cmd, gateway=gateway) for e in [env, duplicate] * 3))
    await actors.charge_subscription(deps, env, cmd, gateway=gateway)
    assert gateway.charges == [cmd.charge_key]
    assert await pool.fetchval("SELECT count(*) FROM transactions") == 1
    assert len(await outbox(pool, "subscription_update")) == 1


async def test_a_charge_key_naming_another_transaction_is_a_permanent_error(deps, pool, gateway):
    cmd, env = await renewal(pool)
    await actors.charge_subscription(deps, env, cmd, gateway=gateway)
    other = cmd.model_copy(update={"reason": "upgrade"})
    with pytest.raises(PermanentError):
        await actors.charge_subscription(deps, Envelope.build(CHARGE_SUBSCRIPTION, other), other, gateway=gateway)
    assert len(gateway.charges) == 1


async def test_no_default_card_is_a_failed_outcome(deps, pool, gateway):
    cmd, env = await renewal(pool, attach_card=False)
    await actors.charge_subscription(deps, env, cmd, gateway=gateway)
    txn = await transactions.get_by_key(pool, cmd.user_id, cmd.charge_key)
    assert (txn["status"], txn["decline_code"]) == ("failed", "no_payment_method") and gateway.charges == []
    [outcome] = await outbox(pool, "subscription_update")
    assert (outcome["payload"]["status"], outcome["payload"]["decline_code"]) == ("failed", "no_payment_method")


async def test_card_0341_attaches_but_renewals_decline(deps, pool, gateway):
    cmd, env = await renewal(pool, DECLINE_ALWAYS)
    await actors.charge_subscription(deps, env, cmd, gateway=gateway)
    txn = await transactions.get_by_key(pool, cmd.user_id, cmd.charge_key)
    assert (txn["status"], txn["decline_code"]) == ("failed", "card_declined")
    assert (await outbox(pool, "gateway_webhook"))[0]["payload"]["body"]["event_type"] == "payment.failed"


async def test_an_expired_saved_card_declines_without_a_gateway_call(deps, pool, gateway):
    user_id = await new_user(pool)
    await attach(pool, user_id, exp=(1, 2025))
    sub = await make_subscription(pool, user_id, status="active")
    cmd = ChargeSubscription(subscription_id=sub, user_id=user_id, amount=Decimal("9.99"), currency="USD",
                             reason="renewal", charge_key="k")
    await actors.charge_subscription(deps, Envelope.build(CHARGE_SUBSCRIPTION, cmd), cmd, gateway=gateway)
    assert (await transactions.get_by_key(pool, user_id, "k"))["decline_code"] == "expired_card"
    assert gateway.charges == []


async def test_gateway_timeout_keeps_the_charge_pending_and_retries_reuse_it(deps, pool, gateway):
    cmd, env = await renewal(pool, "4000000000000119")
    for _ in range(2):
        with pytest.raises(actors.GatewayTimeout):
            await actors.charge_subscription(deps, env, cmd, gateway=gateway)
    txn = await transactions.get_by_key(pool, cmd.user_id, cmd.charge_key)
    assert txn["status"] == "pending" and gateway.charges == [cmd.charge_key, cmd.charge_key]
    assert await pool.fetchval("SELECT count(*) FROM transactions") == 1
    assert await pool.fetchval("SELECT count(*) FROM inbox") == 0  # the retry must run
    assert await outbox(pool) == []


async def test_refund_completes_once_and_updates_the_charge(deps, pool, gateway):
    cmd, env = await renewal(pool)
    await actors.charge_subscription(deps, env, cmd, gateway=gateway)
    charge = await transactions.get_by_key(pool, cmd.user_id, cmd.charge_key)

    async def request_refund(amount):
        refund = await transactions.create(pool, user_id=cmd.user_id, kind="refund", parent_id=charge["id"],
                                           amount=Decimal(amount), currency="USD", subscription_id=cmd.subscription_id)
        msg = RefundPayment(refund_id=refund["id"], charge_id=charge["id"], user_id=cmd.user_id,
                            amount=Decimal(amount), currency="USD")
        return refund, msg, Envelope.build(REFUND_PAYMENT, msg)

    refund, msg, renv = await request_refund("4.00")
    for envelope in (renv, renv, Envelope.build(REFUND_PAYMENT, msg)):  # redelivery and a duplicate command
        await actors.refund_payment(deps, envelope, msg, gateway=gateway)
    done = await transactions.get(pool, refund["id"])
    assert done["status"] == "succeeded" and done["gateway_reference"].startswith("mock_re_")
    parent = await transactions.get(pool, charge["id"])
    assert (parent["status"], parent["refunded_amount"]) == ("partially_refunded", Decimal("4.00"))
    assert gateway.refunds == [str(refund["id"])]

    refund2, msg2, renv2 = await request_refund("5.99")
    await actors.refund_payment(deps, renv2, msg2, gateway=gateway)
    parent = await transactions.get(pool, charge["id"])
    assert (parent["status"], parent["refunded_amount"]) == ("refunded", Decimal("9.99"))

    missing = RefundPayment(refund_id=uuid.uuid4(), charge_id=charge["id"], user_id=cmd.user_id,
                            amount=Decimal("1"), currency="USD")
    with pytest.raises(PermanentError):
        await actors.refund_payment(deps, Envelope.build(REFUND_PAYMENT, missing), missing, gateway=gateway)


async def test_the_worker_runs_the_charge_end_to_end(deps, settings, pool, redis):
    assert "billing.consumers.payments" in SERVICES["payments"]
    routers = build_routers("payments", deps)
    assert set(routers) == {"payment_initiation", "trial_payment", "refund_initiation", "gateway_webhook", "webhook_delivery"}
    cmd, _ = await renewal(pool)
    await deps.publish("trial_payment", CHARGE_SUBSCRIPTION, cmd)
    consumer = Consumer(redis, deps.stream("trial_payment"), group="billing-payments", name="t-0",
                        router=routers["trial_payment"], policy=RetryPolicy(base_delay=0.05, jitter=0), block_ms=100)
    stop = asyncio.Event()
    task = asyncio.create_task(consumer.run(stop))
    try:
        for _ in range(100):
            txn = await transactions.get_by_key(pool, cmd.user_id, cmd.charge_key)
            if txn is not None and txn["status"] == "succeeded":
                break
            await asyncio.sleep(0.05)
        assert txn is not None and txn["status"] == "succeeded"
    finally:
        stop.set()
        await task
    # The relay publishes the outcome to the subscription_update stream.
    assert await OutboxRelay(pool, redis).relay_once() == 2
    [(_, fields)] = await redis.xrange(deps.stream("subscription_update"))
    assert fields["action"] == "payment_outcome"
