"""A private Redis is restarted and loses every key (--save ""): APIs and consumers reconnect.

The shared Redis is never touched: the processes (and the in-process consumer below) use a
redis-server of this test's own.
"""
from __future__ import annotations

import asyncio

import aiohttp
import redis.asyncio as aioredis
from pydantic import BaseModel

from billing.streams import Consumer, Publisher, RetryPolicy, Router
from tests.harness import Stack, wait_until


async def _status(http: aiohttp.ClientSession, url: str) -> int:
    try:
        async with http.get(url) as resp:
            return resp.status
    except aiohttp.ClientError:
        return -1


async def test_apis_reconnect_after_redis_restart(private_redis):
    async with Stack(redis_url=private_redis.url) as stack, aiohttp.ClientSession() as http:
        await stack.start_all()
        private_redis.stop()
        for service in ("subscriptions", "payments"):
            async with http.get(f"{stack.url(service)}/v1/health/detailed") as resp:
                body = await resp.json()
                assert resp.status == 503 and body["details"]["checks"]["redis"]["status"] == "unhealthy", body
        private_redis.start()  # empty: nothing survived
        for service in ("subscriptions", "payments"):
            await wait_until(lambda: _is_200(http, f"{stack.url(service)}/v1/health/detailed"), timeout=15,
                             message=f"{service} health after the Redis restart")
        # Redis-backed features work again (login attempts are counted in Redis).
        async with http.post(f"{stack.url('subscriptions')}/v1/auth/register",
                             json={"email": "after-restart@example.com", "password": "s3cure-Passw0rd"}) as resp:
            assert resp.status == 201, await resp.json()
        async with http.post(f"{stack.url('payments')}/v1/auth/login",
                             json={"email": "after-restart@example.com", "password": "s3cure-Passw0rd"}) as resp:
            assert resp.status == 200, await resp.json()
        for name, proc in stack.procs.items():
            assert proc.alive, f"{name} died when Redis restarted:\n{stack.log(name)[-2000:]}"


async def _is_200(http, url):
    return await _status(http, url) == 200


class Ping(BaseModel):
    n: int


async def test_consumer_recreates_its_group_after_redis_lost_its_data(private_redis):
    redis = aioredis.from_url(private_redis.url, decode_responses=True)
    seen: list[int] = []

    async def handler(envelope, payload: Ping):
        seen.append(payload.n)

    router = Router()
    router.register("ping", Ping, handler)
    consumer = Consumer(redis, "t:{x}:ping", "g", "c1", router, block_ms=200,
                        policy=RetryPolicy(base_delay=0.1, jitter=0, lease=1))
    stop = asyncio.Event()
    task = asyncio.create_task(consumer.run(stop))
    try:
        await Publisher(redis).publish("t:{x}:ping", "ping", Ping(n=1))
        await wait_until(lambda: seen == [1], timeout=10, message="first message")
        private_redis.restart()  # stream and group are gone
        await wait_until(lambda: _try_publish(redis, Ping(n=2)), timeout=10, message="publisher reconnects")
        await wait_until(lambda: 2 in seen, timeout=15, message="message after the restart consumed")
    finally:
        stop.set()
        await asyncio.wait_for(task, 15)
        await redis.aclose()


async def _try_publish(redis, payload) -> bool:
    try:
        await Publisher(redis).publish("t:{x}:ping", "ping", payload)
        return True
    except Exception:  # still reconnecting
        return False
