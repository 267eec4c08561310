"""Outbox: messages written in a PostgreSQL transaction reach the stream only if it commits.

A relay XADDs committed rows and marks them published in its own transaction. If it dies
between XADD and COMMIT the row is published again later with the same envelope id, which
the consumers' inbox turns into a no-op: effects happen once.
"""

import asyncio
import json
from collections.abc import Mapping
from typing import Any

import asyncpg
import redis.asyncio as aioredis
import structlog
from pydantic import BaseModel
from redis.exceptions import RedisError

from .envelope import Envelope
from .publisher import Publisher

log = structlog.get_logger("billing.streams.outbox")


async def enqueue(
    conn: asyncpg.Connection,
    stream: str,
    action: str,
    payload: BaseModel | Mapping[str, Any],
    *,
    correlation_id: str | None = None,
    idempotency_key: str | None = None,
    max_attempts: int | None = None,
    models: Mapping[str, type[BaseModel]] | None = None,
) -> Envelope:
    """Insert a message into the outbox within the caller's transaction."""
    envelope = Envelope.build(
        action,
        payload,
        models=models,
        correlation_id=correlation_id,
        idempotency_key=idempotency_key,
        max_attempts=max_attempts,
    )
    # Sent as text and cast in SQL: a jsonb parameter would go through the pool's json codec (if
    # it has one) and store the already dumped text as a JSON string instead of an object.
    await conn.execute(
        "INSERT INTO outbox (stream, action, fields) VALUES ($1, $2, $3::text::jsonb)",
        stream,
        action,
        json.dumps(envelope.to_fields()),
    )
    return envelope


def _decode_fields(text: str) -> dict[str, str]:
    """The envelope fields of an outbox row read as text; rows written before the fix hold them as a JSON string."""
    fields = json.loads(text)
    return json.loads(fields) if isinstance(fields, str) else fields


class OutboxRelay:
    def __init__(self, pool: asyncpg.Pool, redis: aioredis.Redis, publisher: Publisher | None = None) -> None:
        self.pool = pool
        self.publisher = publisher or Publisher(redis)

    async def relay_once(self, batch: int = 100) -> int:
        """Publish up to `batch` committed rows; returns how many."""
        async with self.pool.acquire() as conn, conn.transaction():
            # SKIP LOCKED: concurrent relays take disjoint rows instead of publishing the same ones.
            rows = await conn.fetch(
                "SELECT id, stream, fields::text AS fields FROM outbox WHERE published_at IS NULL"
                " ORDER BY id LIMIT $1 FOR UPDATE SKIP LOCKED",
                batch,
            )
            if not rows:
                return 0
            await self.publisher.publish_many((row["stream"], _decode_fields(row["fields"])) for row in rows)
            await conn.execute(
                "UPDATE outbox SET published_at = now() WHERE id = any($1::bigint[])",
                [row["id"] for row in rows],
            )
        return len(rows)

    async def run(self, stop: asyncio.Event, interval: float = 0.2, batch: int = 100) -> None:
        while not stop.is_set():
            try:
                published = await self.relay_once(batch)
            except (OSError, asyncpg.PostgresError, RedisError):
                log.exception("outbox relay failed; retrying")
                published = 0
            if published < batch:  # caught up: wait for new rows
                try:
                    await asyncio.wait_for(stop.wait(), interval)
                except TimeoutError:
                    pass
