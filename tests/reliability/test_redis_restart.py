"""A private Redis is restarted and loses every key (--save ""): APIs and consumers reconnect,
usage counters are rebuilt from PostgreSQL.

The shared Redis is never touched: the processes (and the in-process consumer below) use a
redis-server of this test's own.
"""
from __future__ import annotations

import asyncio

import aiohttp
import asyncpg
import redis.asyncio as aioredis
from pydantic import BaseModel

from billing.streams import Consumer, Publisher, RetryPolicy, Router
from tests.api import Api
from tests.conftest import PG_URL
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
        api = Api(http, stack.url("subscriptions"), stack.url("payments"))
        # A paying customer with usage that the usage_sync worker has written to PostgreSQL.
        user = await api.register()
        await api.pay(user, await api.subscribe(user))
        await wait_until(lambda: _status_is(api, user, "active"), timeout=20, message="subscription active")
        for delta in (5, 7, 11):
            await api.call("POST", f"{api.sub_url}/v1/usage/use", user=user,
                           json={"feature_name": "api_calls", "delta": delta}, expect=200)
        db = await asyncpg.connect(PG_URL, server_settings={"search_path": stack.settings.database_schema})
        try:
            await wait_until(lambda: _pg_usage_is(db, 23), timeout=20, message="usage 23 in PostgreSQL")
        finally:
            await db.close()

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
        # The counters were lost with Redis and are rebuilt from PostgreSQL.
        _, usage = await api.call("GET", f"{api.sub_url}/v1/usage/me", user=user, expect=200)
        assert {f["feature_name"]: f["current_usage"] for f in usage["data"]["features"]}["api_calls"] == 23
        _, used = await api.call("POST", f"{api.sub_url}/v1/usage/use", user=user,
                                 json={"feature_name": "api_calls", "delta": 1}, expect=200)
        assert used["data"]["current_usage"] == 24
        # New commands flow: a payment after the restart reaches the subscriptions worker (its group is recreated).
        late = await api.register()
        await api.pay(late, await api.subscribe(late))
        await wait_until(lambda: _status_is(api, late, "active"), timeout=20, message="payment after restart applied")
        for name, proc in stack.procs.items():
            assert proc.alive, f"{name} died when Redis restarted:\n{stack.log(name)[-2000:]}"


async def _status_is(api: Api, user, status: str) -> bool:
    return (await api.my_subscription(user))["status"] == status


async def _pg_usage_is(db: asyncpg.Connection, expected: int) -> bool:
    return await db.fetchval("SELECT coalesce(sum(used), 0) FROM usage") == expected


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
