"""What every actor needs, built once per worker process and handed to the router builders."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Awaitable, Callable

import aiohttp
import asyncpg
import redis.asyncio as aioredis
from pydantic import BaseModel

from billing.clock import Clock
from billing.commands import stream_key
from billing.config import Settings
from billing.streams import Envelope, Publisher, RetryPolicy, enqueue


@dataclass
class Deps:
    settings: Settings
    pool: asyncpg.Pool
    redis: aioredis.Redis
    clock: Clock
    http: aiohttp.ClientSession | None = None  # one outgoing HTTP session per worker (webhook delivery)
    # What actors opened for themselves (e.g. a client session) and the worker closes when it stops.
    on_shutdown: list[Callable[[], Awaitable[None]]] = field(default_factory=list)

    def stream(self, family: str) -> str:
        return stream_key(self.settings.redis_prefix, family)

    async def publish(self, family: str, action: str, payload: BaseModel, **options: Any) -> Envelope:
        """Publish straight to a stream (when there is no transaction to tie it to)."""
        return await Publisher(self.redis, self.settings.stream_maxlen).publish(self.stream(family), action, payload, **options)

    async def enqueue(self, conn: asyncpg.Connection, family: str, action: str, payload: BaseModel, **options: Any) -> Envelope:
        """Publish from inside the caller's transaction, through the outbox: sent if and only if it commits."""
        return await enqueue(conn, self.stream(family), action, payload, **options)


def retry_policy(settings: Settings, **overrides: Any) -> RetryPolicy:
    values = dict(max_retries=settings.stream_max_retries, base_delay=settings.stream_base_delay,
                  multiplier=settings.stream_multiplier, max_delay=settings.stream_max_delay,
                  jitter=settings.stream_jitter, lease=settings.stream_lease)
    values.update(overrides)
    return RetryPolicy(**values)
