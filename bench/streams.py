"""Noop throughput of the streams runtime against a raw XREADGROUP+XACK loop and Dramatiq.

    python bench/streams.py [--messages 20000] [--redis-url redis://127.0.0.1:6379/0] [--asyncio-loop]

All three consume the same number of pre-published noop messages from the same Redis in this
run (publishing is not timed); keys live under a unique prefix and are deleted afterwards.
"""

import argparse
import asyncio
import logging
import sys
import threading
import time
from pathlib import Path
from uuid import uuid4

import redis as syncredis
import redis.asyncio as aioredis
import structlog
from pydantic import BaseModel

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from billing import eventloop  # noqa: E402
from billing.streams import Consumer, Envelope, RetryPolicy, Router  # noqa: E402

GROUP = "bench"
BATCH = 64


class Noop(BaseModel):
    n: int


async def publish(redis: aioredis.Redis, stream: str, count: int) -> None:
    for start in range(0, count, 1000):
        async with redis.pipeline(transaction=False) as pipe:
            for n in range(start, min(start + 1000, count)):
                pipe.xadd(stream, Envelope.build("noop", Noop(n=n)).to_fields())
            await pipe.execute()


async def raw_loop(redis: aioredis.Redis, stream: str, count: int) -> float:
    """The floor: read a batch, ack it in one XACK; nothing else."""
    await redis.xgroup_create(stream, GROUP, "0")
    started, done = time.perf_counter(), 0
    while done < count:
        reply = await redis.xreadgroup(GROUP, "raw", {stream: ">"}, count=BATCH, block=1000)
        ids = [msg_id for msg_id, _ in reply[0][1]]
        await redis.xack(stream, GROUP, *ids)
        done += len(ids)
    return count / (time.perf_counter() - started)


async def ours(redis: aioredis.Redis, stream: str, count: int) -> float:
    finished = asyncio.Event()
    done = 0

    async def noop(envelope, payload):
        nonlocal done
        done += 1
        if done == count:
            finished.set()

    router = Router()
    router.register("noop", Noop, noop)
    consumer = Consumer(redis, stream, GROUP, "ours-0", router, policy=RetryPolicy(), concurrency=64, batch=BATCH)
    stop = asyncio.Event()
    started = time.perf_counter()
    task = asyncio.create_task(consumer.run(stop))
    await finished.wait()
    await _until_acked(redis, stream)
    elapsed = time.perf_counter() - started
    stop.set()
    await task
    return count / elapsed


async def _until_acked(redis: aioredis.Redis, stream: str) -> None:
    while (await redis.xpending(stream, GROUP))["pending"]:
        await asyncio.sleep(0.001)


def dramatiq_rate(url: str, namespace: str, count: int) -> float:
    import dramatiq
    from dramatiq.brokers.redis import RedisBroker

    broker = RedisBroker(url=url, namespace=namespace)
    dramatiq.set_broker(broker)
    done, lock, finished = [0], threading.Lock(), threading.Event()

    @dramatiq.actor(queue_name="bench", max_retries=0)
    def noop(n):
        with lock:
            done[0] += 1
            if done[0] == count:
                finished.set()

    for n in range(count):
        noop.send(n)
    worker = dramatiq.Worker(broker, worker_threads=8)
    started = time.perf_counter()
    worker.start()
    finished.wait(120)
    elapsed = time.perf_counter() - started
    worker.stop()
    broker.close()
    return done[0] / elapsed


async def measure(redis: aioredis.Redis, prefix: str, name: str, run, count: int) -> float:
    stream = f"{prefix}:{name}"
    await publish(redis, stream, count)
    try:
        return await run(redis, stream, count)
    finally:
        await redis.delete(stream)


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--messages", type=int, default=20_000)
    parser.add_argument("--rounds", type=int, default=3, help="raw and ours alternate; the best round counts")
    parser.add_argument("--dramatiq-messages", type=int, default=5_000, help="Dramatiq is slow; fewer keep it short")
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/0")
    parser.add_argument("--asyncio-loop", action="store_true", help="asyncio's own loop instead of uvloop (as `billing worker` runs)")
    args = parser.parse_args()
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    logging.getLogger("dramatiq").setLevel(logging.WARNING)

    prefix = f"bench{uuid4().hex[:8]}"
    redis = aioredis.from_url(args.redis_url, decode_responses=True)
    raw, mine = [], []
    try:
        # Alternating rounds so both see the same background load (this host is shared).
        for _ in range(args.rounds):
            raw.append(await measure(redis, prefix, "raw", raw_loop, args.messages))
            mine.append(await measure(redis, prefix, "ours", ours, args.messages))
        drama = await asyncio.to_thread(dramatiq_rate, args.redis_url, prefix, args.dramatiq_messages)
    finally:
        keys = [key async for key in redis.scan_iter(match=f"{prefix}*")]
        if keys:
            await redis.delete(*keys)
        await redis.aclose()
    leftovers = syncredis.Redis.from_url(args.redis_url).keys(f"{prefix}*")
    best_raw, best_mine = max(raw), max(mine)
    loop = type(asyncio.get_running_loop()).__module__.split(".")[0]
    print(f"messages: {args.messages} x {args.rounds} rounds (dramatiq {args.dramatiq_messages}), batch {BATCH}, concurrency 64, loop {loop}")
    print(f"raw XREADGROUP+XACK : {best_raw:9.0f} msg/s  (rounds: {', '.join(f'{r:.0f}' for r in raw)})")
    print(f"billing.streams     : {best_mine:9.0f} msg/s  (rounds: {', '.join(f'{r:.0f}' for r in mine)})")
    print(f"dramatiq RedisBroker: {drama:9.0f} msg/s")
    print(f"ours/raw      = {best_mine / best_raw:.2f}  (target >= 0.50)")
    print(f"ours/dramatiq = {best_mine / drama:.1f}  (target >= 5)")
    print(f"keys left under {prefix}*: {len(leftovers)}")


if __name__ == "__main__":
    if "--asyncio-loop" in sys.argv:
        asyncio.run(main())
    else:
        eventloop.run(main())
