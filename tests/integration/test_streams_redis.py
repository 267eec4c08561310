"""The streams runtime against real Redis (and PostgreSQL for the inbox and the outbox).

Every test uses its own key prefix and schema: other test runs share these servers.
"""

import asyncio
import inspect
import json
import os
import signal
import sys
import time
from contextlib import asynccontextmanager
from pathlib import Path
from types import SimpleNamespace
from uuid import uuid4

import asyncpg
import pytest
import redis as syncredis
import redis.asyncio as aioredis
from prometheus_client import REGISTRY
from pydantic import BaseModel

from billing.streams import (
    Consumer,
    Envelope,
    OutboxRelay,
    PermanentError,
    Publisher,
    RetryPolicy,
    Router,
    dead_key,
    delayed_key,
    enqueue,
    metrics,
)
import billing.sql as billing_sql
from billing.streams.cli import main as cli
from billing.streams.sql import DDL

from .streams_crash_worker import EFFECTS_DDL, Effect, effect_router

REDIS_URL = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")
PG_DSN = os.environ.get("PG_DSN", "postgresql://postgres@127.0.0.1:5432/test")
ROOT = Path(__file__).resolve().parents[2]
GROUP = "g"
FAST = RetryPolicy(max_retries=3, base_delay=0.1, multiplier=1.0, jitter=0, lease=0.5)


class Job(BaseModel):
    n: int = 0
    seconds: float = 0


@pytest.fixture
async def redis():
    client = aioredis.from_url(REDIS_URL, decode_responses=True)
    yield client
    await client.aclose()


@pytest.fixture
async def prefix(redis):
    prefix = f"t{uuid4().hex[:8]}:"
    yield prefix
    keys = [key async for key in redis.scan_iter(match=prefix + "*")]
    if keys:
        await redis.delete(*keys)


@pytest.fixture
async def pg():
    schema = f"t_{uuid4().hex[:8]}"
    admin = await asyncpg.connect(PG_DSN)
    await admin.execute(f"CREATE SCHEMA {schema}")
    pool = await asyncpg.create_pool(PG_DSN, min_size=1, max_size=8, server_settings={"search_path": schema})
    await pool.execute(DDL + EFFECTS_DDL)
    yield SimpleNamespace(pool=pool, schema=schema)
    await asyncio.wait_for(pool.close(), 10)
    await admin.execute(f"DROP SCHEMA {schema} CASCADE")
    await admin.close()


def make_consumer(redis, stream, router, name="c1", **options) -> Consumer:
    options = {"policy": FAST, "block_ms": 100, "poll_interval": 0.05, "shutdown_timeout": 2.0} | options
    return Consumer(redis, stream, GROUP, name, router, **options)


def job_router(handler) -> Router:
    router = Router()
    router.register("job", Job, handler)
    return router


@asynccontextmanager
async def running(consumer: Consumer):
    stop = asyncio.Event()
    task = asyncio.create_task(consumer.run(stop))
    try:
        yield task
    finally:
        stop.set()
        await asyncio.gather(task, return_exceptions=True)


async def eventually(check, timeout=5.0):
    """Wait until check() (sync or async) is true."""
    deadline = time.monotonic() + timeout
    while not await _result(check()):
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.02)


async def _result(value):
    return await value if inspect.isawaitable(value) else value


async def pending_count(redis, stream) -> int:
    return (await redis.xpending(stream, GROUP))["pending"]


async def effects(pg) -> list[int]:
    return [row["n"] for row in await pg.pool.fetch("SELECT n FROM effects")]


# --- (a) crash mid-handler: another consumer takes over, the effect happens once ---------------


async def _take_over(redis, stream, pg) -> None:
    survivor = make_consumer(redis, stream, effect_router(pg.pool), name="survivor")
    async with running(survivor):
        await eventually(lambda: _done(redis, stream), timeout=5)
    assert await effects(pg) == [7]
    assert await pg.pool.fetchval("SELECT count(*) FROM inbox") == 1


async def _done(redis, stream) -> bool:
    return await pending_count(redis, stream) == 0


@pytest.mark.parametrize("hang_at", ["before_commit", "after_commit"])
async def test_cancelled_consumer_is_taken_over_and_effect_happens_once(redis, prefix, pg, hang_at):
    stream = prefix + "effects"
    started = asyncio.Event()
    victim = make_consumer(redis, stream, effect_router(pg.pool, hang_at, started.set), name="victim")
    await Publisher(redis).publish(stream, "effect", Effect(n=7))
    task = asyncio.create_task(victim.run(asyncio.Event()))
    await asyncio.wait_for(started.wait(), 5)
    task.cancel()  # a crash: no graceful drain, no ack
    await asyncio.gather(task, return_exceptions=True)
    [entry] = await redis.xpending_range(stream, GROUP, "-", "+", 10)
    assert entry["consumer"] == "victim"
    assert await effects(pg) == ([7] if hang_at == "after_commit" else [])
    await _take_over(redis, stream, pg)


@pytest.mark.parametrize("hang_at", ["before_commit", "after_commit"])
async def test_sigkilled_worker_process_is_taken_over_and_effect_happens_once(redis, prefix, pg, hang_at):
    stream = prefix + "effects"
    await Publisher(redis).publish(stream, "effect", Effect(n=7))
    args = [REDIS_URL, PG_DSN, pg.schema, stream, GROUP, "doomed", hang_at]
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "tests.integration.streams_crash_worker", *args, cwd=ROOT, stdout=asyncio.subprocess.PIPE
    )
    try:
        while (line := await asyncio.wait_for(proc.stdout.readline(), 20)) != b"STARTED\n":
            assert line, "worker exited before handling the message"
    finally:
        proc.kill()
        await proc.wait()
    assert proc.returncode == -signal.SIGKILL
    [entry] = await redis.xpending_range(stream, GROUP, "-", "+", 10)
    assert entry["consumer"] == "doomed"
    await _take_over(redis, stream, pg)


# --- (b) poison messages -----------------------------------------------------------------------


async def test_poison_message_goes_to_dead_letter_after_the_limit(redis, prefix):
    stream = prefix + "poison"
    attempts = []

    async def poison(envelope, payload):
        attempts.append(envelope.attempts)
        raise RuntimeError("cannot parse invoice")

    policy = RetryPolicy(max_retries=2, base_delay=0.05, jitter=0, lease=1)
    async with running(make_consumer(redis, stream, job_router(poison), policy=policy)):
        sent = await Publisher(redis).publish(stream, "job", Job(n=1))
        await eventually(lambda: redis.xlen(dead_key(stream)))
    assert attempts == [0, 1, 2]
    [(_, dead)] = await redis.xrange(dead_key(stream))
    assert dead["id"] == sent.id and dead["attempts"] == "3"
    assert dead["error"] == "cannot parse invoice" and dead["error_type"] == "RuntimeError"
    assert dead["last_error"] == "RuntimeError: cannot parse invoice"
    assert await redis.zcard(delayed_key(stream)) == 0
    assert await pending_count(redis, stream) == 0
    labels = {"stream": stream, "action": "job"}
    assert REGISTRY.get_sample_value("streams_dead_total", labels) == 1
    assert REGISTRY.get_sample_value("streams_retried_total", labels) == 2
    assert REGISTRY.get_sample_value("streams_failed_total", labels) == 3


async def test_entry_delivered_too_often_goes_to_dead_letter_without_running(redis, prefix):
    stream = prefix + "crashy"
    calls = []

    async def handler(envelope, payload):
        calls.append(envelope)

    await redis.xgroup_create(stream, GROUP, "0", mkstream=True)
    await Publisher(redis).publish(stream, "job", Job())
    await redis.xreadgroup(GROUP, "crashy", {stream: ">"})
    for _ in range(3):  # three more deliveries to a worker that keeps dying on it
        await redis.xreadgroup(GROUP, "crashy", {stream: "0"})
    policy = RetryPolicy(max_retries=3, lease=0.2)  # at most 4 deliveries; XAUTOCLAIM makes it 5
    async with running(make_consumer(redis, stream, job_router(handler), policy=policy)):
        await eventually(lambda: redis.xlen(dead_key(stream)))
    [(_, dead)] = await redis.xrange(dead_key(stream))
    assert dead["error_type"] == "DeliveryLimitExceeded" and calls == []
    assert await pending_count(redis, stream) == 0


# --- (c) delayed retries -------------------------------------------------------------------------


async def test_delayed_retry_fires_after_its_delay(redis, prefix):
    stream = prefix + "delayed"
    runs = []

    async def flaky(envelope, payload):
        runs.append(time.monotonic())
        if envelope.attempts == 0:
            raise RuntimeError("gateway timeout")

    policy = RetryPolicy(base_delay=0.8, jitter=0, lease=5)
    async with running(make_consumer(redis, stream, job_router(flaky), policy=policy)):
        await Publisher(redis).publish(stream, "job", Job())
        await eventually(lambda: len(runs) == 1)
        await asyncio.sleep(0.6)
        assert len(runs) == 1 and await redis.zcard(delayed_key(stream)) == 1  # not yet
        await eventually(lambda: len(runs) == 2, timeout=3)
    assert 0.8 <= runs[1] - runs[0] <= 0.8 + 0.3
    assert await redis.zcard(delayed_key(stream)) == 0
    assert await pending_count(redis, stream) == 0


async def test_several_movers_move_each_due_retry_once(redis, prefix):
    stream = prefix + "movers"
    consumers = [make_consumer(redis, stream, Router(), name=f"m{i}") for i in range(4)]
    due = time.time() - 1
    flat = [[v for item in Envelope.build("job", {"n": n}).to_fields().items() for v in item] for n in range(200)]
    members = {json.dumps(fields): due for fields in flat}
    await redis.zadd(delayed_key(stream), members)

    async def move_all(consumer):
        while await consumer._move_once():  # as its loop does: again at once while a batch was full
            pass

    await asyncio.gather(*(move_all(c) for c in consumers))
    assert await redis.xlen(stream) == 200 and await redis.zcard(delayed_key(stream)) == 0


# --- (d) MAXLEN ~ ----------------------------------------------------------------------------------


async def test_maxlen_keeps_the_stream_bounded(redis, prefix):
    stream = prefix + "bounded"
    publisher = Publisher(redis, maxlen=300)
    for n in range(3000):
        await publisher.publish(stream, "job", Job(n=n))
    # Approximate trimming drops whole radix-tree nodes (100 entries by default).
    assert 300 <= await redis.xlen(stream) <= 400


# --- (e) published before the group, (f) own pending, lease, shutdown ------------------------------


async def test_messages_published_before_any_group_are_consumed(redis, prefix):
    stream = prefix + "early"
    seen = []

    async def handler(envelope, payload):
        seen.append(payload.n)

    for n in range(3):
        await Publisher(redis).publish(stream, "job", Job(n=n))
    async with running(make_consumer(redis, stream, job_router(handler))):
        await eventually(lambda: len(seen) == 3)
        await eventually(lambda: _done(redis, stream))
    assert sorted(seen) == [0, 1, 2]
    assert REGISTRY.get_sample_value("streams_processed_total", {"stream": stream, "action": "job"}) == 3
    await metrics.observe_group(redis, stream, GROUP)
    assert REGISTRY.get_sample_value("streams_pending", {"stream": stream, "group": GROUP}) == 0
    assert REGISTRY.get_sample_value("streams_lag", {"stream": stream, "group": GROUP}) == 0


async def test_restarted_consumer_rereads_its_own_pending_entries(redis, prefix):
    stream = prefix + "restart"
    seen = []

    async def handler(envelope, payload):
        seen.append(payload.n)

    await redis.xgroup_create(stream, GROUP, "0", mkstream=True)
    for n in range(2):
        await Publisher(redis).publish(stream, "job", Job(n=n))
    await redis.xreadgroup(GROUP, "w1", {stream: ">"})  # the previous run of w1 read them, then died
    slow_lease = RetryPolicy(lease=60)
    async with running(make_consumer(redis, stream, job_router(handler), name="w2", policy=slow_lease)):
        await asyncio.sleep(0.3)
    assert seen == []  # not idle long enough for anyone else to claim
    async with running(make_consumer(redis, stream, job_router(handler), name="w1", policy=slow_lease)):
        await eventually(lambda: _done(redis, stream), timeout=2)
    assert sorted(seen) == [0, 1]


async def test_long_handler_renews_its_lease(redis, prefix):
    stream = prefix + "lease"
    runs = []

    async def slow(envelope, payload):
        runs.append(envelope.id)
        await asyncio.sleep(1.5)  # three leases

    policy = RetryPolicy(lease=0.5)
    a = make_consumer(redis, stream, job_router(slow), name="a", policy=policy)
    b = make_consumer(redis, stream, job_router(slow), name="b", policy=policy)
    async with running(a), running(b):
        await Publisher(redis).publish(stream, "job", Job())
        await eventually(lambda: len(runs) == 1)
        await eventually(lambda: _done(redis, stream), timeout=5)
    assert len(runs) == 1


async def test_graceful_stop_waits_for_handlers_and_leaves_the_rest_pending(redis, prefix):
    stream = prefix + "stop"
    started, finished = [], []

    async def handler(envelope, payload):
        started.append(payload.n)
        await asyncio.sleep(payload.seconds)
        finished.append(payload.n)

    consumer = make_consumer(redis, stream, job_router(handler), shutdown_timeout=0.5, policy=RetryPolicy(lease=60))
    stop = asyncio.Event()
    task = asyncio.create_task(consumer.run(stop))
    await Publisher(redis).publish(stream, "job", Job(n=1, seconds=0.3))
    await Publisher(redis).publish(stream, "job", Job(n=2, seconds=30))
    await eventually(lambda: len(started) == 2)
    begun = time.monotonic()
    stop.set()
    await task
    assert time.monotonic() - begun < 1.5
    assert finished == [1]
    [entry] = await redis.xpending_range(stream, GROUP, "-", "+", 10)  # the unfinished one, not lost
    [(_, fields)] = await redis.xrange(stream, entry["message_id"], entry["message_id"])
    assert json.loads(fields["payload"])["n"] == 2


async def test_a_handler_publishes_with_the_message_correlation_id(redis, prefix):
    stream, follow_up = prefix + "corr", prefix + "corr:next"

    async def handler(envelope, payload):
        await Publisher(redis).publish(follow_up, "job", Job(n=payload.n + 1))  # no correlation_id passed

    first = await Publisher(redis).publish(stream, "job", Job(n=1), correlation_id="chain-7")
    async with running(make_consumer(redis, stream, job_router(handler))):
        await eventually(lambda: _xlen_is(redis, follow_up, 1))
    [(_, fields)] = await redis.xrange(follow_up)
    assert fields["correlation_id"] == first.correlation_id == "chain-7" and fields["id"] != first.id


# --- (g) outbox ------------------------------------------------------------------------------------


async def test_outbox_relays_committed_rows_only(redis, prefix, pg):
    stream = prefix + "outbox"
    relay = OutboxRelay(pg.pool, redis)
    async with pg.pool.acquire() as conn:
        async with conn.transaction():
            committed = await enqueue(conn, stream, "effect", Effect(n=1))
            assert await relay.relay_once() == 0  # not committed yet: invisible to the relay
        with pytest.raises(RuntimeError):
            async with conn.transaction():
                await enqueue(conn, stream, "effect", Effect(n=2))
                raise RuntimeError("rolled back")
    assert await relay.relay_once() == 1
    assert await relay.relay_once() == 0
    [(_, fields)] = await redis.xrange(stream)
    assert Envelope.from_fields(fields).id == committed.id
    assert await pg.pool.fetchval("SELECT count(*) FROM outbox WHERE published_at IS NULL") == 0

    stop = asyncio.Event()
    task = asyncio.create_task(relay.run(stop, interval=0.05))
    async with pg.pool.acquire() as conn, conn.transaction():
        await enqueue(conn, stream, "effect", {"n": 3})
    await eventually(lambda: _xlen_is(redis, stream, 2))
    stop.set()
    await task


async def test_the_relay_wakes_on_commit_long_before_its_poll_interval(redis, prefix, pg):
    stream = prefix + "outbox-notify"
    relay, stop = OutboxRelay(pg.pool, redis), asyncio.Event()
    task = asyncio.create_task(relay.run(stop, interval=30))  # only the NOTIFY can wake it in time
    await asyncio.sleep(0.2)  # listening
    latencies = []
    for n in range(5):
        async with pg.pool.acquire() as conn, conn.transaction():
            await enqueue(conn, stream, "effect", {"n": n})
        committed = asyncio.get_running_loop().time()
        await eventually(lambda: _xlen_is(redis, stream, n + 1))
        latencies.append(asyncio.get_running_loop().time() - committed)
    stop.set()
    await asyncio.wait_for(task, 5)
    assert max(latencies) < 1.0, latencies


async def _xlen_is(redis, stream, n) -> bool:
    return await redis.xlen(stream) == n


@pytest.mark.parametrize("json_codec", [False, True], ids=["plain pool", "pool with the app's json codec"])
async def test_outbox_rows_hold_a_jsonb_object_and_old_string_rows_still_relay(redis, prefix, pg, json_codec):
    stream = prefix + "outbox-json"
    init = billing_sql._init_connection if json_codec else None
    pool = await asyncpg.create_pool(PG_DSN, min_size=1, max_size=1, init=init, server_settings={"search_path": pg.schema})
    try:
        async with pool.acquire() as conn, conn.transaction():
            new = await enqueue(conn, stream, "effect", Effect(n=1))
            # A row as enqueue wrote it before the fix (through a json codec): the fields as a JSON string.
            old = Envelope.build("effect", Effect(n=2))
            await conn.execute("INSERT INTO outbox (stream, action, fields) VALUES ($1, 'effect', to_jsonb($2::text))",
                               stream, json.dumps(old.to_fields()))
        kind, payload = await pool.fetchrow(
            "SELECT jsonb_typeof(fields), fields->>'payload' FROM outbox WHERE fields->>'id' = $1", new.id)
        assert kind == "object" and json.loads(payload) == {"n": 1}
        assert await OutboxRelay(pool, redis).relay_once() == 2
    finally:
        await pool.close()
    relayed = [Envelope.from_fields(fields) for _, fields in await redis.xrange(stream)]
    assert [(e.id, e.payload) for e in relayed] == [(new.id, {"n": 1}), (old.id, {"n": 2})]


async def test_two_relays_never_publish_a_row_twice(redis, prefix, pg):
    stream = prefix + "outbox2"
    async with pg.pool.acquire() as conn, conn.transaction():
        for n in range(300):
            await enqueue(conn, stream, "effect", Effect(n=n))
    pools = [await asyncpg.create_pool(PG_DSN, min_size=1, max_size=1, server_settings={"search_path": pg.schema}) for _ in range(2)]

    async def drain(relay: OutboxRelay) -> int:
        total = 0
        while published := await relay.relay_once(batch=10):
            total += published
        return total

    try:
        counts = await asyncio.gather(*(drain(OutboxRelay(pool, redis)) for pool in pools))
    finally:
        await asyncio.gather(*(pool.close() for pool in pools))
    ids = [fields["id"] for _, fields in await redis.xrange(stream)]
    assert sum(counts) == len(ids) == len(set(ids)) == 300


# --- (h) CLI -----------------------------------------------------------------------------------------


@pytest.fixture
def sync_prefix():
    prefix = f"t{uuid4().hex[:8]}:"
    yield prefix
    client = syncredis.Redis.from_url(REDIS_URL)
    keys = list(client.scan_iter(match=prefix + "*"))
    if keys:
        client.delete(*keys)
    client.close()


def run_cli(capsys, *argv) -> str:
    assert cli(["streams", *argv, "--redis-url", REDIS_URL]) == 0
    return capsys.readouterr().out


def test_cli_info_pending_dead_and_replay(sync_prefix, capsys):
    stream = sync_prefix + "cli"
    broken = True
    handled = []

    async def handler(envelope, payload):
        if broken:
            raise PermanentError("bad card")
        handled.append(envelope.attempts)

    async def consume(name, publish=0):
        redis = aioredis.from_url(REDIS_URL, decode_responses=True)
        async with running(make_consumer(redis, stream, job_router(handler), name=name)):
            for n in range(publish):
                await Publisher(redis).publish(stream, "job", Job(n=n))
            await eventually(lambda: _done(redis, stream))
        await redis.aclose()

    asyncio.run(consume("c1", publish=2))  # both dead-lettered

    row = next(line for line in run_cli(capsys, "info", "--prefix", sync_prefix).splitlines() if line.startswith(stream))
    # STREAM LENGTH GROUP CONSUMERS PENDING LAG DELAYED DEAD
    assert row.split() == [stream, "2", GROUP, "1", "0", "0", "0", "2"]
    table = run_cli(capsys, "dead", stream)
    assert "bad card" in table and "PermanentError" in table
    dead = json.loads(run_cli(capsys, "dead", stream, "--json"))
    assert [d["error"] for d in dead] == ["bad card", "bad card"]

    assert json.loads(run_cli(capsys, "replay", stream, dead[0]["dead_id"], "--json")) == {"replayed": 1}
    assert json.loads(run_cli(capsys, "replay", stream, "--all", "--json")) == {"replayed": 1}
    [info] = json.loads(run_cli(capsys, "info", "--prefix", sync_prefix, "--json"))
    assert (info["length"], info["dead"]) == (4, 0)

    # A worker "ghost" reads the replayed entries and dies; the CLI shows them pending.
    client = syncredis.Redis.from_url(REDIS_URL, decode_responses=True)
    client.xreadgroup(GROUP, "ghost", {stream: ">"})
    client.close()
    assert run_cli(capsys, "pending", stream, "--group", GROUP).count("ghost") == 2

    broken = False  # the bug is fixed; ghost restarts and rereads its own pending entries
    asyncio.run(consume("ghost"))
    assert handled == [0, 0]  # replayed with attempts reset
