"""emit(): record a webhook event and queue its delivery to each of the user's matching endpoints.

Call it inside the transaction that made the change; the deliveries go through the outbox, so
they are sent if and only if that transaction commits:

    async with conn.transaction():
        ...update the subscription...
        await emit(conn, prefix=settings.redis_prefix, user_id=user_id, event_type="subscription.renewed",
                   data={"subscription": {...}}, occurred_at=clock.now())

Event types: see billing.webhooks.EVENT_TYPES (subscription.created, subscription.activated,
subscription.renewed, subscription.past_due, subscription.canceled, payment.succeeded,
payment.failed, ...). `data` must be JSON-able (Decimal, UUID and datetime are turned into strings).
"""
from __future__ import annotations

import json
from datetime import datetime
from typing import Any
from uuid import UUID

import asyncpg

from billing.commands import DeliverWebhook, stream_key
from billing.sql import dumps
from billing.sql import webhooks as repo
from billing.streams import enqueue

DELIVERY_FAMILY = "webhook_delivery"
DELIVER_ACTION = "deliver_webhook"


async def emit(conn: asyncpg.Connection, *, prefix: str, user_id: UUID, event_type: str, data: dict[str, Any],
               occurred_at: datetime, correlation_id: str | None = None) -> UUID:
    """Store the event and enqueue one DeliverWebhook per active endpoint listening to it; returns the event id."""
    plain = json.loads(dumps(data))  # exactly what the receivers will see, stored once
    event = await repo.create_event(conn, user_id, event_type, plain, occurred_at)
    for endpoint in await repo.active_endpoints_for_event(conn, user_id, event_type):
        await queue_delivery(conn, prefix, event, endpoint["id"], correlation_id=correlation_id)
    return event["id"]


async def queue_delivery(conn: asyncpg.Connection, prefix: str, event: asyncpg.Record, endpoint_id: UUID,
                         *, correlation_id: str | None = None) -> None:
    payload = DeliverWebhook(event_id=event["id"], endpoint_id=endpoint_id, event_type=event["type"],
                             payload=event["data"], created_at=event["created_at"])
    await enqueue(conn, stream_key(prefix, DELIVERY_FAMILY), DELIVER_ACTION, payload, correlation_id=correlation_id)
