import asyncio
import json
import uuid
from datetime import timedelta
from datetime import UTC, datetime

import pytest

from billing.clock import FrozenClock
from billing.commands import RequestPlanChange, stream_key
from tests.conftest import register


@pytest.fixture
def clock():
    # Time stands still in this module, so proration figures are exact.
    return FrozenClock(datetime.now(UTC))


def idem(headers: dict, key: str | None = None) -> dict:
    return {**headers, "Idempotency-Key": key or uuid.uuid4().hex}


async def call(client, method, path, user=None, *, key=None, **kwargs):
    headers = dict(user["headers"]) if user else {}
    if method == "POST":
        headers = idem(headers, key)
    resp = await client.request(method, path, headers=headers, **kwargs)
    return resp.status, await resp.json()


async def subscribe(client, user, plan="basic"):
    status, body = await call(client, "POST", "/v1/subscriptions/", user, json={"plan_id": plan})
    assert status == 201, body
    return body["data"]


async def activate(pool, sub_id, now):
    """Stand-in for the first payment: put the subscription in a paid period that started a few days ago."""
    await pool.execute(
        """UPDATE subscriptions SET status = 'active', current_period_start = $2, current_period_end = $3,
           billing_anchor = $2 WHERE id = $1""", uuid.UUID(sub_id), now - timedelta(days=15), now + timedelta(days=15))


async def test_create_paid_subscription_is_pending_with_the_amount_to_pay(sub_client):
    user = await register(sub_client)
    data = await subscribe(sub_client, user, "basic")
    assert data["status"] == "pending" and data["payment_required"] is True
    assert data["amount_due"] == data["amount"] == "9.99" and data["currency"] == "USD"
    assert data["plan"]["slug"] == "basic" and data["user_id"] == user["user"]["id"]
    assert data["current_period_start"] is None and data["pending_plan"] is None
    # without the slash too, and a second live subscription is refused
    status, body = await call(sub_client, "POST", "/v1/subscriptions", user, json={"plan_id": "pro"})
    assert status == 409 and body["code"] == "subscription_exists"


async def test_free_plan_activates_at_once(sub_client, pool):
    await pool.execute("INSERT INTO plans (slug, name, price, currency, billing_cycle) VALUES ('free', 'Free', 0, 'USD', 'monthly')")
    user = await register(sub_client)
    data = await subscribe(sub_client, user, "free")
    assert data["status"] == "active" and data["payment_required"] is False and data["amount_due"] is None
    assert data["current_period_start"] and data["current_period_end"]
    status, body = await call(sub_client, "GET", f"/v1/subscriptions/{data['id']}/events", user)
    assert [e["event_type"] for e in body["data"]] == ["create_paid", "payment_succeeded"]


async def test_trial_only_for_plans_with_trial_days(sub_client):
    user = await register(sub_client)
    status, body = await call(sub_client, "POST", "/v1/subscriptions/trial", user, json={"plan_id": "basic"})
    assert status == 422 and body["code"] == "plan_has_no_trial"
    status, body = await call(sub_client, "POST", "/v1/subscriptions/trial", user, json={"plan_id": "nope"})
    assert status == 404 and body["code"] == "plan_not_found"
    status, body = await call(sub_client, "POST", "/v1/subscriptions/trial", user, json={})
    assert status == 422 and body["details"][0]["field"] == "plan_id"
    status, body = await call(sub_client, "POST", "/v1/subscriptions/trial", user, json={"plan_id": "trial"})
    assert status == 201, body
    data = body["data"]
    assert data["status"] == "trial" and data["payment_required"] is False
    assert data["trial_end"] == data["current_period_end"]
    start, end = (datetime.fromisoformat(data[k].replace("Z", "+00:00")) for k in ("current_period_start", "trial_end"))
    assert end - start == timedelta(days=14)
    status, body = await call(sub_client, "POST", "/v1/subscriptions/trial", user, json={"plan_id": "trial"})
    assert status == 409 and body["code"] == "subscription_exists"


async def test_idempotent_replay_and_key_reuse(sub_client):
    user = await register(sub_client)
    first = await call(sub_client, "POST", "/v1/subscriptions/", user, key="k1", json={"plan_id": "basic"})
    again = await call(sub_client, "POST", "/v1/subscriptions/", user, key="k1", json={"plan_id": "basic"})
    assert first[0] == again[0] == 201 and first[1]["data"]["id"] == again[1]["data"]["id"]
    other = await call(sub_client, "POST", "/v1/subscriptions/", user, key="k1", json={"plan_id": "pro"})
    assert other[0] == 409 and other[1]["code"] == "idempotency_key_reused"
    resp = await sub_client.post("/v1/subscriptions/", json={"plan_id": "basic"}, headers=user["headers"])
    assert resp.status == 400


async def test_concurrent_double_create_one_wins(sub_client, pool):
    user = await register(sub_client)
    results = await asyncio.gather(*(call(sub_client, "POST", "/v1/subscriptions/", user, json={"plan_id": p})
                                     for p in ("basic", "pro", "basic", "pro")))
    assert sorted(s for s, _ in results) == [201, 409, 409, 409]
    assert {b["code"] for s, b in results if s == 409} == {"subscription_exists"}
    assert await pool.fetchval("SELECT count(*) FROM subscriptions") == 1


async def test_reads_are_scoped_to_the_owner(sub_client):
    alice, bob = await register(sub_client), await register(sub_client)
    status, body = await call(sub_client, "GET", "/v1/subscriptions/me", alice)
    assert status == 404
    sub = await subscribe(sub_client, alice)
    for path in (f"/v1/subscriptions/{sub['id']}", f"/v1/subscriptions/{sub['id']}/events"):
        assert (await call(sub_client, "GET", path, alice))[0] == 200
        assert (await call(sub_client, "GET", path, bob))[0] == 404
    for method, path, kwargs in (("PUT", f"/v1/subscriptions/{sub['id']}", {"json": {"plan_id": "pro"}}),
                                 ("DELETE", f"/v1/subscriptions/{sub['id']}", {}),
                                 ("POST", f"/v1/subscriptions/{sub['id']}/resume", {})):
        assert (await call(sub_client, method, path, bob, **kwargs))[0] == 404
    assert (await call(sub_client, "GET", "/v1/subscriptions/not-a-uuid", alice))[0] == 404
    assert (await call(sub_client, "GET", "/v1/subscriptions/", bob))[1]["data"] == []
    assert [s["id"] for s in (await call(sub_client, "GET", "/v1/subscriptions", alice))[1]["data"]] == [sub["id"]]
    assert (await call(sub_client, "GET", "/v1/subscriptions/me", alice))[1]["data"]["id"] == sub["id"]
    assert (await call(sub_client, "GET", "/v1/subscriptions/me", bob))[0] == 404
    assert (await sub_client.get("/v1/subscriptions/me")).status == 401


async def test_me_falls_back_to_the_most_recent(sub_client):
    user = await register(sub_client)
    sub = await subscribe(sub_client, user)
    status, body = await call(sub_client, "DELETE", f"/v1/subscriptions/{sub['id']}", user)
    assert status == 200 and body["data"]["status"] == "canceled"
    assert body["data"]["canceled_at"] and body["data"]["ended_at"]
    me = (await call(sub_client, "GET", "/v1/subscriptions/me", user))[1]["data"]
    assert me["id"] == sub["id"] and me["status"] == "canceled"
    # a canceled subscription frees the slot for a new one
    new = await subscribe(sub_client, user, "pro")
    assert (await call(sub_client, "GET", "/v1/subscriptions/me", user))[1]["data"]["id"] == new["id"]
    assert len((await call(sub_client, "GET", "/v1/subscriptions/", user))[1]["data"]) == 2


async def test_cancel_at_period_end_resume_and_illegal_transitions(sub_client, pool, clock):
    user = await register(sub_client)
    sub = await subscribe(sub_client, user)
    await activate(pool, sub["id"], clock.now())
    path = f"/v1/subscriptions/{sub['id']}"
    status, body = await call(sub_client, "DELETE", path, user)  # active: at period end by default
    assert status == 200 and body["data"]["status"] == "active" and body["data"]["cancel_at_period_end"] is True
    status, body = await call(sub_client, "POST", f"{path}/resume", user)
    assert status == 200 and body["data"]["cancel_at_period_end"] is False
    status, body = await call(sub_client, "POST", f"{path}/resume", user)
    assert status == 409 and body["code"] == "not_canceling"
    status, body = await call(sub_client, "DELETE", f"{path}?at_period_end=false", user)
    assert status == 200 and body["data"]["status"] == "canceled"
    status, body = await call(sub_client, "DELETE", path, user)
    assert status == 409 and body["code"] == "illegal_transition"
    status, body = await call(sub_client, "POST", f"{path}/resume", user)
    assert status == 409 and body["code"] == "illegal_transition"
    status, body = await call(sub_client, "PUT", path, user, json={"plan_id": "pro"})
    assert status == 409 and body["code"] == "illegal_transition"
    status, body = await call(sub_client, "DELETE", f"{path}?at_period_end=maybe", user)
    assert status == 422
    events = (await call(sub_client, "GET", f"{path}/events", user))[1]["data"]
    assert [e["event_type"] for e in events] == ["create_paid", "cancel_at_period_end", "resume", "cancel_now"]
    assert events[-1]["from_status"] == "active" and events[-1]["to_status"] == "canceled"


async def test_pending_cannot_cancel_at_period_end_or_change_plan(sub_client):
    user = await register(sub_client)
    sub = await subscribe(sub_client, user)
    path = f"/v1/subscriptions/{sub['id']}"
    assert (await call(sub_client, "DELETE", f"{path}?at_period_end=true", user))[1]["code"] == "illegal_transition"
    status, body = await call(sub_client, "PUT", path, user, json={"plan_id": "pro"})
    assert status == 409 and body["code"] == "illegal_transition"
    status, body = await call(sub_client, "DELETE", path, user)  # pending: now by default
    assert status == 200 and body["data"]["status"] == "canceled"


async def test_upgrade_preview_and_queued_command(sub_client, pool, redis, settings, clock):
    user = await register(sub_client)
    sub = await subscribe(sub_client, user, "basic")
    now = clock.now()
    # exactly half of the period left: credit 9.99/2 = 4.995 -> 5.00, debit 29.99/2 = 14.995 -> 15.00 (half-even)
    await pool.execute("UPDATE subscriptions SET status = 'active', current_period_start = $2, current_period_end = $3,"
                       " billing_anchor = $2 WHERE id = $1", uuid.UUID(sub["id"]), now - timedelta(days=15),
                       now + timedelta(days=15))
    path = f"/v1/subscriptions/{sub['id']}"
    status, body = await call(sub_client, "PUT", path, user, json={"plan_id": "basic"})
    assert status == 409 and body["code"] == "same_plan"
    status, body = await call(sub_client, "PUT", path, user, json={"plan_id": "pro"})
    assert status == 202, body
    change = body["data"]["change"]
    assert change["kind"] == "upgrade" and change["timing"] == "immediate"
    assert (change["credit"], change["debit"], change["net"]) == ("5.00", "15.00", "10.00")
    assert body["data"]["status"] == "queued" and body["data"]["amount"] == "10.00"
    assert body["data"]["subscription"]["plan"]["slug"] == "basic"  # nothing changes until paid
    row = await pool.fetchrow("SELECT stream, action, fields FROM outbox")
    assert row["stream"] == stream_key(settings.redis_prefix, "plan_change") and row["action"] == "request_plan_change"
    command = RequestPlanChange.model_validate(json.loads(row["fields"]["payload"]))
    assert command.subscription_id == uuid.UUID(sub["id"]) and command.user_id == uuid.UUID(user["user"]["id"])
    events = (await call(sub_client, "GET", f"{path}/events", user))[1]["data"]
    assert events[-1]["event_type"] == "plan_change_requested" and events[-1]["data"]["net"] == "10.00"


async def test_downgrade_preview_is_at_period_end(sub_client, pool, clock):
    user = await register(sub_client)
    sub = await subscribe(sub_client, user, "pro")
    await activate(pool, sub["id"], clock.now())
    status, body = await call(sub_client, "PUT", f"/v1/subscriptions/{sub['id']}", user, json={"plan_id": "basic"})
    assert status == 202
    change = body["data"]["change"]
    assert change["kind"] == "downgrade" and change["timing"] == "period_end" and change["net"] == "0.00"
    assert change["effective_at"] == body["data"]["subscription"]["current_period_end"]
    assert body["data"]["amount"] is None


async def test_currency_mismatch_is_422(sub_client, pool, clock):
    await pool.execute("INSERT INTO plans (slug, name, price, currency, billing_cycle) VALUES ('euro', 'Euro', 50, 'EUR', 'monthly')")
    user = await register(sub_client)
    sub = await subscribe(sub_client, user, "basic")
    await activate(pool, sub["id"], clock.now())
    status, body = await call(sub_client, "PUT", f"/v1/subscriptions/{sub['id']}", user, json={"plan_id": "euro"})
    assert status == 422 and body["code"] == "currency_mismatch"
    status, body = await call(sub_client, "PUT", f"/v1/subscriptions/{sub['id']}", user, json={"plan_id": "ghost"})
    assert status == 404


async def test_trial_to_paid_plan_ends_the_trial_and_asks_for_payment(sub_client, pool):
    user = await register(sub_client)
    trial = (await call(sub_client, "POST", "/v1/subscriptions/trial", user, json={"plan_id": "trial"}))[1]["data"]
    status, body = await call(sub_client, "PUT", f"/v1/subscriptions/{trial['id']}", user, json={"plan_id": "pro"})
    assert status == 200, body
    data = body["data"]
    assert data["status"] == "payment_required" and data["payment_required"] is True
    assert data["amount"] == "29.99" and data["currency"] == "USD"
    sub = data["subscription"]
    assert sub["status"] == "pending" and sub["plan"]["slug"] == "pro" and sub["amount_due"] == "29.99"
    assert sub["trial_end"] == sub["current_period_end"]
    assert await pool.fetchval("SELECT count(*) FROM outbox") == 0  # synchronous: nothing for the worker
    events = (await call(sub_client, "GET", f"/v1/subscriptions/{trial['id']}/events", user))[1]["data"]
    assert [(e["event_type"], e["to_status"]) for e in events] == [("start_trial", "trial"),
                                                                  ("end_trial_for_payment", "pending")]


async def test_openapi_lists_the_subscription_endpoints(sub_client):
    spec = await (await sub_client.get("/openapi.json")).json()
    assert {"/v1/subscriptions/", "/v1/subscriptions/trial", "/v1/subscriptions/{id}", "/v1/subscriptions/me",
            "/v1/subscriptions/{id}/events", "/v1/subscriptions/{id}/resume", "/v1/webhooks/payment"} <= set(spec["paths"])
    assert "SubscriptionOut" in json.dumps(spec["paths"]["/v1/subscriptions/{id}"]["get"])


async def test_one_plan_change_at_a_time(sub_client, pool, clock):
    user = await register(sub_client)
    sub = await subscribe(sub_client, user, "basic")
    await activate(pool, sub["id"], clock.now())
    path = f"/v1/subscriptions/{sub['id']}"
    results = await asyncio.gather(*(call(sub_client, "PUT", path, user, json={"plan_id": "pro"}) for _ in range(3)))
    assert sorted(s for s, _ in results) == [202, 409, 409]
    assert {b["code"] for s, b in results if s == 409} == {"plan_change_in_progress"}
    assert await pool.fetchval("SELECT count(*) FROM outbox") == 1
    # the worker's answer closes the request (here: the upgrade payment failed)
    await pool.execute("INSERT INTO subscription_events (subscription_id, event_type, created_at) VALUES ($1, "
                       "'upgrade_payment_failed', $2)", uuid.UUID(sub["id"]), clock.now())
    assert (await call(sub_client, "PUT", path, user, json={"plan_id": "pro"}))[0] == 202
    # a request nobody answered is let go after the window
    clock.advance(timedelta(minutes=16))
    assert (await call(sub_client, "PUT", path, user, json={"plan_id": "pro"}))[0] == 202
