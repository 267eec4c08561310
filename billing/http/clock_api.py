"""The development test clock: GET /v1/test-clock, POST /v1/test-clock/advance.

Moves time for every process (APIs, workers, scheduler) through the offset in Redis, so renewals,
trial ends and dunning can be tried without waiting. Only in development: in staging and production
both routes answer 404. Time only moves forward. Access tokens follow the clock too: after moving
past their lifetime (BILLING_JWT_EXPIRY_MINUTES), log in again.
"""
from __future__ import annotations

from datetime import datetime, timedelta

from aiohttp import web
from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, model_validator

from billing.clock import RedisTestClock
from billing.http.api import Routes
from billing.http.context import CLOCK, SETTINGS
from billing.http.errors import NotFound, ValidationFailed

routes = Routes("test clock")
_TEN_YEARS = 10 * 366 * 86400


class AdvanceClock(BaseModel):
    """Exactly one of: seconds, days, or an absolute `to` in the future."""
    model_config = ConfigDict(extra="forbid")
    seconds: float | None = Field(None, gt=0, le=_TEN_YEARS)
    days: float | None = Field(None, gt=0, le=_TEN_YEARS / 86400)
    to: AwareDatetime | None = None

    @model_validator(mode="after")
    def _exactly_one(self) -> "AdvanceClock":
        if sum(v is not None for v in (self.seconds, self.days, self.to)) != 1:
            raise ValueError("give exactly one of seconds, days or to")
        return self


class ClockOut(BaseModel):
    now: datetime
    offset_seconds: float
    shared: bool  # true: every process follows this clock through Redis


def _clock(request: web.Request):
    if not request.app[SETTINGS].test_clock_enabled:
        raise NotFound("not found")  # the test clock does not exist outside development
    return request.app[CLOCK]


def _out(clock) -> ClockOut:
    now = clock.now()
    offset = getattr(clock, "offset", None)
    return ClockOut(now=now, offset_seconds=offset.total_seconds() if isinstance(offset, timedelta) else 0.0,
                    shared=isinstance(clock, RedisTestClock))


@routes.get("/v1/test-clock", response=ClockOut, auth=False, errors=(404,), summary="Current time of the test clock")
async def get_clock(request: web.Request):
    clock = _clock(request)
    if isinstance(clock, RedisTestClock):
        await clock.refresh()
    return _out(clock)


@routes.post("/v1/test-clock/advance", body=AdvanceClock, response=ClockOut, errors=(404, 422),
             summary="Move the test clock forward (development only)")
async def advance_clock(request: web.Request, body: AdvanceClock):
    clock = _clock(request)
    if body.to is not None:
        if isinstance(clock, RedisTestClock):
            await clock.refresh()
        if body.to <= clock.now():
            raise ValidationFailed("time only moves forward",
                                   [{"field": "to", "message": "must be later than the clock's now", "type": "past"}])
        delta = None
    else:
        delta = timedelta(seconds=body.seconds) if body.seconds is not None else timedelta(days=body.days)
    try:
        if isinstance(clock, RedisTestClock):
            await (clock.advance(delta) if delta is not None else clock.advance_to(body.to))
        elif hasattr(clock, "advance"):  # a clock injected by a test (SystemClock, FrozenClock): this process only
            clock.advance(delta if delta is not None else body.to - clock.now())
        else:
            raise NotFound("this clock cannot be moved")
    except ValueError as exc:  # lost a race against another advance past `to`
        raise ValidationFailed("time only moves forward", [{"field": "to", "message": str(exc), "type": "past"}]) from None
    return _out(clock)
