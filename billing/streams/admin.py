"""Operator functions: what is in the streams, what is stuck, and replaying dead letters."""

from typing import Any

import redis.asyncio as aioredis

from .consumer import DEAD_FIELDS, dead_key, delayed_key
from .publisher import DEFAULT_MAXLEN


async def stream_names(redis: aioredis.Redis, prefix: str = "") -> list[str]:
    """Work streams whose name starts with `prefix` (their dead-letter streams left out)."""
    names = {name async for name in redis.scan_iter(match=f"{prefix}*", _type="stream")}
    return sorted(name for name in names if not name.endswith(":dead"))


async def stream_info(redis: aioredis.Redis, stream: str) -> dict[str, Any]:
    """Length, delayed retries, dead letters and per-group pending/lag of one stream (zeros if it does not exist yet)."""
    async with redis.pipeline(transaction=False) as pipe:
        pipe.xlen(stream).xinfo_groups(stream).zcard(delayed_key(stream)).xlen(dead_key(stream))
        length, groups, delayed, dead = await pipe.execute(raise_on_error=False)
    if isinstance(groups, Exception):  # XINFO GROUPS on a stream nobody has created yet
        groups = []
    return {
        "stream": stream,
        "length": length,
        "delayed": delayed,
        "dead": dead,
        "groups": [
            {
                "group": g["name"],
                "consumers": g["consumers"],
                "pending": g["pending"],
                "lag": g.get("lag"),  # absent before Redis 7, None when unknown
            }
            for g in groups
        ],
    }


async def info(redis: aioredis.Redis, prefix: str = "") -> list[dict[str, Any]]:
    return [await stream_info(redis, stream) for stream in await stream_names(redis, prefix)]


async def pending(
    redis: aioredis.Redis, stream: str, group: str | None = None, count: int = 100
) -> list[dict[str, Any]]:
    """Delivered but unacknowledged entries, per group: who holds them, for how long, how often delivered."""
    groups = [group] if group else [g["name"] for g in await redis.xinfo_groups(stream)]
    rows = []
    for name in groups:
        for entry in await redis.xpending_range(stream, name, "-", "+", count):
            rows.append(
                {
                    "group": name,
                    "message_id": entry["message_id"],
                    "consumer": entry["consumer"],
                    "idle_ms": entry["time_since_delivered"],
                    "deliveries": entry["times_delivered"],
                }
            )
    return rows


async def dead(redis: aioredis.Redis, stream: str, count: int = 20) -> list[dict[str, Any]]:
    """The newest dead letters of `stream`, each with its original fields."""
    return [{"dead_id": entry_id, **fields} for entry_id, fields in await redis.xrevrange(dead_key(stream), count=count)]


async def replay(
    redis: aioredis.Redis, stream: str, ids: list[str] | None = None, maxlen: int = DEFAULT_MAXLEN
) -> int:
    """Move dead letters back onto `stream` with attempts reset; `ids=None` replays all of them."""
    key = dead_key(stream)
    if ids is not None:
        async with redis.pipeline(transaction=False) as pipe:
            for entry_id in ids:
                pipe.xrange(key, entry_id, entry_id)
            entries = [entry for found in await pipe.execute() for entry in found]
        return await _replay_entries(redis, stream, entries, maxlen)
    replayed, start = 0, "-"
    while entries := await redis.xrange(key, start, "+", count=100):
        replayed += await _replay_entries(redis, stream, entries, maxlen)
        start = "(" + entries[-1][0]  # exclusive: continue after the last one seen
    return replayed


async def _replay_entries(redis: aioredis.Redis, stream: str, entries: list, maxlen: int) -> int:
    if not entries:
        return 0
    async with redis.pipeline(transaction=True) as pipe:  # XADD and XDEL together: never lost nor doubled
        for entry_id, fields in entries:
            message = {k: v for k, v in fields.items() if k not in DEAD_FIELDS and k != "last_error"}
            message["attempts"] = "0"
            pipe.xadd(stream, message, maxlen=maxlen, approximate=True)
            pipe.xdel(dead_key(stream), entry_id)
        await pipe.execute()
    return len(entries)
