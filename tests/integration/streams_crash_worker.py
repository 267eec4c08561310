"""A handler with a PostgreSQL effect, and a worker process running it (killed by the crash tests).

    python -m tests.integration.streams_crash_worker REDIS_URL DSN SCHEMA STREAM GROUP NAME HANG_AT
"""

import asyncio
import sys
from collections.abc import Callable

import asyncpg
import redis.asyncio as aioredis
from pydantic import BaseModel

from billing.streams import Consumer, RetryPolicy, Router, claim_inbox

EFFECTS_DDL = "CREATE TABLE effects (envelope_id text NOT NULL, n int NOT NULL);"  # no unique key on purpose


class Effect(BaseModel):
    n: int


def effect_router(pool: asyncpg.Pool, hang_at: str | None = None, started: Callable[[], None] = lambda: None) -> Router:
    """Writes one `effects` row and the inbox row in one transaction. With `hang_at`
    ("before_commit" or "after_commit") it calls `started()` there and hangs, to be crashed."""

    async def handle(envelope, payload: Effect) -> None:
        async with pool.acquire() as conn:
            async with conn.transaction():
                if await claim_inbox(conn, "effects", envelope.id):
                    await conn.execute("INSERT INTO effects VALUES ($1, $2)", envelope.id, payload.n)
                if hang_at == "before_commit":
                    started()
                    await asyncio.Event().wait()
        if hang_at == "after_commit":
            started()
            await asyncio.Event().wait()

    router = Router()
    router.register("effect", Effect, handle)
    return router


async def main(redis_url: str, dsn: str, schema: str, stream: str, group: str, name: str, hang_at: str) -> None:
    pool = await asyncpg.create_pool(dsn, min_size=1, max_size=2, server_settings={"search_path": schema})
    redis = aioredis.from_url(redis_url, decode_responses=True)
    router = effect_router(pool, hang_at, lambda: print("STARTED", flush=True))
    await Consumer(redis, stream, group, name, router, policy=RetryPolicy(lease=0.5), block_ms=100).run(asyncio.Event())


if __name__ == "__main__":
    asyncio.run(main(*sys.argv[1:]))
