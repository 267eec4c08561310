"""Publishing envelopes onto a stream, trimmed with MAXLEN ~."""

from collections.abc import Iterable, Mapping
from typing import Any

import redis.asyncio as aioredis
from pydantic import BaseModel

from .envelope import Envelope

DEFAULT_MAXLEN = 100_000


class Publisher:
    def __init__(
        self,
        redis: aioredis.Redis,
        maxlen: int = DEFAULT_MAXLEN,
        *,
        models: Mapping[str, type[BaseModel]] | None = None,
    ) -> None:
        """`models` (e.g. `router.models`) validates dict payloads by action; model payloads validate themselves."""
        self.redis = redis
        self.maxlen = maxlen
        self.models = models

    async def publish(
        self,
        stream: str,
        action: str,
        payload: BaseModel | Mapping[str, Any],
        *,
        correlation_id: str | None = None,
        idempotency_key: str | None = None,
        max_attempts: int | None = None,
    ) -> Envelope:
        envelope = Envelope.build(
            action,
            payload,
            models=self.models,
            correlation_id=correlation_id,
            idempotency_key=idempotency_key,
            max_attempts=max_attempts,
        )
        await self.publish_fields(stream, envelope.to_fields())
        return envelope

    async def publish_fields(self, stream: str, fields: Mapping[str, str]) -> str:
        """XADD already encoded envelope fields; returns the stream id."""
        return await self.redis.xadd(stream, dict(fields), maxlen=self.maxlen, approximate=True)

    async def publish_many(self, entries: Iterable[tuple[str, Mapping[str, str]]]) -> list[str]:
        """XADD several (stream, fields) in one round trip; returns their stream ids."""
        async with self.redis.pipeline(transaction=False) as pipe:
            for stream, fields in entries:
                pipe.xadd(stream, dict(fields), maxlen=self.maxlen, approximate=True)
            return await pipe.execute()
