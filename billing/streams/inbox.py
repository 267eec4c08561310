"""Inbox: makes a handler's effect happen once even when its message is delivered twice."""

import asyncpg


async def claim_inbox(conn: asyncpg.Connection, consumer: str, message_id: str) -> bool:
    """Record `message_id` (the envelope id) as processed by `consumer`; False if it already was.

    `consumer` names the logical handler (e.g. the group), the same in every worker process;
    the envelope id stays the same across retries and redeliveries.

    Call it inside the handler's transaction: its effect and the inbox row commit together,
    and a redelivered message finds the row and returns without a second effect.
    """
    inserted = await conn.fetchval(
        "INSERT INTO inbox (consumer, message_id) VALUES ($1, $2) ON CONFLICT DO NOTHING RETURNING true",
        consumer,
        message_id,
    )
    return bool(inserted)
