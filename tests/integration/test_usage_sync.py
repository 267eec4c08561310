import asyncio
import time
from datetime import timedelta
from uuid import UUID, uuid4

from billing.commands import UsageRecorded, stream_key
from billing.consumers import usage as actor
from billing.consumers.deps import Deps, retry_policy
from billing.metering import reset_expired
from billing.streams import Consumer, Envelope, PermanentError
from tests.conftest import register
from tests.integration.usage_helpers import subscribe


async def used(pool, user_id, feature="api_calls") -> int:
    async with pool.acquire() as conn:
        return await conn.fetchval("SELECT coalesce(sum(used), 0) FROM usage WHERE user_id = $1 AND feature_name = $2",
                                   UUID(str(user_id)), feature)


async def run_actor_until(settings, pool, redis, clock, done, timeout=10.0):
    """Run the real usage_sync consumer (as the worker builds it) until done() or the timeout."""
    deps = Deps(settings=settings, pool=pool, redis=redis, clock=clock)
    [(family, router)] = actor.build_routers(deps).items()
    consumer = Consumer(redis, deps.stream(family), group="billing-subscriptions", name="test-0", router=router,
                        policy=retry_policy(settings, base_delay=0.05, jitter=0.0), concurrency=router.concurrency,
                        block_ms=50, poll_interval=0.05)
    stop = asyncio.Event()
    task = asyncio.create_task(consumer.run(stop))
    deadline = time.monotonic() + timeout
    try:
        while not await done():
            assert time.monotonic() < deadline, "the usage_sync actor did not catch up"
            await asyncio.sleep(0.05)
    finally:
        stop.set()
        await task
    return consumer


def recorded(user_id, period_start, reset_at, delta=1, feature="api_calls", subscription_id=None):
    return UsageRecorded(user_id=user_id, subscription_id=subscription_id, feature_name=feature, delta=delta,
                         period_start=period_start, reset_at=reset_at)


async def test_200_concurrent_uses_against_100_end_at_exactly_100_in_postgresql(sub_client, pool, redis, settings, clock):
    user = await register(sub_client)
    await subscribe(pool, user["user"]["id"], "trial", status="trial", start=clock.now())  # api_calls: 100
    resps = await asyncio.gather(*(sub_client.post("/v1/usage/use", json={"feature_name": "api_calls"},
                                                   headers=user["headers"]) for _ in range(200)))
    assert sorted(r.status for r in resps) == [200] * 100 + [429] * 100

    async def caught_up():
        return await used(pool, user["user"]["id"]) == 100

    consumer = await run_actor_until(settings, pool, redis, clock, caught_up)
    assert await used(pool, user["user"]["id"]) == 100
    pending = await redis.xpending(consumer.stream, consumer.group)
    assert pending["pending"] == 0  # all acked
    async with pool.acquire() as conn:  # batched: far fewer rows than messages, one per (user, feature, period)
        assert await conn.fetchval("SELECT count(*) FROM usage") == 1
        assert await conn.fetchval("SELECT count(*) FROM inbox WHERE consumer = 'usage_sync'") == 100


async def test_batch_is_applied_exactly_once_on_redelivery(pool, sub_client, clock):
    user = await register(sub_client)
    uid = UUID(user["user"]["id"])
    start = clock.now().replace(microsecond=0)
    end = start + timedelta(days=30)
    items = [(f"m{i}", recorded(uid, start, end, delta=i)) for i in range(1, 6)]  # 15 units
    assert await actor.apply_batch(pool, items) == 5
    assert await actor.apply_batch(pool, items) == 0                       # the same batch again
    assert await actor.apply_batch(pool, items[:2] + [("m6", recorded(uid, start, end, 10))]) == 1
    assert await used(pool, uid) == 25


async def test_batcher_groups_handlers_and_dedups_the_same_message(pool, sub_client, clock):
    user = await register(sub_client)
    uid = UUID(user["user"]["id"])
    start = clock.now()
    batcher = actor.UsageBatcher(pool, max_batch=50, max_wait=0.01)
    envelopes = [Envelope(action="usage_recorded") for _ in range(20)]
    payload = recorded(uid, start, start + timedelta(days=1), delta=2, feature="seats")
    # Every message delivered twice (e.g. redelivered while its first run was in flight).
    await asyncio.gather(*(batcher.handle(e, payload) for e in envelopes + envelopes))
    assert await used(pool, uid, "seats") == 40


async def test_a_bad_message_fails_alone(pool, sub_client, clock):
    user = await register(sub_client)
    uid = UUID(user["user"]["id"])
    start = clock.now()
    batcher = actor.UsageBatcher(pool, max_batch=3, max_wait=1.0)
    good = recorded(uid, start, start + timedelta(days=1), delta=5)
    ghost = recorded(uuid4(), start, start + timedelta(days=1), delta=5)  # no such user: FK violation
    results = await asyncio.gather(*(batcher.handle(Envelope(action="usage_recorded"), p) for p in (good, ghost, good)),
                                   return_exceptions=True)
    assert results[0] is None and results[2] is None and isinstance(results[1], PermanentError)
    assert await used(pool, uid) == 10


async def test_reset_expired_removes_ended_counters_old_rows_and_consumed_stream_entries(sub_client, pool, redis, settings, clock):
    user = await register(sub_client)
    uid = user["user"]["id"]
    start = clock.now() - timedelta(days=2)
    await subscribe(pool, uid, "basic", start=start)
    for _ in range(3):
        assert (await sub_client.post("/v1/usage/use", json={"feature_name": "api_calls"}, headers=user["headers"])).status == 200
    await run_actor_until(settings, pool, redis, clock, lambda: _equals(used(pool, uid), 3))
    async with pool.acquire() as conn:
        await conn.execute("""INSERT INTO usage (user_id, feature_name, period_start, reset_at, used)
                              VALUES ($1, 'api_calls', $2, $3, 9)""",
                           UUID(uid), start - timedelta(days=500), start - timedelta(days=470))
        counters = [k async for k in redis.scan_iter(match=settings.key("{sub}", "usage", "*"))]
        assert len(counters) == 1

        # Nothing of the current period goes; the 470-day-old row is past the 400-day retention.
        result = await reset_expired(conn, redis, settings, clock.now())
        assert result["counters"] == 0 and result["rows"] == 1 and result["stream_entries"] >= 2
        assert await redis.exists(*counters) == 1
        assert await redis.xlen(stream_key(settings.redis_prefix, "usage_sync")) <= 1

        clock.advance(timedelta(days=40))  # the period has ended
        result = await reset_expired(conn, redis, settings, clock.now())
        assert result["counters"] == 1 and await redis.exists(*counters) == 0
        assert await conn.fetchval("SELECT sum(used) FROM usage") == 3  # history within the retention stays


async def test_trim_keeps_entries_no_group_has_consumed(sub_client, pool, redis, settings, clock):
    user = await register(sub_client)
    await subscribe(pool, user["user"]["id"], "basic", start=clock.now())
    for _ in range(3):
        await sub_client.post("/v1/usage/use", json={"feature_name": "api_calls"}, headers=user["headers"])
    stream = stream_key(settings.redis_prefix, "usage_sync")
    async with pool.acquire() as conn:
        assert (await reset_expired(conn, redis, settings, clock.now()))["stream_entries"] == 0  # no group yet
        await redis.xgroup_create(stream, "billing-subscriptions", id="0")
        assert (await reset_expired(conn, redis, settings, clock.now()))["stream_entries"] == 0  # nothing delivered
    assert await redis.xlen(stream) == 3


async def _equals(awaitable, expected):
    return await awaitable == expected

