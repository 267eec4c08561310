"""The operator page against real Redis: dead-letter a message, see it, replay it, see it back on the stream."""
from __future__ import annotations

import asyncio

from pydantic import BaseModel

from billing.commands import stream_key
from billing.streams import Consumer, PermanentError, Publisher, RetryPolicy, Router, dead_key

class Charge(BaseModel):
    amount: str


TOKEN = {"X-Operator-Token": "dev-only-operator-token-change-me-0123456789"}


async def _dead_letter_one(redis, stream: str) -> str:
    router = Router()

    async def refuse(envelope, payload):
        raise PermanentError("card <script>alert(1)</script> refused")  # shown escaped on the page

    router.register("charge", Charge, refuse)
    await Publisher(redis).publish(stream, "charge", {"amount": "9.99"})
    consumer = Consumer(redis, stream, group="billing-subscriptions", name="ops-test-0", router=router,
                        policy=RetryPolicy(max_retries=0, base_delay=0, jitter=0, lease=5), block_ms=50)
    stop = asyncio.Event()
    task = asyncio.create_task(consumer.run(stop))
    for _ in range(100):
        if await redis.xlen(dead_key(stream)):
            break
        await asyncio.sleep(0.02)
    stop.set()
    await task
    (dead_id, _), = await redis.xrange(dead_key(stream))
    return dead_id


async def test_operator_token_is_required(sub_client):
    for path in ("/ops", "/ops/streams"):
        assert (await sub_client.get(path)).status == 401
        assert (await sub_client.get(path, headers={"X-Operator-Token": "wrong"})).status == 401
    resp = await sub_client.post("/ops/replay", json={"stream": "x", "id": "1-0"})
    assert resp.status == 401 and (await resp.json())["code"] == "unauthorized"


async def test_dead_letter_shown_and_replayed(sub_client, redis, settings):
    stream = stream_key(settings.redis_prefix, "payment_initiation")
    dead_id = await _dead_letter_one(redis, stream)

    resp = await sub_client.get("/ops/streams", headers=TOKEN)
    body = await resp.json()
    assert resp.status == 200, body
    (row,) = [s for s in body["data"]["streams"] if s["stream"] == stream]
    assert row["dead"] == 1 and row["length"] == 1 and row["pending"] == 0
    assert row["groups"][0]["group"] == "billing-subscriptions"
    assert row["groups"][0]["consumers"][0]["name"] == "ops-test-0"
    letter = row["dead_letters"][0]
    assert letter["dead_id"] == dead_id and letter["action"] == "charge" and "refused" in letter["error"]

    page = await sub_client.get(f"/ops?token={TOKEN['X-Operator-Token']}")
    text = await page.text()
    assert page.status == 200 and page.content_type == "text/html"
    assert stream in text and f'data-id="{dead_id}"' in text and "Replay" in text
    assert "<script>alert(1)" not in text and "&lt;script&gt;alert(1)" in text

    assert (await sub_client.post("/ops/replay", json={"stream": stream, "id": "1-0"}, headers=TOKEN)).status == 404
    assert (await sub_client.post("/ops/replay", json={"stream": "other:stream", "id": dead_id},
                                  headers=TOKEN)).status == 404
    assert (await sub_client.post("/ops/replay", json={"stream": stream, "id": "nope"}, headers=TOKEN)).status == 422
    resp = await sub_client.post("/ops/replay", json={"stream": stream, "id": dead_id}, headers=TOKEN)
    assert resp.status == 200, await resp.text()
    assert await redis.xlen(dead_key(stream)) == 0
    entries = await redis.xrange(stream)
    assert len(entries) == 2 and entries[-1][1]["action"] == "charge" and entries[-1][1]["attempts"] == "0"
