"""Time is injected: code asks a clock, never datetime.now(), so tests can move time."""
from __future__ import annotations

import asyncio
from contextlib import suppress
from datetime import UTC, datetime, timedelta
from typing import Protocol

import structlog

log = structlog.get_logger("billing.clock")


class Clock(Protocol):
    def now(self) -> datetime: ...


class SystemClock:
    """Wall-clock UTC plus an offset; the offset is how the development test clock moves time."""

    def __init__(self, offset: timedelta = timedelta(0)) -> None:
        self.offset = offset

    def now(self) -> datetime:
        return datetime.now(UTC) + self.offset

    def advance(self, delta: timedelta) -> datetime:
        if delta < timedelta(0):
            raise ValueError("a clock only moves forward")
        self.offset += delta
        return self.now()


class FrozenClock:
    """A clock that stands still until a test moves it."""

    def __init__(self, at: datetime) -> None:
        if at.tzinfo is None:
            raise ValueError("naive datetime")
        self.at = at.astimezone(UTC)

    def now(self) -> datetime:
        return self.at

    def advance(self, delta: timedelta) -> datetime:
        if delta < timedelta(0):
            raise ValueError("a clock only moves forward")
        self.at += delta
        return self.at


# Moves the shared offset forward only: a concurrent or stale request can never move time back.
_ADVANCE_TO = """
local current = tonumber(redis.call('GET', KEYS[1]) or '0')
local target = tonumber(ARGV[1])
if target <= current then return tostring(current) end
redis.call('SET', KEYS[1], ARGV[1])
return ARGV[1]
"""


class RedisTestClock:
    """The development test clock: wall-clock UTC plus an offset shared by EVERY process through Redis.

    Each process refreshes the offset in the background (every `refresh_interval` seconds, one GET),
    and the process that advances it sees the new time at once (read after write). So after
    POST /v1/test-clock/advance the APIs, workers and scheduler all agree within about half a second.
    Only used when settings.test_clock_enabled (development); production uses SystemClock.
    """

    def __init__(self, key: str, refresh_interval: float = 0.5) -> None:
        self.key = key
        self.refresh_interval = refresh_interval
        self.offset = timedelta(0)
        self._redis = None
        self._task: asyncio.Task | None = None

    def now(self) -> datetime:
        return datetime.now(UTC) + self.offset

    def _set(self, seconds: float) -> None:
        # Never step back locally either, even if a refresh races an advance.
        self.offset = max(self.offset, timedelta(seconds=seconds))

    async def refresh(self) -> datetime:
        value = await self._redis.get(self.key)
        self._set(float(value or 0))
        return self.now()

    async def start(self, redis) -> None:
        """Read the current offset, then keep it fresh until stop()."""
        self._redis = redis
        try:
            await self.refresh()
        except Exception:  # Redis down at start: the process still starts (health reports it), refresh retries
            log.warning("test clock: could not read the offset yet", exc_info=True)
        self._task = asyncio.create_task(self._refresh_forever(), name="test-clock-refresh")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def _refresh_forever(self) -> None:
        failing = False
        while True:
            await asyncio.sleep(self.refresh_interval)
            try:
                await self.refresh()
                failing = False
            except Exception as exc:  # Redis away: keep the last known offset, try again (log once per outage)
                if not failing:
                    log.warning("test clock refresh failed", error=repr(exc))
                failing = True

    async def advance(self, delta: timedelta) -> datetime:
        if delta <= timedelta(0):
            raise ValueError("a clock only moves forward")
        # INCRBYFLOAT is atomic: two concurrent advances of one day each add up to two days.
        self._set(float(await self._redis.incrbyfloat(self.key, delta.total_seconds())))
        return self.now()

    async def advance_to(self, at: datetime) -> datetime:
        if at.tzinfo is None:
            raise ValueError("naive datetime")
        await self.refresh()
        if at <= self.now():
            raise ValueError("a clock only moves forward")
        target = (at - datetime.now(UTC)).total_seconds()
        self._set(float(await self._redis.eval(_ADVANCE_TO, 1, self.key, repr(target))))
        return self.now()


def clock_for(settings) -> Clock:
    """The clock a process uses when none is injected: the shared test clock in development."""
    if settings.test_clock_enabled:
        return RedisTestClock(settings.key("test_clock", "offset_seconds"))
    return SystemClock()


async def start_clock(clock: Clock, redis) -> None:
    if isinstance(clock, RedisTestClock):
        await clock.start(redis)


async def stop_clock(clock: Clock) -> None:
    if isinstance(clock, RedisTestClock):
        await clock.stop()
