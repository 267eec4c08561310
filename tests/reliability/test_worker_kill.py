"""Workers are SIGKILLed at random points while commands are in flight: every effect happens once.

1. 100 users pay their pending subscription (POST /v1/payments/process); the outcomes travel as
   PaymentOutcome (subscription_update) and as the gateway's signed webhook, relayed from the
   outbox by the workers, while both workers are killed 10 times.
2. 100 renewal ChargeSubscription commands, each published twice, while the payments worker is
   killed 10 times: one charge per charge_key, one renewal per subscription.
3. Usage units accepted by POST /v1/usage/use while the subscriptions worker is killed:
   PostgreSQL's sum equals the accepted count exactly.
"""
from __future__ import annotations

import asyncio
import random
from decimal import Decimal

import aiohttp
import asyncpg
import redis.asyncio as aioredis

from billing.commands import CHARGE_SUBSCRIPTION, ChargeSubscription, all_stream_keys, stream_key
from billing.streams import Publisher
from tests.api import Api
from tests.conftest import PG_URL
from tests.harness import Stack, wait_until

USERS = 100


class Killer:
    """SIGKILLs one of `names` at random moments and restarts it, `times` times."""

    def __init__(self, stack: Stack, names: list[str], times: int, rng: random.Random):
        self.stack, self.names, self.times, self.rng = stack, names, times, rng
        self.kills: list[str] = []

    async def run(self, spread: float) -> None:
        for _ in range(self.times):
            await asyncio.sleep(self.rng.uniform(0.1, 2 * spread / self.times))
            name = self.rng.choice(self.names)
            self.stack.kill(name)
            self.kills.append(name)
            await self.stack.worker(name.removeprefix("worker-"))


async def _settled(conn: asyncpg.Connection, redis: aioredis.Redis, prefix: str) -> bool:
    """Nothing left anywhere: outbox relayed, every stream entry acked, no retry waiting."""
    if await conn.fetchval("SELECT count(*) FROM outbox WHERE published_at IS NULL"):
        return False
    for key in all_stream_keys(prefix):
        if await redis.zcard(f"{key}:delayed"):
            return False
        try:
            groups = await redis.xinfo_groups(key)
        except aioredis.ResponseError:
            continue
        if any(int(g["pending"]) or int(g.get("lag") or 0) for g in groups):
            return False
    return True


async def _dead_letters(redis: aioredis.Redis, prefix: str) -> dict:
    counts = {key: await redis.xlen(f"{key}:dead") for key in all_stream_keys(prefix)}
    return {k: v for k, v in counts.items() if v}


async def test_every_command_applied_exactly_once_while_workers_are_killed():
    rng = random.Random(20240601)
    # More redeliveries than production allows: 20 kills in a minute is far harsher than reality.
    async with Stack(env={"BILLING_STREAM_MAX_RETRIES": "10"}) as stack, aiohttp.ClientSession() as http:
        await stack.start_all()
        api = Api(http, stack.url("subscriptions"), stack.url("payments"))
        prefix = stack.settings.redis_prefix
        db = await asyncpg.connect(PG_URL, server_settings={"search_path": stack.settings.database_schema})
        redis = aioredis.from_url(stack.settings.redis_url, decode_responses=True)
        try:
            gate = asyncio.Semaphore(10)

            async def new_customer():
                async with gate:
                    user = await api.register()
                    return user, await api.subscribe(user)
            customers = await asyncio.gather(*(new_customer() for _ in range(USERS)))

            # -- 1. first payments while both workers die ------------------------------------
            killer = Killer(stack, ["worker-subscriptions", "worker-payments"], 10, rng)

            async def pay(i, user, sub):
                await asyncio.sleep(i * 0.06)  # spread over the kill window
                async with gate:
                    await api.pay(user, sub)
            await asyncio.gather(killer.run(spread=6.0), *(pay(i, u, s) for i, (u, s) in enumerate(customers)))

            async def all_active():
                return await db.fetchval("SELECT count(*) FROM subscriptions WHERE status = 'active'") == USERS \
                    and await db.fetchval("SELECT count(*) FROM gateway_webhook_requests") == USERS \
                    and await _settled(db, redis, prefix)
            await wait_until(all_active, timeout=60, interval=0.5, message="100 subscriptions active, 100 webhooks")

            charges = await db.fetch("SELECT subscription_id, count(*) AS n FROM transactions"
                                     " WHERE kind = 'charge' AND status = 'succeeded' GROUP BY 1")
            assert len(charges) == USERS and all(r["n"] == 1 for r in charges)
            activations = await db.fetch("SELECT subscription_id, count(*) AS n FROM subscription_events"
                                         " WHERE event_type = 'payment_succeeded' GROUP BY 1")
            assert len(activations) == USERS and all(r["n"] == 1 for r in activations), "activated twice"
            statuses = await db.fetch("SELECT status, count(*) FROM gateway_webhook_requests GROUP BY 1")
            periods = {r["id"]: r["current_period_end"] for r in
                       await db.fetch("SELECT id, current_period_end FROM subscriptions")}
            first_kills = list(killer.kills)

            # -- 2. renewal charges published twice while the payments worker dies -----------
            publisher = Publisher(redis)
            stream = stream_key(prefix, "payment_initiation")
            commands = [ChargeSubscription(subscription_id=sub["id"], user_id=user.id, amount=Decimal(sub["amount_due"]),
                                           currency=sub["currency"], reason="renewal",
                                           charge_key=f"renewal:{sub['id']}:1") for user, sub in customers]

            async def publish_twice():
                for i, cmd in enumerate(commands + commands[::-1]):  # every command twice, duplicates late
                    await publisher.publish(stream, CHARGE_SUBSCRIPTION, cmd, correlation_id=cmd.charge_key)
                    if i % 20 == 19:
                        await asyncio.sleep(0.5)
            killer = Killer(stack, ["worker-payments"], 10, rng)
            await asyncio.gather(killer.run(spread=6.0), publish_twice())

            async def all_renewed():
                return await db.fetchval("SELECT count(*) FROM subscription_events WHERE event_type = 'renew_succeeded'") \
                    >= USERS and await _settled(db, redis, prefix)
            await wait_until(all_renewed, timeout=60, interval=0.5, message="100 renewals applied")

            renewals = await db.fetch("SELECT idempotency_key, count(*) AS n, min(status) AS status FROM transactions"
                                      " WHERE reason = 'renewal' GROUP BY 1")
            assert len(renewals) == USERS, len(renewals)
            assert all(r["n"] == 1 and r["status"] == "succeeded" for r in renewals), "a charge_key charged twice"
            renewed = await db.fetch("SELECT subscription_id, count(*) AS n FROM subscription_events"
                                     " WHERE event_type = 'renew_succeeded' GROUP BY 1")
            assert len(renewed) == USERS and all(r["n"] == 1 for r in renewed), "renewed twice"
            for row in await db.fetch("SELECT id, status, current_period_start FROM subscriptions"):
                assert row["status"] == "active"
                assert row["current_period_start"] == periods[row["id"]], "the period moved more than once"
            second_kills = list(killer.kills)

            # -- 3. usage while the subscriptions worker dies --------------------------------
            accepted = 0

            async def use(i, user):
                nonlocal accepted
                await asyncio.sleep(i * 0.012)
                delta = rng.randint(1, 3)
                async with gate:
                    status, body = await api.call("POST", f"{api.sub_url}/v1/usage/use", user=user,
                                                  json={"feature_name": "api_calls", "delta": delta})
                assert status in (200, 429), body
                if status == 200:
                    accepted += delta
            killer = Killer(stack, ["worker-subscriptions"], 5, rng)
            calls = [(i, customers[i % USERS][0]) for i in range(500)]
            await asyncio.gather(killer.run(spread=5.0), *(use(i, u) for i, u in calls))

            async def usage_synced():
                return await db.fetchval("SELECT coalesce(sum(used), 0) FROM usage") == accepted \
                    and await _settled(db, redis, prefix)
            await wait_until(usage_synced, timeout=60, interval=0.5, message=f"PostgreSQL usage == {accepted}")
            usage_sum = await db.fetchval("SELECT sum(used) FROM usage")

            assert await _dead_letters(redis, prefix) == {}
            restarts = {name: proc.starts - 1 for name, proc in stack.procs.items() if name.startswith("worker")}
            print(f"\nworker kills: {len(first_kills)} during first payments {first_kills.count('worker-payments')}"
                  f" payments/{first_kills.count('worker-subscriptions')} subscriptions, {len(second_kills)} during"
                  f" {2 * USERS} renewal commands, {len(killer.kills)} during usage; restarts {restarts}")
            print(f"first payments: {len(charges)} charges, {len(activations)} activations, webhooks {dict(statuses)}")
            print(f"renewals: {len(renewals)} charge keys charged once each, {len(renewed)} subscriptions renewed once")
            print(f"usage: {accepted} units accepted over 500 calls, PostgreSQL sum {usage_sum}")
            assert "unhandled error" not in stack.all_logs()
        finally:
            await redis.aclose()
            await db.close()
