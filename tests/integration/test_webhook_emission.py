"""Subscription state changes and finished payments reach the user's webhook endpoints (through the outbox)."""
import uuid

from tests.conftest import register
from tests.integration.payment_support import make_subscription, outbox, payment_body


async def _endpoint(client, user, events=()):
    resp = await client.post("/v1/webhook-endpoints", json={"url": "http://127.0.0.1:9/hook", "events": list(events)},
                             headers={**user["headers"], "Idempotency-Key": uuid.uuid4().hex})
    assert resp.status == 201, await resp.json()


async def _emitted(pool, user_id):
    return [r["type"] for r in await pool.fetch(
        "SELECT type FROM webhook_events WHERE user_id = $1 ORDER BY created_at, type", uuid.UUID(user_id))]


async def test_subscription_changes_are_emitted_to_endpoints(sub_client, pool):
    user = await register(sub_client)
    await _endpoint(sub_client, user)
    resp = await sub_client.post("/v1/subscriptions/trial", json={"plan_id": "trial"},
                                 headers={**user["headers"], "Idempotency-Key": "t1"})
    sub = (await resp.json())["data"]
    resp = await sub_client.delete(f"/v1/subscriptions/{sub['id']}?at_period_end=false", headers=user["headers"])
    assert resp.status == 200, await resp.json()

    assert await _emitted(pool, user["user"]["id"]) == ["subscription.trial_started", "subscription.canceled"]
    deliveries = await outbox(pool, "webhook_delivery")
    assert [d["payload"]["event_type"] for d in deliveries] == ["subscription.trial_started", "subscription.canceled"]
    assert deliveries[1]["payload"]["payload"]["subscription"]["status"] == "canceled"


async def test_finished_payments_are_emitted_and_filtered_by_the_endpoint_events(sub_client, pay_client, pool):
    user = await register(sub_client)
    await _endpoint(sub_client, user, events=["payment.succeeded"])
    subscription_id = await make_subscription(pool, user["user"]["id"])
    resp = await pay_client.post("/v1/payments/process", json=payment_body(subscription_id, "4000000000000002"),
                                 headers={**user["headers"], "Idempotency-Key": "p1"})
    assert resp.status == 402
    resp = await pay_client.post("/v1/payments/process", json=payment_body(subscription_id),
                                 headers={**user["headers"], "Idempotency-Key": "p2"})
    assert resp.status == 201

    assert await _emitted(pool, user["user"]["id"]) == ["payment.failed", "payment.succeeded"]
    deliveries = await outbox(pool, "webhook_delivery")  # the endpoint only listens to successes
    assert [d["payload"]["event_type"] for d in deliveries] == ["payment.succeeded"]
    payment = deliveries[0]["payload"]["payload"]["payment"]
    assert payment["amount"] == "9.99" and payment["card_last4"] == "4242" and "card_number" not in payment


async def test_no_endpoint_means_events_are_kept_but_nothing_is_queued(sub_client, pool):
    user = await register(sub_client)
    await sub_client.post("/v1/subscriptions/trial", json={"plan_id": "trial"},
                          headers={**user["headers"], "Idempotency-Key": "t1"})
    assert await _emitted(pool, user["user"]["id"]) == ["subscription.trial_started"]
    assert await outbox(pool, "webhook_delivery") == []
