"""Usage metering on Redis: per-period counters, an atomic check-and-increment that also queues the
accepted units for PostgreSQL, the entitlement cache, and the cleanup of ended periods.

Hot path of POST /v1/usage/use: the user's plan limits come from an in-process cache, then ONE
EVALSHA checks the limit, increments the counter and XADDs a `usage_recorded` envelope onto the
usage_sync stream. Counter and stream change in the same atomic step, so no accepted unit can be
lost between them; the usage_sync actor adds the units to the `usage` table in batches.

Keys (all under the {sub} hash tag, so the script's keys share a Redis Cluster slot):
    <prefix>:{sub}:usage:<user>:<feature>:<period_start>-<reset_at>   counter (unix seconds), TTL past reset_at
    <prefix>:{sub}:usage_event:<user>:<event_id>                     an accepted event_id, for retries
"""
from __future__ import annotations

import asyncio
import hashlib
import json
import time
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Mapping
from uuid import UUID

import asyncpg
import redis.asyncio as aioredis
from hiredis import pack_command
from redis.exceptions import NoScriptError, ResponseError

from billing.commands import stream_key
from billing.config import Settings
from billing.plans import BillingCycle, FeatureLimit, Period
from billing.sql import connect_for
from billing.sql import usage as usage_sql
from billing.sql.subscriptions import ENTITLEMENTS_CHANNEL
from billing.usage import subscription_usage_period

ACTION = "usage_recorded"
# A counter outlives its period by this much, so a late read still finds it (cleanup removes it earlier).
COUNTER_GRACE = timedelta(days=1)

# KEYS: counter, stream[, event]. ARGV: delta, limit (-1 = unlimited), counter ttl, event ttl, envelope fields...
# Returns {status, usage}: 1 accepted, 0 over the limit (nothing changed), -1 counter missing
# (seed it from PostgreSQL and call again), 2 event_id already accepted (nothing changed).
USE_SCRIPT = """
local current = redis.call('GET', KEYS[1])
if not current then return {-1, 0} end
current = tonumber(current)
if KEYS[3] and redis.call('EXISTS', KEYS[3]) == 1 then return {2, current} end
local delta, limit = tonumber(ARGV[1]), tonumber(ARGV[2])
if limit >= 0 and current + delta > limit then return {0, current} end
current = redis.call('INCRBY', KEYS[1], delta)
redis.call('EXPIRE', KEYS[1], ARGV[3])
redis.call('XADD', KEYS[2], '*', unpack(ARGV, 5))
if KEYS[3] then redis.call('SET', KEYS[3], current, 'EX', ARGV[4]) end
return {1, current}
"""

ACCEPTED, REFUSED, MISSING, DUPLICATE = 1, 0, -1, 2


class NoActiveSubscription(Exception):
    pass


class FeatureNotIncluded(Exception):
    pass


@dataclass(frozen=True)
class Entitlement:
    """A user's live subscription as far as metering cares: the plan's limits and the period calendar."""
    user_id: UUID
    subscription_id: UUID
    plan_id: UUID
    plan_slug: str
    status: str
    features: Mapping[str, FeatureLimit]  # feature -> limit per period; None = unlimited
    cycle: BillingCycle
    period_start: datetime
    period_end: datetime | None

    @classmethod
    def from_row(cls, user_id: UUID, row: Mapping[str, Any]) -> "Entitlement":
        # A trial's window is the trial itself.
        end = row["current_period_end"] or (row["trial_end"] if row["status"] == "trial" else None)
        return cls(user_id=user_id, subscription_id=row["subscription_id"], plan_id=row["plan_id"],
                   plan_slug=row["plan_slug"], status=row["status"], features=dict(row["features"] or {}),
                   cycle=BillingCycle(row["billing_cycle"]),
                   period_start=row["current_period_start"] or row["created_at"], period_end=end)

    def limit(self, feature: str) -> FeatureLimit:
        if feature not in self.features:
            raise FeatureNotIncluded(feature)
        return self.features[feature]

    def period(self, now: datetime) -> Period:
        return subscription_usage_period(self.period_start, self.period_end, self.cycle, now)


@dataclass(frozen=True)
class UseResult:
    status: int  # ACCEPTED, REFUSED or DUPLICATE
    feature_name: str
    current_usage: int
    limit: FeatureLimit
    reset_at: datetime

    @property
    def remaining(self) -> int | None:
        return None if self.limit is None else max(self.limit - self.current_usage, 0)

    def as_dict(self) -> dict:
        return {"feature_name": self.feature_name, "current_usage": self.current_usage, "limit": self.limit,
                "remaining": self.remaining, "reset_at": self.reset_at}


def counter_key(settings: Settings, user_id: UUID, feature: str, period: Period) -> str:
    return settings.key("{sub}", "usage", str(user_id), feature,
                        f"{int(period.start.timestamp())}-{int(period.end.timestamp())}")


def event_key(settings: Settings, user_id: UUID, event_id: str) -> str:
    return settings.key("{sub}", "usage_event", str(user_id), event_id)


def _iso(value: datetime) -> str:
    return value.isoformat().replace("+00:00", "Z")


def usage_envelope_fields(entitlement: Entitlement, feature: str, delta: int, period: Period, *, now: datetime,
                          correlation_id: str | None = None, event_id: str | None = None) -> list[str]:
    """A `usage_recorded` Envelope (payload: commands.UsageRecorded) as flat stream fields.

    Built by hand rather than through pydantic: it is on the hot path, and a test checks that
    Envelope.from_fields + UsageRecorded read it back.
    """
    envelope_id = uuid.uuid4().hex
    payload = json.dumps({"user_id": str(entitlement.user_id), "subscription_id": str(entitlement.subscription_id),
                          "feature_name": feature, "delta": delta, "period_start": _iso(period.start),
                          "reset_at": _iso(period.end)}, separators=(",", ":"))
    fields = ["id", envelope_id, "action", ACTION, "correlation_id", correlation_id or envelope_id,
              "created_at", _iso(now), "attempts", "0", "payload", payload]
    if event_id:
        fields += ["idempotency_key", event_id]
    return fields


class ScriptBatch:
    """EVALSHA calls of one Lua script issued in the same event-loop iteration, sent as one pipeline.

    Concurrent requests then share one Redis round trip (one write, one read, one pooled connection)
    instead of one each. Every call is still its own EVALSHA, so each stays atomic on its own; the
    pipeline is not a transaction, and one call's error goes to that caller only.
    """

    def __init__(self, redis: aioredis.Redis, script: str) -> None:
        self.redis = redis
        self.script = script
        self.sha = hashlib.sha1(script.encode()).hexdigest()
        self._pending: list[tuple[list, list, asyncio.Future]] = []
        self._running: set[asyncio.Task] = set()  # strong references until done

    def __call__(self, keys: list, args: list) -> asyncio.Future:
        loop = asyncio.get_running_loop()
        if not self._pending:
            loop.call_soon(self._flush)  # after every callback already ready in this iteration
        future = loop.create_future()
        self._pending.append((keys, args, future))
        return future

    def _flush(self) -> None:
        batch, self._pending = self._pending, []
        task = asyncio.ensure_future(self._send(batch))
        self._running.add(task)
        task.add_done_callback(self._running.discard)

    async def _send(self, batch: list[tuple[list, list, asyncio.Future]]) -> None:
        try:
            results = await self._evalsha_all([(keys, args) for keys, args, _ in batch])
            missing = [i for i, r in enumerate(results) if isinstance(r, NoScriptError)]
            if missing:  # Redis restarted or SCRIPT FLUSH: NOSCRIPT means the call did not run
                await self.redis.script_load(self.script)
                again = await self._evalsha_all([batch[i][:2] for i in missing])
                for i, result in zip(missing, again):
                    results[i] = result
        except BaseException as exc:  # the pipeline itself failed (e.g. connection lost): every caller sees it
            for _, _, future in batch:
                if not future.done():
                    future.set_exception(exc)
            if not isinstance(exc, Exception):
                raise
            return
        for (_, _, future), result in zip(batch, results):
            if future.done():  # the caller was cancelled meanwhile
                continue
            if isinstance(result, Exception):
                future.set_exception(result)
            else:
                future.set_result(result)

    async def _evalsha_all(self, calls: list[tuple[list, list]]) -> list:
        """The replies in order, an error reply as its ResponseError. What redis-py's pipeline does, minus
        its pure-Python command packing (hiredis packs in C) and bookkeeping: a third of this path's cost."""
        packed = b"".join([pack_command(("EVALSHA", self.sha, len(keys), *keys, *args)) for keys, args in calls])
        pool = self.redis.connection_pool
        conn = await pool.get_connection()

        async def send_and_read() -> list:
            await conn.send_packed_command(packed)  # both disconnect on any failure, so no reply is left unread
            replies = []
            for _ in calls:
                try:
                    replies.append(await conn.read_response())
                except ResponseError as exc:
                    replies.append(exc)
            return replies

        try:
            # The client's retry policy, as for a single command (reconnects after e.g. a Redis restart).
            return await conn.retry.call_with_retry(send_and_read, lambda _error: conn.disconnect())
        finally:
            await pool.release(conn)


class Meter:
    """Counters and entitlements for one process (one per app, one per worker)."""

    def __init__(self, settings: Settings, pool: asyncpg.Pool, redis: aioredis.Redis) -> None:
        self.settings = settings
        self.pool = pool
        self.redis = redis
        self.stream = stream_key(settings.redis_prefix, "usage_sync")
        self._use = ScriptBatch(redis, USE_SCRIPT)
        self._cache: dict[UUID, tuple[float, Entitlement | None]] = {}

    # --- entitlements ---------------------------------------------------------------------

    async def entitlement(self, user_id: UUID) -> Entitlement:
        """The user's live entitlement, cached for usage_entitlement_cache_seconds (wall time).

        A plan change or cancellation is seen by every API process within that TTL; a process that
        knows better (it just changed the subscription) calls invalidate().
        """
        hit = self._cache.get(user_id)
        if hit is not None and hit[0] > time.monotonic():
            found = hit[1]
        else:
            async with self.pool.acquire() as conn:
                row = await usage_sql.get_entitlement(conn, user_id)
            found = Entitlement.from_row(user_id, row) if row else None
            ttl = self.settings.usage_entitlement_cache_seconds
            if ttl > 0:
                if len(self._cache) > 100_000:  # bound the memory; entries are cheap to reload
                    self._cache.clear()
                self._cache[user_id] = (time.monotonic() + ttl, found)
        if found is None:
            raise NoActiveSubscription(str(user_id))
        return found

    async def listen(self) -> asyncpg.Connection:
        """Drop a user's cached entitlement as soon as a change to their subscription commits.

        The TTL stays as the safety net (e.g. while this connection is down). Returns the
        listening connection; the caller closes it.
        """
        conn = await connect_for(self.settings)

        def on_change(_conn, _pid, _channel, payload: str) -> None:
            try:
                self.invalidate(UUID(payload))
            except ValueError:
                pass

        await conn.add_listener(ENTITLEMENTS_CHANNEL, on_change)
        return conn

    def invalidate(self, user_id: UUID | None = None) -> None:
        if user_id is None:
            self._cache.clear()
        else:
            self._cache.pop(user_id, None)

    # --- counters -------------------------------------------------------------------------

    def _counter_ttl(self, period: Period, now: datetime) -> int:
        # Relative to the injected clock, so a test clock far from the wall clock still gets a sane TTL.
        return max(1, int((period.end - now + COUNTER_GRACE).total_seconds()))

    async def seed(self, user_id: UUID, features: list[str], period: Period, now: datetime) -> None:
        """Rebuild missing counters from PostgreSQL (SET NX: a counter that exists meanwhile wins).

        PostgreSQL holds what the usage_sync actor has applied; units still queued on the stream
        are in the same Redis, so a counter is only missing when that Redis lost them too.
        """
        async with self.pool.acquire() as conn:
            used = await usage_sql.used_in_period(conn, user_id, features, period.start)
        ttl = self._counter_ttl(period, now)
        async with self.redis.pipeline(transaction=False) as pipe:
            for feature in features:
                pipe.set(counter_key(self.settings, user_id, feature, period), used.get(feature, 0), ex=ttl, nx=True)
            await pipe.execute()

    async def use(self, user_id: UUID, feature: str, delta: int, now: datetime, *, event_id: str | None = None,
                  correlation_id: str | None = None) -> UseResult:
        """Check and add `delta` units, all or nothing. Raises NoActiveSubscription / FeatureNotIncluded."""
        entitlement = await self.entitlement(user_id)
        limit = entitlement.limit(feature)
        period = entitlement.period(now)
        keys = [counter_key(self.settings, user_id, feature, period), self.stream]
        if event_id:
            keys.append(event_key(self.settings, user_id, event_id))
        args = [delta, -1 if limit is None else limit, self._counter_ttl(period, now),
                self.settings.usage_event_dedup_hours * 3600,
                *usage_envelope_fields(entitlement, feature, delta, period, now=now, correlation_id=correlation_id,
                                       event_id=event_id)]
        for _ in range(3):
            status, current = await self._use(keys, args)
            if status != MISSING:
                return UseResult(status, feature, current, limit, period.end)
            await self.seed(user_id, [feature], period, now)
        raise RuntimeError("usage counter vanished right after being seeded")

    async def usage(self, user_id: UUID, now: datetime) -> tuple[Entitlement, Period, list[UseResult]]:
        """Every feature of the user's plan with its current usage (counters rebuilt if missing)."""
        entitlement = await self.entitlement(user_id)
        period = entitlement.period(now)
        features = sorted(entitlement.features)
        if not features:
            return entitlement, period, []
        keys = [counter_key(self.settings, user_id, f, period) for f in features]
        values = await self.redis.mget(keys)
        missing = [f for f, v in zip(features, values) if v is None]
        if missing:
            await self.seed(user_id, missing, period, now)
            values = await self.redis.mget(keys)
        return entitlement, period, [
            UseResult(ACCEPTED, f, int(v or 0), entitlement.features[f], period.end) for f, v in zip(features, values)
        ]


# --- cleanup (called periodically by the ops scheduler) -------------------------------------

async def trim_usage_stream(redis: aioredis.Redis, settings: Settings) -> int:
    """Trim usage_sync up to what every consumer group has delivered and acked.

    The script's XADD does not trim (MAXLEN could drop units a lagging worker has not applied yet);
    this removes only entries older than each group's last-delivered id and oldest pending entry.
    """
    stream = stream_key(settings.redis_prefix, "usage_sync")
    try:
        groups = await redis.xinfo_groups(stream)
    except aioredis.ResponseError:  # no such stream yet
        return 0
    if not groups:
        return 0  # nobody consumes it yet: keep everything
    bounds = []
    for group in groups:
        bounds.append(group["last-delivered-id"])
        pending = await redis.xpending(stream, group["name"])
        if pending["pending"]:
            bounds.append(pending["min"])
    min_id = min(bounds, key=lambda i: tuple(int(p) for p in i.split("-")))
    # MINID keeps entries >= min_id; the last delivered one itself is kept, which is harmless.
    return await redis.xtrim(stream, minid=min_id, approximate=False)


async def reset_expired(conn: asyncpg.Connection, redis: aioredis.Redis, settings: Settings,
                        now: datetime) -> dict[str, int]:
    """Remove what ended periods leave behind: Redis counters whose period is over, usage rows older than
    the retention, and acked usage_sync entries. A new period needs no reset: its counters start at 0.
    """
    ended = []
    async for key in redis.scan_iter(match=settings.key("{sub}", "usage", "*"), count=1000):
        try:
            reset_at = int(key.rsplit(":", 1)[1].split("-")[1])
        except (IndexError, ValueError):
            continue
        if reset_at <= now.timestamp():
            ended.append(key)
    for i in range(0, len(ended), 500):
        await redis.delete(*ended[i:i + 500])
    rows = await usage_sql.delete_ended_before(conn, now - timedelta(days=settings.usage_retention_days))
    trimmed = await trim_usage_stream(redis, settings)
    return {"counters": len(ended), "rows": rows, "stream_entries": trimmed}
