"""Latency from POST /v1/payments/process to the subscription being active, on the real processes.

    python bench/payments.py [--subscriptions 200] [--concurrency 8]

Not a test: it prints figures. It starts both APIs and both workers exactly as the reliability
tests do (tests/harness.py: a fresh schema and Redis prefix, removed afterwards), subscribes
`--subscriptions` users to the basic plan, then pays them `--concurrency` at a time. One poller
reads PostgreSQL every few milliseconds and notes when each subscription turned active (the
payment outcome went API -> outbox -> relay -> stream -> subscriptions worker, racing the
gateway webhook). Machines are noisy, so the same run measures two raw baselines and prints
the ratios: an XADD -> XREADGROUP round trip on Redis and a PostgreSQL INSERT + SELECT.
"""
from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import aiohttp  # noqa: E402
import asyncpg  # noqa: E402
import redis.asyncio as aioredis  # noqa: E402

from tests.api import Api  # noqa: E402
from tests.conftest import PG_URL  # noqa: E402
from tests.harness import Stack  # noqa: E402


def pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(p / 100 * (len(ordered) - 1))))]


def ms(seconds: float) -> str:
    return f"{seconds * 1000:8.2f} ms"


async def redis_round_trip(url: str, prefix: str, n: int = 300) -> list[float]:
    """XADD then XREADGROUP of that entry: the floor of any stream hop."""
    redis = aioredis.from_url(url, decode_responses=True)
    stream = f"{prefix}:bench:{uuid.uuid4().hex[:6]}"
    await redis.xgroup_create(stream, "g", id="0", mkstream=True)
    times = []
    try:
        for i in range(n):
            started = time.perf_counter()
            await redis.xadd(stream, {"n": str(i)})
            await redis.xreadgroup("g", "c", {stream: ">"}, count=1)
            times.append(time.perf_counter() - started)
    finally:
        await redis.delete(stream)
        await redis.aclose()
    return times


async def postgres_round_trip(conn: asyncpg.Connection, n: int = 300) -> list[float]:
    """A committed (logged, fsynced) INSERT and a SELECT of it: the floor of one database write."""
    await conn.execute("CREATE TABLE bench_rt (id bigserial PRIMARY KEY, v text)")
    times = []
    for i in range(n):
        started = time.perf_counter()
        row_id = await conn.fetchval("INSERT INTO bench_rt (v) VALUES ($1) RETURNING id", str(i))
        await conn.fetchval("SELECT v FROM bench_rt WHERE id = $1", row_id)
        times.append(time.perf_counter() - started)
    return times


async def run(count: int, concurrency: int) -> None:
    async with Stack() as stack, aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=64)) as http:
        await stack.start_all()
        api = Api(http, stack.url("subscriptions"), stack.url("payments"))
        db = await asyncpg.connect(PG_URL, server_settings={"search_path": stack.settings.database_schema})
        try:
            gate = asyncio.Semaphore(16)

            async def customer():
                async with gate:
                    user = await api.register()
                    return user, await api.subscribe(user)
            customers = await asyncio.gather(*(customer() for _ in range(count)))
            print(f"{count} pending subscriptions; paying {concurrency} at a time")

            paid_at: dict[str, float] = {}
            answered: dict[str, float] = {}
            active_at: dict[str, float] = {}
            done = asyncio.Event()

            async def poller():
                while not done.is_set():
                    waiting = [sid for sid in paid_at if sid not in active_at]
                    if waiting:
                        rows = await db.fetch("SELECT id::text FROM subscriptions WHERE status = 'active'"
                                              " AND id = any($1::uuid[])", waiting)
                        now = time.perf_counter()
                        for row in rows:
                            active_at[row["id"]] = now
                    if len(active_at) == count:
                        done.set()
                    await asyncio.sleep(0.002)

            slots = asyncio.Semaphore(concurrency)

            async def pay(user, sub):
                async with slots:
                    paid_at[sub["id"]] = time.perf_counter()
                    await api.pay(user, sub)
                    answered[sub["id"]] = time.perf_counter()
                    while sub["id"] not in active_at:  # keep `concurrency` payments in the pipeline
                        await asyncio.sleep(0.002)

            started = time.perf_counter()
            poll = asyncio.create_task(poller())
            await asyncio.gather(*(pay(u, s) for u, s in customers))
            await asyncio.wait_for(done.wait(), 120)
            poll.cancel()
            elapsed = time.perf_counter() - started

            to_active = [active_at[sid] - paid_at[sid] for sid in paid_at]
            api_only = [answered[sid] - paid_at[sid] for sid in paid_at]
            redis_rt = await redis_round_trip(stack.settings.redis_url, stack.settings.redis_prefix)
            pg_rt = await postgres_round_trip(db)
        finally:
            await db.close()

    r50, g50 = statistics.median(redis_rt), statistics.median(pg_rt)
    print(f"\n{'':34}{'p50':>11}{'p99':>11}{'x Redis RT':>12}{'x PG RT':>10}")
    for name, values in (("POST /v1/payments/process answer", api_only), ("payment -> subscription active", to_active),
                         ("baseline XADD->XREADGROUP", redis_rt), ("baseline PG INSERT+SELECT", pg_rt)):
        p50, p99 = statistics.median(values), pct(values, 99)
        print(f"{name:34}{ms(p50):>11}{ms(p99):>11}{p50 / r50:>11.1f}x{p50 / g50:>9.1f}x")
    print(f"\n{count} payments in {elapsed:.1f}s ({count / elapsed:.1f}/s at concurrency {concurrency})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--subscriptions", type=int, default=200)
    parser.add_argument("--concurrency", type=int, default=8)
    args = parser.parse_args()
    asyncio.run(run(args.subscriptions, args.concurrency))


if __name__ == "__main__":
    main()
