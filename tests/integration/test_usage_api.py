import asyncio
from datetime import timedelta
from uuid import UUID

import pytest

from billing.commands import UsageRecorded, stream_key
from billing.http.usage import METER
from billing.plans import BillingCycle, add_cycle
from billing.streams import Envelope
from tests.conftest import register
from tests.integration.usage_helpers import headers_at, subscribe


def iso(value) -> str:
    return value.isoformat().replace("+00:00", "Z")


async def use(client, headers, feature="projects", delta=1, **extra):
    resp = await client.post("/v1/usage/use", json={"feature_name": feature, "delta": delta, **extra}, headers=headers)
    return resp.status, await resp.json(), resp


@pytest.fixture
async def basic_user(sub_client, pool, clock):
    user = await register(sub_client)
    start = clock.now() - timedelta(days=2)
    user["subscription_id"] = await subscribe(pool, user["user"]["id"], "basic", start=start)
    user["reset_at"] = add_cycle(start, BillingCycle.MONTHLY)
    return user


async def test_use_within_the_limit_gives_exact_figures_and_refuses_past_it_without_counting(sub_client, basic_user, redis, settings):
    h = basic_user["headers"]
    status, body, _ = await use(sub_client, h, "projects", 2)  # basic: projects 3
    assert status == 200, body
    assert body["data"] == {"feature_name": "projects", "current_usage": 2, "limit": 3, "remaining": 1,
                            "reset_at": iso(basic_user["reset_at"])}

    status, body, resp = await use(sub_client, h, "projects", 2)  # 2 + 2 > 3: all or nothing
    assert status == 429 and body["success"] is False and body["code"] == "usage_limit_exceeded"
    assert body["details"] == {"feature_name": "projects", "current_usage": 2, "limit": 3, "remaining": 1,
                               "reset_at": iso(basic_user["reset_at"]), "requested": 2}
    assert int(resp.headers["Retry-After"]) > 0

    status, body, _ = await use(sub_client, h, "projects", 1)  # exactly the limit is fine
    assert status == 200 and body["data"]["current_usage"] == 3 and body["data"]["remaining"] == 0
    status, body, _ = await use(sub_client, h, "projects", 1)
    assert status == 429 and body["details"]["current_usage"] == 3

    # Only accepted units reached the stream: 2 + 1.
    entries = await redis.xrange(stream_key(settings.redis_prefix, "usage_sync"))
    assert sorted(Envelope.from_fields(f).payload["delta"] for _, f in entries) == [1, 2]


async def test_stream_entries_are_valid_usage_recorded_envelopes(sub_client, basic_user, redis, settings):
    await use(sub_client, basic_user["headers"], "api_calls", 7, event_id="evt-1")
    [(_, fields)] = await redis.xrange(stream_key(settings.redis_prefix, "usage_sync"))
    envelope = Envelope.from_fields(fields)
    payload = UsageRecorded.model_validate(envelope.payload)
    assert envelope.action == "usage_recorded" and envelope.attempts == 0 and envelope.idempotency_key == "evt-1"
    assert str(payload.user_id) == basic_user["user"]["id"] and payload.subscription_id == basic_user["subscription_id"]
    assert payload.feature_name == "api_calls" and payload.delta == 7 and payload.reset_at == basic_user["reset_at"]


async def test_event_id_makes_a_retry_count_once(sub_client, basic_user, redis, settings):
    h = basic_user["headers"]
    status, first, _ = await use(sub_client, h, "api_calls", 5, event_id="req-42")
    status2, again, _ = await use(sub_client, h, "api_calls", 5, event_id="req-42")
    assert status == status2 == 200
    assert first["data"]["current_usage"] == again["data"]["current_usage"] == 5
    assert again["message"] == "duplicate event ignored"
    assert (await use(sub_client, h, "api_calls", 5, event_id="req-43"))[1]["data"]["current_usage"] == 10
    assert await redis.xlen(stream_key(settings.redis_prefix, "usage_sync")) == 2


async def test_unlimited_feature_counts_without_a_limit(sub_client, pool, clock):
    user = await register(sub_client)
    await subscribe(pool, user["user"]["id"], "pro", start=clock.now())
    for expected in (1_000_000, 2_000_000):
        status, body, _ = await use(sub_client, user["headers"], "projects", 1_000_000)  # pro: projects null
        assert status == 200 and body["data"]["current_usage"] == expected
        assert body["data"]["limit"] is None and body["data"]["remaining"] is None


async def test_feature_not_in_plan_and_no_live_subscription_are_403(sub_client, pool, clock, settings):
    user = await register(sub_client)
    status, body, _ = await use(sub_client, user["headers"], "projects")
    assert status == 403 and body["code"] == "no_active_subscription"
    for path in ("/v1/usage/me", "/v1/usage/limits"):
        resp = await sub_client.get(path, headers=user["headers"])
        assert resp.status == 403 and (await resp.json())["code"] == "no_active_subscription"

    sub_client.app[METER].invalidate()  # the "none" answer was cached
    await subscribe(pool, user["user"]["id"], "basic", start=clock.now())
    status, body, _ = await use(sub_client, user["headers"], "video_minutes")
    assert status == 403 and body["code"] == "feature_not_included"


@pytest.mark.parametrize("status_, allowed", [("past_due", True), ("trial", True), ("pending", False), ("canceled", False)])
async def test_which_statuses_keep_access(sub_client, pool, clock, status_, allowed):
    user = await register(sub_client)
    await subscribe(pool, user["user"]["id"], "basic", status=status_, start=clock.now())
    status, body, _ = await use(sub_client, user["headers"], "projects")
    assert (status == 200) is allowed, body


async def test_trial_window_is_the_trial_period(sub_client, pool, clock):
    user = await register(sub_client)
    start = clock.now()
    await subscribe(pool, user["user"]["id"], "trial", status="trial", start=start)
    status, body, _ = await use(sub_client, user["headers"], "api_calls")
    assert status == 200 and body["data"]["reset_at"] == iso(start + timedelta(days=14)) and body["data"]["limit"] == 100


async def test_a_new_period_starts_at_zero(sub_client, pool, clock, settings):
    user = await register(sub_client)
    start = clock.now()
    await subscribe(pool, user["user"]["id"], "basic", start=start)
    for _ in range(3):
        assert (await use(sub_client, user["headers"], "projects"))[0] == 200
    assert (await use(sub_client, user["headers"], "projects"))[0] == 429

    clock.advance(timedelta(days=32))  # past the period end; the row has not been renewed (the calendar goes on)
    h = headers_at(settings, clock, user["user"]["id"])
    resp = await sub_client.get("/v1/usage/me", headers=h)
    projects = {f["feature_name"]: f for f in (await resp.json())["data"]["features"]}["projects"]
    assert projects["current_usage"] == 0
    status, body, _ = await use(sub_client, h, "projects", 3)
    assert status == 200 and body["data"]["current_usage"] == 3
    period_end = add_cycle(start, BillingCycle.MONTHLY)
    assert body["data"]["reset_at"] == iso(add_cycle(period_end, BillingCycle.MONTHLY))


async def test_usage_me_and_limits(sub_client, basic_user):
    h = basic_user["headers"]
    await use(sub_client, h, "api_calls", 10)
    await use(sub_client, h, "seats", 2)
    body = await (await sub_client.get("/v1/usage/me", headers=h)).json()
    data = body["data"]
    assert data["subscription_id"] == str(basic_user["subscription_id"]) and data["reset_at"] == iso(basic_user["reset_at"])
    by_name = {f["feature_name"]: f for f in data["features"]}
    assert set(by_name) == {"api_calls", "storage_gb", "projects", "seats"}
    assert by_name["api_calls"] == {"feature_name": "api_calls", "current_usage": 10, "limit": 1000, "remaining": 990,
                                    "reset_at": iso(basic_user["reset_at"])}
    assert by_name["seats"]["remaining"] == 1 and by_name["storage_gb"]["current_usage"] == 0

    limits = (await (await sub_client.get("/v1/usage/limits", headers=h)).json())["data"]
    assert limits["plan_slug"] == "basic" and limits["status"] == "active"
    assert limits["limits"] == {"api_calls": 1000, "storage_gb": 10, "projects": 3, "seats": 3}
    assert limits["reset_at"] == iso(basic_user["reset_at"])


async def test_users_are_isolated(sub_client, pool, clock, basic_user):
    other = await register(sub_client)
    await subscribe(pool, other["user"]["id"], "basic", start=clock.now())
    await use(sub_client, basic_user["headers"], "projects", 3)
    status, body, _ = await use(sub_client, other["headers"], "projects", 3)
    assert status == 200 and body["data"]["current_usage"] == 3


async def test_concurrent_uses_never_exceed_the_limit(sub_client, pool, clock, redis, settings):
    user = await register(sub_client)
    await subscribe(pool, user["user"]["id"], "trial", status="trial", start=clock.now())  # api_calls: 100
    results = await asyncio.gather(*(use(sub_client, user["headers"], "api_calls") for _ in range(200)))
    statuses = [s for s, _, _ in results]
    assert statuses.count(200) == 100 and statuses.count(429) == 100
    assert sorted(b["data"]["current_usage"] for s, b, _ in results if s == 200) == list(range(1, 101))
    assert await redis.xlen(stream_key(settings.redis_prefix, "usage_sync")) == 100


async def test_counters_are_rebuilt_from_postgresql(sub_client, basic_user, pool, redis, settings, clock):
    h = basic_user["headers"]
    user_id = basic_user["user"]["id"]
    async with pool.acquire() as conn:  # what the usage_sync actor had applied before Redis lost its data
        await conn.execute(
            """INSERT INTO usage (user_id, subscription_id, feature_name, period_start, reset_at, used)
               SELECT user_id, id, 'api_calls', current_period_start, current_period_end, 40 FROM subscriptions WHERE user_id = $1""",
            UUID(user_id))
    keys = [k async for k in redis.scan_iter(match=settings.key("{sub}", "usage", "*"))]
    assert keys == []  # nothing counted yet: the first request seeds from PostgreSQL
    status, body, _ = await use(sub_client, h, "api_calls", 2)
    assert status == 200 and body["data"]["current_usage"] == 42

    keys = [k async for k in redis.scan_iter(match=settings.key("{sub}", "usage", "*"))]
    await redis.delete(*keys)  # Redis lost the counters
    data = (await (await sub_client.get("/v1/usage/me", headers=h)).json())["data"]
    assert {f["feature_name"]: f["current_usage"] for f in data["features"]}["api_calls"] == 40
    assert (await use(sub_client, h, "api_calls", 1))[1]["data"]["current_usage"] == 41


@pytest.mark.parametrize("body", [
    {"feature_name": "Bad-Name"}, {"feature_name": ""}, {"feature_name": "a" * 65}, {"feature_name": "1abc"},
    {"feature_name": "api_calls", "delta": 0}, {"feature_name": "api_calls", "delta": -1},
    {"feature_name": "api_calls", "delta": 10 ** 12}, {"feature_name": "api_calls", "delta": 1.5},
    {"feature_name": "api_calls", "delta": "3"}, {"feature_name": "api_calls", "delta": True},
    {"feature_name": "api_calls", "delta": None}, {"feature_name": "api_calls", "event_id": "has space"},
    {"feature_name": "api_calls", "unknown": 1}, {"delta": 1},
])
async def test_bad_input_is_422(sub_client, basic_user, body):
    resp = await sub_client.post("/v1/usage/use", json=body, headers=basic_user["headers"])
    data = await resp.json()
    assert resp.status == 422 and data["code"] == "validation_error" and data["details"], data


async def test_missing_body_and_missing_token(sub_client, basic_user):
    resp = await sub_client.post("/v1/usage/use", data=b"", headers=basic_user["headers"])
    assert resp.status == 400
    resp = await sub_client.post("/v1/usage/use", json={"feature_name": "api_calls"})
    assert resp.status == 401


async def test_a_committed_plan_change_reaches_the_cached_limits_at_once(sub_client, basic_user, pool):
    from billing.sql.subscriptions import record_event

    status, body, _ = await use(sub_client, basic_user["headers"], "projects", 1)
    assert status == 200 and body["data"]["limit"] == 3  # Basic, now cached
    async with pool.acquire() as conn, conn.transaction():
        await conn.execute("UPDATE subscriptions SET plan_id = (SELECT id FROM plans WHERE slug = 'pro') WHERE id = $1",
                           basic_user["subscription_id"])
        await record_event(conn, basic_user["subscription_id"], "change_plan", "active", "active", {}, None)
    for _ in range(50):  # the NOTIFY arrives within milliseconds of the commit, far inside the cache TTL
        status, body, _ = await use(sub_client, basic_user["headers"], "projects", 1)
        if body["data"]["limit"] is None:
            break
        await asyncio.sleep(0.02)
    assert status == 200 and body["data"]["limit"] is None  # Pro: unlimited projects
