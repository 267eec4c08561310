"""usage_sync actor: adds the units accepted in Redis to the `usage` table, in batches.

The runtime calls the handler once per message. The handler parks its message in a UsageBatcher
and waits; the batcher writes up to `usage_batch_size` messages (or whatever arrived within
`usage_batch_wait_ms`) in ONE transaction: an inbox row per message id (exactly once: a redelivered
message is skipped) plus one upsert per (user, feature, period) adding the sum. Each handler then
returns (the runtime XACKs) or raises with the batch's error (the runtime retries; the inbox keeps
the retry from counting twice).
"""
from __future__ import annotations

import asyncio
from collections import defaultdict
from uuid import UUID

import asyncpg
import structlog

from billing.commands import UsageRecorded
from billing.consumers.deps import Deps
from billing.sql import usage as usage_sql
from billing.streams import Envelope, PermanentError, Router

log = structlog.get_logger("billing.usage_sync")

INBOX = "usage_sync"  # the inbox consumer name, the same in every worker process
ACTION = "usage_recorded"

Item = tuple[str, UsageRecorded]  # (envelope id, payload)


async def claim_many(conn: asyncpg.Connection, consumer: str, message_ids: list[str]) -> set[str]:
    """claim_inbox for many ids in one statement: the ids not processed before (now recorded)."""
    rows = await conn.fetch(
        "INSERT INTO inbox (consumer, message_id) SELECT $1, unnest($2::text[]) ON CONFLICT DO NOTHING RETURNING message_id",
        consumer, message_ids,
    )
    return {r["message_id"] for r in rows}


async def apply_batch(pool: asyncpg.Pool, items: list[Item]) -> int:
    """Add the units of the messages not applied before, all in one transaction; returns how many were new."""
    async with pool.acquire() as conn, conn.transaction():
        fresh = await claim_many(conn, INBOX, sorted({message_id for message_id, _ in items}))
        sums: dict[tuple[UUID, str, object], list] = defaultdict(lambda: [None, None, 0])
        seen = set()
        for message_id, p in items:
            if message_id not in fresh or message_id in seen:
                continue
            seen.add(message_id)
            row = sums[(p.user_id, p.feature_name, p.period_start)]
            row[0], row[1], row[2] = p.subscription_id, p.reset_at, row[2] + p.delta
        await usage_sql.add_many(conn, [(user, sub, feature, start, reset_at, used)
                                        for (user, feature, start), (sub, reset_at, used) in sums.items()])
    return len(seen)


class UsageBatcher:
    def __init__(self, pool: asyncpg.Pool, *, max_batch: int = 500, max_wait: float = 0.02) -> None:
        self.pool = pool
        self.max_batch = max_batch
        self.max_wait = max_wait
        self._pending: list[tuple[str, UsageRecorded, asyncio.Future]] = []
        self._timer: asyncio.TimerHandle | None = None
        self._writes: set[asyncio.Task] = set()

    async def handle(self, envelope: Envelope, payload: UsageRecorded) -> None:
        if payload.delta < 1:
            raise PermanentError(f"delta must be positive, got {payload.delta}")
        loop = asyncio.get_running_loop()
        done = loop.create_future()
        self._pending.append((envelope.id, payload, done))
        if len(self._pending) >= self.max_batch:
            self._flush()
        elif self._timer is None:
            self._timer = loop.call_later(self.max_wait, self._flush)
        await done

    def _flush(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        batch, self._pending = self._pending, []
        if batch:
            task = asyncio.create_task(self._write(batch))
            self._writes.add(task)
            task.add_done_callback(self._writes.discard)

    async def _write(self, batch: list[tuple[str, UsageRecorded, asyncio.Future]]) -> None:
        try:
            await apply_batch(self.pool, [(message_id, p) for message_id, p, _ in batch])
        except (asyncpg.IntegrityConstraintViolationError, asyncpg.DataError):
            # One bad message (e.g. a user that no longer exists) must not hold the others back:
            # apply them one by one, so only the bad one fails.
            log.warning("usage batch refused, applying its messages one by one", size=len(batch))
            for message_id, p, done in batch:
                try:
                    await apply_batch(self.pool, [(message_id, p)])
                except (asyncpg.IntegrityConstraintViolationError, asyncpg.DataError) as exc:
                    _settle(done, PermanentError(f"usage row refused: {exc}"))
                except Exception as exc:
                    _settle(done, exc)
                else:
                    _settle(done, None)
        except Exception as exc:
            for _, _, done in batch:
                _settle(done, exc)
        else:
            for _, _, done in batch:
                _settle(done, None)


def _settle(done: asyncio.Future, exc: BaseException | None) -> None:
    if done.done():  # its handler was cancelled (shutdown): the message stays pending, the inbox dedups it
        return
    if exc is None:
        done.set_result(None)
    else:
        done.set_exception(exc)


def build_routers(deps: Deps) -> dict[str, Router]:
    settings = deps.settings
    batcher = UsageBatcher(deps.pool, max_batch=settings.usage_batch_size,
                           max_wait=settings.usage_batch_wait_ms / 1000)
    # Twice the batch in flight: one batch fills while the previous one commits.
    router = Router(concurrency=2 * settings.usage_batch_size)
    router.register(ACTION, UsageRecorded, batcher.handle)
    return {"usage_sync": router}
