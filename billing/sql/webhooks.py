"""Webhook endpoints, the events sent to them, and the delivery log (one row per attempt)."""
from __future__ import annotations

from datetime import datetime
from uuid import UUID

import asyncpg

_ENDPOINT = "id, user_id, url, description, events, is_active, created_at, updated_at"


async def create_endpoint(conn: asyncpg.Connection, user_id: UUID, url: str, events: list[str],
                          description: str | None, secret: str) -> asyncpg.Record:
    return await conn.fetchrow(
        f"""INSERT INTO webhook_endpoints (user_id, url, events, description, secret)
            VALUES ($1, $2, $3, $4, $5) RETURNING {_ENDPOINT}, secret""",
        user_id, url, events, description, secret,
    )


async def list_endpoints_for_user(conn: asyncpg.Connection, user_id: UUID) -> list[asyncpg.Record]:
    return await conn.fetch(
        f"SELECT {_ENDPOINT} FROM webhook_endpoints WHERE user_id = $1 AND is_active ORDER BY created_at, id", user_id)


async def get_endpoint_for_user(conn: asyncpg.Connection, endpoint_id: UUID, user_id: UUID) -> asyncpg.Record | None:
    return await conn.fetchrow(
        f"SELECT {_ENDPOINT} FROM webhook_endpoints WHERE id = $1 AND user_id = $2 AND is_active", endpoint_id, user_id)


async def get_endpoint(conn: asyncpg.Connection, endpoint_id: UUID) -> asyncpg.Record | None:
    """With its secret: for the delivery actor only."""
    return await conn.fetchrow(f"SELECT {_ENDPOINT}, secret FROM webhook_endpoints WHERE id = $1", endpoint_id)


async def deactivate_endpoint(conn: asyncpg.Connection, endpoint_id: UUID, user_id: UUID) -> bool:
    """Deleting keeps the row (the delivery log points at it) but nothing is sent to it any more."""
    status = await conn.execute(
        "UPDATE webhook_endpoints SET is_active = false WHERE id = $1 AND user_id = $2 AND is_active", endpoint_id, user_id)
    return status.endswith(" 1")


async def active_endpoints_for_event(conn: asyncpg.Connection, user_id: UUID, event_type: str) -> list[asyncpg.Record]:
    return await conn.fetch(
        """SELECT id FROM webhook_endpoints
           WHERE user_id = $1 AND is_active AND (events = '{}' OR $2 = ANY (events)) ORDER BY created_at, id""",
        user_id, event_type,
    )


async def create_event(conn: asyncpg.Connection, user_id: UUID, event_type: str, data: dict,
                       created_at: datetime) -> asyncpg.Record:
    return await conn.fetchrow(
        "INSERT INTO webhook_events (user_id, type, data, created_at) VALUES ($1, $2, $3, $4) RETURNING *",
        user_id, event_type, data, created_at,
    )


async def get_event_for_user(conn: asyncpg.Connection, event_id: UUID, user_id: UUID) -> asyncpg.Record | None:
    return await conn.fetchrow("SELECT * FROM webhook_events WHERE id = $1 AND user_id = $2", event_id, user_id)


async def log_attempt(conn: asyncpg.Connection, *, endpoint_id: UUID, event_id: UUID, event_type: str, url: str,
                      payload: dict, attempt: int, status: str, response_status: int | None,
                      response_body: str | None, error: str | None, duration_ms: int | None,
                      created_at: datetime) -> asyncpg.Record:
    return await conn.fetchrow(
        """INSERT INTO webhook_outbound_requests
               (endpoint_id, event_id, event_type, url, payload, attempt, status, response_status, response_body,
                error, duration_ms, created_at)
           VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12) RETURNING *""",
        endpoint_id, event_id, event_type, url, payload, attempt, status, response_status, response_body,
        error, duration_ms, created_at,
    )


async def list_deliveries_for_endpoint(conn: asyncpg.Connection, endpoint_id: UUID, user_id: UUID,
                                       limit: int = 50, offset: int = 0) -> list[asyncpg.Record]:
    """The endpoint's delivery log, newest first (scoped to its owner in the query)."""
    return await conn.fetch(
        """SELECT r.id, r.endpoint_id, r.event_id, r.event_type, r.url, r.attempt, r.status, r.response_status,
                  r.response_body, r.error, r.duration_ms, r.created_at
           FROM webhook_outbound_requests r JOIN webhook_endpoints e ON e.id = r.endpoint_id
           WHERE r.endpoint_id = $1 AND e.user_id = $2
           ORDER BY r.created_at DESC, r.attempt DESC LIMIT $3 OFFSET $4""",
        endpoint_id, user_id, limit, offset,
    )


async def endpoints_delivered_event(conn: asyncpg.Connection, event_id: UUID, user_id: UUID) -> list[UUID]:
    """Active endpoints that were sent `event_id` before."""
    rows = await conn.fetch(
        """SELECT DISTINCT e.id FROM webhook_outbound_requests r JOIN webhook_endpoints e ON e.id = r.endpoint_id
           WHERE r.event_id = $1 AND e.user_id = $2 AND e.is_active""",
        event_id, user_id,
    )
    return [r["id"] for r in rows]
