"""The shared test clock: one advance moves time for every process using the same Redis prefix."""
from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

from billing.clock import RedisTestClock, SystemClock, clock_for
from billing.consumers.worker import run_worker
from billing.http.app import create_app
from billing.http.context import CLOCK
from tests.conftest import make_settings, register


async def test_two_app_instances_share_one_advanced_clock(aiohttp_client, settings):
    first = await aiohttp_client(create_app(settings, "subscriptions"))
    second = await aiohttp_client(create_app(settings, "payments"))
    assert isinstance(first.app[CLOCK], RedisTestClock)
    user = await register(first)

    before = second.app[CLOCK].now()
    resp = await first.post("/v1/test-clock/advance", json={"days": 30}, headers=user["headers"])
    body = await resp.json()
    assert resp.status == 200, body
    assert body["data"]["offset_seconds"] >= 30 * 86400 and body["data"]["shared"] is True
    # Read after write in the process that advanced it...
    assert first.app[CLOCK].now() - before >= timedelta(days=30)
    # ...and every other process within a refresh interval.
    await asyncio.sleep(0.7)
    assert second.app[CLOCK].now() - before >= timedelta(days=30)
    resp = await second.get("/v1/test-clock")
    assert (await resp.json())["data"]["offset_seconds"] >= 30 * 86400


async def test_advance_to_a_datetime_and_never_back(aiohttp_client, settings):
    client = await aiohttp_client(create_app(settings, "subscriptions"))
    user = await register(client)
    target = datetime.now(UTC) + timedelta(days=400)
    resp = await client.post("/v1/test-clock/advance", json={"to": target.isoformat()}, headers=user["headers"])
    assert resp.status == 200
    now = datetime.fromisoformat((await resp.json())["data"]["now"])
    assert abs((now - target).total_seconds()) < 2
    # Access tokens follow the clock too: a year later, log in again.
    resp = await client.post("/v1/auth/login", json={"email": user["email"], "password": user["password"]})
    user["headers"] = {"Authorization": f"Bearer {(await resp.json())['data']['access_token']}"}

    # Backwards, zero, negative, nothing or two at once: 422 with field details; time stays.
    for bad in ({"to": (target - timedelta(days=1)).isoformat()}, {"seconds": 0}, {"days": -1}, {},
                {"seconds": 5, "days": 1}, {"to": "2030-01-01T00:00:00"}):
        resp = await client.post("/v1/test-clock/advance", json=bad, headers=user["headers"])
        body = await resp.json()
        assert resp.status == 422, (bad, body)
        assert body["code"] == "validation_error" and body["details"]
    assert client.app[CLOCK].now() >= target


async def test_advance_needs_auth(aiohttp_client, settings):
    client = await aiohttp_client(create_app(settings, "subscriptions"))
    resp = await client.post("/v1/test-clock/advance", json={"days": 1})
    assert resp.status == 401


async def test_concurrent_advances_add_up(settings, redis):
    a, b = (RedisTestClock(settings.key("test_clock", "offset_seconds")) for _ in range(2))
    await a.start(redis)
    await b.start(redis)
    try:
        await asyncio.gather(a.advance(timedelta(days=1)), b.advance(timedelta(days=1)))
        await a.refresh()
        assert a.offset == timedelta(days=2)
    finally:
        await a.stop()
        await b.stop()


async def test_outside_development_the_clock_is_the_system_clock_and_the_routes_404(aiohttp_client, settings):
    staging = settings.model_copy(update={"environment": "staging"})
    assert isinstance(clock_for(staging), SystemClock) and not staging.test_clock_enabled
    client = await aiohttp_client(create_app(staging, "subscriptions"))
    user = await register(client)
    resp = await client.post("/v1/test-clock/advance", json={"days": 1}, headers=user["headers"])
    assert resp.status == 404 and (await resp.json())["code"] == "not_found"
    assert (await client.get("/v1/test-clock", headers=user["headers"])).status == 404


async def test_a_worker_process_follows_the_advanced_clock(settings, redis):
    """run_worker builds its clock from the settings and keeps it fresh: probe it through an actor."""
    import billing.consumers.worker as worker

    seen = {}

    class Probe:
        @staticmethod
        def build_routers(deps):
            seen["clock"] = deps.clock
            return {}

    import sys
    sys.modules["tests_probe_actor"] = Probe
    worker.SERVICES["probe"] = ["tests_probe_actor"]
    stop = asyncio.Event()
    task = asyncio.create_task(run_worker(settings, "probe", stop=stop))
    try:
        for _ in range(50):
            if "clock" in seen:
                break
            await asyncio.sleep(0.05)
        shared = RedisTestClock(settings.key("test_clock", "offset_seconds"))
        await shared.start(redis)
        await shared.advance(timedelta(days=3))
        await shared.stop()
        await asyncio.sleep(0.7)
        assert seen["clock"].now() - datetime.now(UTC) >= timedelta(days=3) - timedelta(seconds=1)
    finally:
        stop.set()
        await task
        del worker.SERVICES["probe"], sys.modules["tests_probe_actor"]
