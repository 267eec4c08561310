"""ScriptBatch: EVALSHA calls of one loop iteration share a pipeline, each still atomic and answered alone."""
import asyncio
import uuid

import pytest
import redis.asyncio as aioredis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError

from billing.metering import ScriptBatch

# INCRBY the key by ARGV[1]; a negative delta is refused with an error reply.
SCRIPT = """
if tonumber(ARGV[1]) < 0 then return redis.error_reply('negative') end
return redis.call('INCRBY', KEYS[1], ARGV[1])
"""


def fresh_script() -> str:
    # A text no Redis has loaded yet, so the first call meets NOSCRIPT (no SCRIPT FLUSH on the shared Redis).
    return f"-- {uuid.uuid4().hex}\n{SCRIPT}"


@pytest.fixture
def key(settings):
    return settings.key("test", "script_batch", uuid.uuid4().hex)


async def test_calls_of_one_iteration_share_one_pipeline_and_each_gets_its_own_reply(redis, key):
    batch = ScriptBatch(redis, fresh_script())
    sizes = []
    evalsha_all = batch._evalsha_all

    async def recording(calls):
        sizes.append(len(calls))
        return await evalsha_all(calls)

    batch._evalsha_all = recording
    replies = await asyncio.gather(*(batch([key], [i]) for i in range(1, 11)))
    # NOSCRIPT on the first pipeline (fresh script), then one retry of all ten.
    assert sizes == [10, 10]
    assert sorted(replies) == sorted(sum(range(1, i + 1)) for i in range(1, 11))
    assert int(await redis.get(key)) == 55

    sizes.clear()
    assert await batch([key], [1]) == 56
    assert sizes == [1]  # the script is loaded now


async def test_one_failing_call_fails_alone(redis, key):
    batch = ScriptBatch(redis, fresh_script())
    results = await asyncio.gather(batch([key], [2]), batch([key], [-1]), batch([key], [3]), return_exceptions=True)
    assert results[0] == 2 and results[2] == 5
    assert isinstance(results[1], ResponseError) and "negative" in str(results[1])


async def test_a_dead_connection_reaches_every_caller(key):
    dead = aioredis.from_url("redis://127.0.0.1:1/0", socket_connect_timeout=0.2)
    try:
        batch = ScriptBatch(dead, fresh_script())
        results = await asyncio.gather(batch([key], [1]), batch([key], [1]), return_exceptions=True)
        assert all(isinstance(r, RedisConnectionError) for r in results)
    finally:
        await dead.aclose()
