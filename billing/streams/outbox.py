"""Outbox: messages written in a PostgreSQL transaction reach the stream only if it commits.

A relay XADDs committed rows and marks them published in its own transaction. If it dies
between XADD and COMMIT the row is published again later with the same envelope id, which
the consumers' inbox turns into a no-op: effects happen once.
"""

import asyncio
from contextlib import suppress
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

NOTIFY_CHANNEL = "streams_outbox"  # the outbox trigger's channel (see billing.streams.sql)

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

    async def run(self, stop: asyncio.Event, interval: float = 1.0, batch: int = 100) -> None:
        """Relay rows as soon as their transaction commits (the outbox trigger NOTIFYs, and PostgreSQL
        delivers a notification only at commit), and every `interval` seconds in any case: the poll
        covers a listening connection lost in an outage until it is listening again."""
        wake = asyncio.Event()

        def on_notify(*_) -> None:
            wake.set()

        listener: asyncpg.Connection | None = None
        try:
            while not stop.is_set():
                if not _listening(listener):
                    listener = await self._listen(on_notify)
                wake.clear()
                try:
                    published = await self.relay_once(batch)
                except (OSError, asyncpg.PostgresError, RedisError):
                    log.exception("outbox relay failed; retrying")
                    published = 0
                if published < batch:  # caught up: wait for a commit, the poll interval or stop
                    await _first_of(stop, wake, timeout=interval)
        finally:
            if _listening(listener):
                with suppress(OSError, asyncpg.PostgresError, asyncpg.InterfaceError):
                    await listener.remove_listener(NOTIFY_CHANNEL, on_notify)
                    await self.pool.release(listener)

    async def _listen(self, on_notify) -> asyncpg.Connection | None:
        try:
            conn = await self.pool.acquire(timeout=2)
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, TimeoutError):
            return None  # PostgreSQL is down: poll until it is back
        try:
            await conn.add_listener(NOTIFY_CHANNEL, on_notify)
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError):
            with suppress(OSError, asyncpg.PostgresError, asyncpg.InterfaceError):
                await self.pool.release(conn)
            return None
        return conn


def _listening(conn: asyncpg.Connection | None) -> bool:
    """Whether the listening connection still works; the pool detaches it when PostgreSQL goes away."""
    try:
        return conn is not None and not conn.is_closed()
    except asyncpg.InterfaceError:
        return False


async def _first_of(stop: asyncio.Event, wake: asyncio.Event, timeout: float) -> None:
    waiters = [asyncio.ensure_future(stop.wait()), asyncio.ensure_future(wake.wait())]
    try:
        await asyncio.wait(waiters, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for waiter in waiters:
            waiter.cancel()
