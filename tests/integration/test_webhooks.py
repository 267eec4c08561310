"""Outbound webhooks: endpoints API, emit() through the outbox, the signed delivery actor and its log."""
from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime
from decimal import Decimal
from uuid import UUID

import pytest
from aiohttp import web

from billing.commands import DeliverWebhook, stream_key
from billing.consumers.deps import Deps
from billing.consumers.webhooks import DeliveryFailed, WebhookDelivery, build_routers, delivery_policy, http_session
from billing.signing import verify_outbound
from billing.sql.webhook_events import DELIVER_ACTION, emit
from billing.streams import Consumer, Envelope, OutboxRelay, PermanentError, dead_key
from tests.conftest import register


class Receiver:
    """A user's webhook endpoint on 127.0.0.1: records what it gets, answers with `status`."""

    def __init__(self):
        self.requests: list[tuple[dict, bytes]] = []
        self.status = 200

    async def handle(self, request: web.Request) -> web.Response:
        self.requests.append((dict(request.headers), await request.read()))
        return web.Response(status=self.status, text="ok" if self.status < 300 else "nope " * 500)


@pytest.fixture
async def receiver(aiohttp_server):
    r = Receiver()
    app = web.Application()
    app.router.add_post("/hook", r.handle)
    server = await aiohttp_server(app)
    r.url = str(server.make_url("/hook"))
    return r


@pytest.fixture
async def deps(settings, pool, redis, clock):
    d = Deps(settings=settings, pool=pool, redis=redis, clock=clock, http=http_session(settings))
    yield d
    await d.http.close()


async def create_endpoint(client, user, url, events=(), key="k1"):
    resp = await client.post("/v1/webhook-endpoints", json={"url": url, "events": list(events), "description": "mine"},
                             headers={**user["headers"], "Idempotency-Key": key})
    body = await resp.json()
    assert resp.status == 201, body
    return body["data"]


async def test_register_list_delete_and_scoping(sub_client):
    alice, bob = await register(sub_client), await register(sub_client)
    created = await create_endpoint(sub_client, alice, "https://hooks.example.com/billing", ["payment.failed"])
    assert created["secret"].startswith("whsec_") and created["events"] == ["payment.failed"]
    # Same Idempotency-Key and body: the same endpoint, not a second one.
    again = await create_endpoint(sub_client, alice, "https://hooks.example.com/billing", ["payment.failed"])
    assert again["id"] == created["id"]

    listed = (await (await sub_client.get("/v1/webhook-endpoints", headers=alice["headers"])).json())["data"]
    assert [e["id"] for e in listed] == [created["id"]] and "secret" not in listed[0]
    path = f"/v1/webhook-endpoints/{created['id']}"
    assert (await sub_client.get(path, headers=bob["headers"])).status == 404
    assert (await sub_client.delete(path, headers=bob["headers"])).status == 404
    assert (await sub_client.get(f"{path}/deliveries", headers=bob["headers"])).status == 404
    assert (await sub_client.delete(path, headers=alice["headers"])).status == 200
    assert (await sub_client.get(path, headers=alice["headers"])).status == 404
    assert (await sub_client.delete(path, headers=alice["headers"])).status == 404
    assert (await sub_client.get("/v1/webhook-endpoints/not-a-uuid", headers=alice["headers"])).status == 404


@pytest.mark.parametrize("body, field", [
    ({"url": "ftp://example.com/x"}, "url"),
    ({"url": "https://u:p@example.com/x"}, "url"),
    ({"url": "https://example.com/x", "events": ["subscription.exploded"]}, "events"),
    ({"url": "https://example.com/x", "secret": "mine"}, "secret"),
    ({"events": []}, "url"),
])
async def test_invalid_endpoints_are_422_with_the_field(sub_client, body, field):
    user = await register(sub_client)
    resp = await sub_client.post("/v1/webhook-endpoints", json=body, headers={**user["headers"], "Idempotency-Key": "x"})
    result = await resp.json()
    assert resp.status == 422, result
    assert any(d["field"].startswith(field) for d in result["details"])


async def test_private_urls_are_refused_outside_development(aiohttp_client, settings):
    from billing.http.app import create_app
    staging = settings.model_copy(update={"environment": "staging"})
    client = await aiohttp_client(create_app(staging, "subscriptions"))
    user = await register(client)
    for url in ("http://127.0.0.1:9000/hook", "http://169.254.169.254/latest", "http://localhost/x"):
        resp = await client.post("/v1/webhook-endpoints", json={"url": url},
                                 headers={**user["headers"], "Idempotency-Key": url})
        assert resp.status == 422, url


async def test_emit_queues_one_delivery_per_matching_endpoint_only_on_commit(sub_client, pool, settings):
    user = await register(sub_client)
    everything = await create_endpoint(sub_client, user, "https://a.example.com/", key="a")
    failed_only = await create_endpoint(sub_client, user, "https://b.example.com/", ["payment.failed"], key="b")
    other = await register(sub_client)
    await create_endpoint(sub_client, other, "https://c.example.com/", key="c")
    uid = UUID(user["user"]["id"])
    stream = stream_key(settings.redis_prefix, "webhook_delivery")

    async with pool.acquire() as conn:
        async with conn.transaction():
            event_id = await emit(conn, prefix=settings.redis_prefix, user_id=uid, event_type="payment.failed",
                                  data={"amount": Decimal("9.99")}, occurred_at=datetime.now(UTC))
        with pytest.raises(RuntimeError):
            async with conn.transaction():
                await emit(conn, prefix=settings.redis_prefix, user_id=uid, event_type="payment.failed", data={},
                           occurred_at=datetime.now(UTC))
                raise RuntimeError("the caller's change failed")
        async with conn.transaction():
            await emit(conn, prefix=settings.redis_prefix, user_id=uid, event_type="subscription.created", data={},
                       occurred_at=datetime.now(UTC))
        rows = await conn.fetch("SELECT stream, action, fields FROM outbox ORDER BY id")

    assert all(r["stream"] == stream and r["action"] == DELIVER_ACTION for r in rows)
    payloads = [json.loads(r["fields"]["payload"]) for r in rows]
    first = [p for p in payloads if p["event_id"] == str(event_id)]
    assert {p["endpoint_id"] for p in first} == {everything["id"], failed_only["id"]}
    assert first[0]["payload"] == {"amount": "9.99"}
    # subscription.created only reaches the endpoint that takes every event; the rolled back one nowhere.
    assert len(payloads) == 3 and payloads[2]["endpoint_id"] == everything["id"]


async def _event_for(sub_client, user, endpoint, pool, settings, event_type="subscription.renewed"):
    async with pool.acquire() as conn, conn.transaction():
        event_id = await emit(conn, prefix=settings.redis_prefix, user_id=UUID(user["user"]["id"]),
                              event_type=event_type, data={"subscription": {"id": "s1"}}, occurred_at=datetime.now(UTC))
        rows = await conn.fetch("SELECT fields FROM outbox ORDER BY id")
    envelopes = [Envelope.from_fields(r["fields"]) for r in rows]
    return next(e for e in envelopes if e.payload["event_id"] == str(event_id) and e.payload["endpoint_id"] == endpoint["id"])


async def test_delivery_is_signed_logged_and_not_repeated(sub_client, receiver, deps, pool, settings, clock):
    user = await register(sub_client)
    endpoint = await create_endpoint(sub_client, user, receiver.url)
    envelope = await _event_for(sub_client, user, endpoint, pool, settings)
    actor = WebhookDelivery(deps)
    cmd = DeliverWebhook.model_validate(envelope.payload)

    await actor.deliver(envelope, cmd)
    headers, body = receiver.requests[0]
    verify_outbound(endpoint["secret"], body, headers["Billing-Signature"], clock.now())
    sent = json.loads(body)
    assert sent["id"] == str(cmd.event_id) and sent["type"] == "subscription.renewed"
    assert sent["data"] == {"subscription": {"id": "s1"}} and sent["created"].endswith("Z")

    await actor.deliver(envelope, cmd)  # redelivered after a lost ack: not sent twice
    assert len(receiver.requests) == 1
    resp = await sub_client.get(f"/v1/webhook-endpoints/{endpoint['id']}/deliveries", headers=user["headers"])
    log = (await resp.json())["data"]
    assert [(d["attempt"], d["status"], d["response_status"], d["response_body"]) for d in log] == [(1, "delivered", 200, "ok")]
    assert log[0]["duration_ms"] >= 0 and log[0]["error"] is None


async def test_failures_are_retried_and_the_last_attempt_says_failed(sub_client, receiver, deps, pool, settings):
    receiver.status = 500
    user = await register(sub_client)
    endpoint = await create_endpoint(sub_client, user, receiver.url)
    envelope = await _event_for(sub_client, user, endpoint, pool, settings)
    actor, cmd = WebhookDelivery(deps), DeliverWebhook.model_validate(envelope.payload)
    with pytest.raises(DeliveryFailed, match="HTTP 500"):
        await actor.deliver(envelope, cmd)
    last = envelope.model_copy(update={"attempts": delivery_policy(settings).max_attempts - 1})
    with pytest.raises(DeliveryFailed):
        await actor.deliver(last, cmd)
    resp = await sub_client.get(f"/v1/webhook-endpoints/{endpoint['id']}/deliveries", headers=user["headers"])
    log = (await resp.json())["data"]
    assert [(d["attempt"], d["status"]) for d in log] == [(7, "failed"), (1, "retrying")]
    assert log[0]["response_status"] == 500 and len(log[0]["response_body"]) <= 1024


async def test_unreachable_endpoint_and_unsafe_url(sub_client, deps, pool, settings):
    user = await register(sub_client)
    endpoint = await create_endpoint(sub_client, user, "http://127.0.0.1:1/hook")
    envelope = await _event_for(sub_client, user, endpoint, pool, settings)
    actor, cmd = WebhookDelivery(deps), DeliverWebhook.model_validate(envelope.payload)
    with pytest.raises(DeliveryFailed, match="Connect"):
        await actor.deliver(envelope, cmd)
    # The same endpoint seen by a production worker: refused for good, no request made.
    deps.settings = settings.model_copy(update={"environment": "production"})
    with pytest.raises(PermanentError, match="refused"):
        await actor.deliver(envelope, cmd)
    async with pool.acquire() as conn:
        statuses = [r["status"] for r in await conn.fetch("SELECT status FROM webhook_outbound_requests ORDER BY created_at")]
    assert statuses == ["retrying", "failed"]


async def test_end_to_end_test_event_retry_dead_letter_and_resend(sub_client, receiver, deps, pool, redis, settings):
    """HTTP -> outbox -> stream -> consumer -> receiver, with a fast retry policy."""
    user = await register(sub_client)
    endpoint = await create_endpoint(sub_client, user, receiver.url)
    deps.settings = settings.model_copy(update={"webhook_max_retries": 1, "webhook_base_delay": 0.05,
                                                "webhook_max_delay": 0.05, "stream_jitter": 0, "stream_lease": 5})
    policy = delivery_policy(deps.settings)  # what the worker gives this family (and the actor counts with)
    stream = stream_key(settings.redis_prefix, "webhook_delivery")
    consumer = Consumer(redis, stream, group="billing-payments", name="t-0", router=build_routers(deps)["webhook_delivery"],
                        policy=policy, poll_interval=0.02, block_ms=50)
    relay = OutboxRelay(pool, redis)
    stop = asyncio.Event()
    tasks = [asyncio.create_task(consumer.run(stop)), asyncio.create_task(relay.run(stop, interval=0.02))]
    deliveries = f"/v1/webhook-endpoints/{endpoint['id']}/deliveries"

    async def log_until(count):
        for _ in range(100):
            data = (await (await sub_client.get(deliveries, headers=user["headers"])).json())["data"]
            if len(data) >= count:
                return data
            await asyncio.sleep(0.03)
        raise AssertionError(f"expected {count} deliveries, got {data}")

    try:
        resp = await sub_client.post(f"/v1/webhook-endpoints/{endpoint['id']}/test",
                                     headers={**user["headers"], "Idempotency-Key": "t1"})
        assert resp.status == 202
        event_id = (await resp.json())["data"]["event_id"]
        log = await log_until(1)
        assert log[0]["status"] == "delivered" and log[0]["event_type"] == "ping"

        receiver.status = 503
        resp = await sub_client.post(f"/v1/webhook-deliveries/{event_id}/resend", headers=user["headers"])
        assert resp.status == 202 and (await resp.json())["data"]["endpoint_ids"] == [endpoint["id"]]
        log = await log_until(3)
        assert [(d["attempt"], d["status"]) for d in log[:2]] == [(2, "failed"), (1, "retrying")]
        for _ in range(50):
            if await redis.xlen(dead_key(stream)):
                break
            await asyncio.sleep(0.02)
        assert await redis.xlen(dead_key(stream)) == 1

        receiver.status = 200  # the receiver is fixed: resending works again
        resp = await sub_client.post(f"/v1/webhook-deliveries/{event_id}/resend?endpoint_id={endpoint['id']}",
                                     headers=user["headers"])
        assert resp.status == 202
        assert (await log_until(4))[0]["status"] == "delivered"
    finally:
        stop.set()
        await asyncio.gather(*tasks)

    other = await register(sub_client)
    assert (await sub_client.post(f"/v1/webhook-deliveries/{event_id}/resend", headers=other["headers"])).status == 404
