import asyncio
import json
import socket
from datetime import UTC, datetime

import pytest
from aiohttp import web

from billing.commands import DELIVER_GATEWAY_WEBHOOK, GatewayWebhook
from billing.consumers.deps import Deps
from billing.consumers.gateway_webhooks import DeliveryFailed, GatewayWebhookSender, build_routers
from billing.signing import SIGNATURE_HEADER, TIMESTAMP_HEADER, SignatureError, verify
from billing.streams import Consumer, Envelope, PermanentError, RetryPolicy, dead_key

BODY = {"event_id": "evt_1", "event_type": "payment.succeeded", "transaction_id": "t1", "amount": "9.99",
        "currency": "USD", "status": "succeeded"}


class Receiver:
    """A stand-in for POST /v1/webhooks/payment: verifies the signature, answers scripted statuses."""

    def __init__(self, secret: str, statuses=()):
        self.secret = secret
        self.statuses = list(statuses)
        self.received: list[tuple[bytes, dict]] = []

    async def handle(self, request: web.Request) -> web.Response:
        raw = await request.read()
        try:
            verify(self.secret, raw, request.headers.get(SIGNATURE_HEADER), request.headers.get(TIMESTAMP_HEADER),
                   now=datetime.now(UTC))
        except SignatureError as exc:
            return web.json_response({"error": str(exc)}, status=401)
        self.received.append((raw, dict(request.headers)))
        status = self.statuses.pop(0) if self.statuses else 200
        return web.json_response({"ok": status < 300}, status=status)


@pytest.fixture
async def receiver(aiohttp_server, settings):
    receiver = Receiver(settings.webhook_secret.get_secret_value())
    app = web.Application()
    app.router.add_post("/v1/webhooks/payment", receiver.handle)
    server = await aiohttp_server(app)
    receiver.url = str(server.make_url("/v1/webhooks/payment"))
    return receiver


@pytest.fixture
async def sender(settings, pool, redis, clock, receiver):
    deps = Deps(settings=settings.model_copy(update={"gateway_webhook_url": receiver.url}), pool=pool,
                redis=redis, clock=clock)
    sender = GatewayWebhookSender(deps)
    yield sender
    await sender.close()


def message(body=BODY):
    webhook = GatewayWebhook(event_id=body["event_id"], body=body)
    return Envelope.build(DELIVER_GATEWAY_WEBHOOK, webhook), webhook


async def test_delivers_compact_signed_json(sender, receiver):
    await sender.deliver(*message())
    [(raw, headers)] = receiver.received
    assert raw == json.dumps(BODY, separators=(",", ":"), sort_keys=True).encode()
    assert json.loads(raw) == BODY
    assert headers["X-Webhook-Event-ID"] == "evt_1" and headers["Content-Type"] == "application/json"
    first_session = sender.session()
    await sender.deliver(*message())
    assert sender.session() is first_session  # one session per worker


@pytest.mark.parametrize("status", [500, 503, 408, 429])
async def test_transient_answers_raise_for_a_retry(sender, receiver, status):
    receiver.statuses = [status]
    with pytest.raises(DeliveryFailed):
        await sender.deliver(*message())


@pytest.mark.parametrize("status", [400, 404, 422])
async def test_other_4xx_are_permanent(sender, receiver, status):
    receiver.statuses = [status]
    with pytest.raises(PermanentError):
        await sender.deliver(*message())


async def test_a_wrong_secret_is_refused_for_good(sender, receiver):
    receiver.secret = "another-secret"
    with pytest.raises(PermanentError):  # 401 from the receiver
        await sender.deliver(*message())


async def test_connection_refused_raises_for_a_retry(settings, pool, redis, clock):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    deps = Deps(settings=settings.model_copy(update={"gateway_webhook_url": f"http://127.0.0.1:{port}/x"}),
                pool=pool, redis=redis, clock=clock)
    sender = GatewayWebhookSender(deps)
    try:
        with pytest.raises(DeliveryFailed):
            await sender.deliver(*message())
    finally:
        await sender.close()


async def test_the_consumer_retries_until_delivered_and_dead_letters_refusals(settings, pool, redis, clock, receiver):
    deps = Deps(settings=settings.model_copy(update={"gateway_webhook_url": receiver.url}), pool=pool,
                redis=redis, clock=clock)
    router = build_routers(deps)["gateway_webhook"]
    assert len(deps.on_shutdown) == 1  # the worker closes the sender's session when it stops
    receiver.statuses = [503, 503]  # then 200
    await deps.publish("gateway_webhook", DELIVER_GATEWAY_WEBHOOK, message()[1])
    stream = deps.stream("gateway_webhook")
    consumer = Consumer(redis, stream, group="billing-payments", name="t-0", router=router,
                        policy=RetryPolicy(base_delay=0.05, multiplier=1, jitter=0), block_ms=100, poll_interval=0.02)
    stop = asyncio.Event()
    task = asyncio.create_task(consumer.run(stop))
    try:
        for _ in range(150):
            if len(receiver.received) >= 3:
                break
            await asyncio.sleep(0.02)
        assert len(receiver.received) == 3  # two 503s, then accepted
        receiver.statuses = [400]
        await deps.publish("gateway_webhook", DELIVER_GATEWAY_WEBHOOK, message({**BODY, "event_id": "evt_2"})[1])
        for _ in range(150):
            if await redis.xlen(dead_key(stream)):
                break
            await asyncio.sleep(0.02)
        [(_, dead)] = await redis.xrange(dead_key(stream))
        assert dead["error_type"] == "PermanentError" and "evt_2" in dead["payload"]
    finally:
        stop.set()
        await task
        for close in deps.on_shutdown:
            await close()
