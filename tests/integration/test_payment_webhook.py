"""POST /v1/webhooks/payment: signature first, one effect per event_id and per payment."""
import json
import uuid
from datetime import UTC, datetime, timedelta

import pytest

from billing.clock import FrozenClock
from billing.commands import PaymentOutcome
from billing.consumers.deps import Deps
from billing.consumers.subscriptions import build_routers
from billing.signing import SIGNATURE_HEADER, TIMESTAMP_HEADER, compute_signature, inbound_headers
from billing.streams import Envelope
from billing.utc import unix_seconds

NOW = datetime(2025, 6, 1, 9, tzinfo=UTC)
PATH = "/v1/webhooks/payment"


@pytest.fixture
def clock():
    return FrozenClock(NOW)


async def pending_subscription(pool):
    user = await pool.fetchval("INSERT INTO users (email, password_hash) VALUES ($1, 'x') RETURNING id",
                               f"{uuid.uuid4().hex[:8]}@example.com")
    plan = await pool.fetchval("SELECT id FROM plans WHERE slug = 'basic'")
    return await pool.fetchrow(
        "INSERT INTO subscriptions (user_id, plan_id, status) VALUES ($1, $2, 'pending') RETURNING *", user, plan)


def event(sub, **kw) -> dict:
    body = {"event_id": f"evt_{uuid.uuid4().hex}", "event_type": "payment.succeeded",
            "transaction_id": str(uuid.uuid4()), "subscription_id": str(sub["id"]), "user_id": str(sub["user_id"]),
            "status": "succeeded", "amount": "9.99", "currency": "USD", "reason": "subscription_create",
            "occurred_at": NOW.isoformat()}
    body.update(kw)
    return body


def secret(settings) -> str:
    return settings.webhook_secret.get_secret_value()


async def send(client, settings, body, *, at=NOW, headers=None):
    raw = json.dumps(body, separators=(",", ":"), sort_keys=True).encode()
    headers = inbound_headers(secret(settings), raw, at) if headers is None else headers
    resp = await client.post(PATH, data=raw, headers={**headers, "Content-Type": "application/json"})
    return resp.status, await resp.json()


async def status_of(pool, sub):
    return await pool.fetchval("SELECT status FROM subscriptions WHERE id = $1", sub["id"])


async def test_a_signed_success_activates_and_a_replay_is_a_duplicate(sub_client, settings, pool):
    sub = await pending_subscription(pool)
    body = event(sub)
    status, reply = await send(sub_client, settings, body)
    assert status == 200 and reply["data"] == {"event_id": body["event_id"], "status": "processed"}
    assert await status_of(pool, sub) == "active"
    row = await pool.fetchrow("SELECT status, processed_at, signature FROM gateway_webhook_requests")
    assert row["status"] == "processed" and row["processed_at"] == NOW and row["signature"].startswith("sha256=")
    status, reply = await send(sub_client, settings, body)
    assert status == 200 and reply["data"]["status"] == "duplicate"
    assert await pool.fetchval("SELECT count(*) FROM subscription_events") == 1


async def test_a_failed_payment_keeps_the_subscription_pending(sub_client, settings, pool):
    sub = await pending_subscription(pool)
    status, reply = await send(sub_client, settings, event(sub, event_type="payment.failed", status="failed",
                                                           decline_code="insufficient_funds"))
    assert status == 200 and reply["data"]["status"] == "processed"
    assert await status_of(pool, sub) == "pending"
    assert await pool.fetchval("SELECT event_type FROM subscription_events") == "payment_failed"


async def test_an_unknown_subscription_is_ignored_with_200(sub_client, settings, pool):
    sub = await pending_subscription(pool)
    status, reply = await send(sub_client, settings, event(sub, subscription_id=str(uuid.uuid4())))
    assert status == 200 and reply["data"]["status"] == "ignored"
    assert await pool.fetchval("SELECT status FROM gateway_webhook_requests") == "ignored"
    assert await status_of(pool, sub) == "pending"


@pytest.mark.parametrize("shift, code", [(timedelta(seconds=-301), "signature_stale"),
                                         (timedelta(seconds=301), "signature_future")])
async def test_timestamps_outside_the_window_are_400(sub_client, settings, pool, shift, code):
    sub = await pending_subscription(pool)
    status, reply = await send(sub_client, settings, event(sub), at=NOW + shift)
    assert status == 400 and reply["code"] == code and reply["details"]["reason"] == code.split("_")[1]
    assert await status_of(pool, sub) == "pending"
    assert await pool.fetchval("SELECT count(*) FROM gateway_webhook_requests") == 0


async def test_signature_failures(sub_client, settings, pool):
    sub = await pending_subscription(pool)
    body = event(sub)
    raw = json.dumps(body).encode()
    ts = unix_seconds(NOW)
    wrong = compute_signature("another-secret", raw, ts)
    cases = [
        ({SIGNATURE_HEADER: f"sha256={wrong}", TIMESTAMP_HEADER: str(ts)}, 401, "signature_mismatch"),
        ({TIMESTAMP_HEADER: str(ts)}, 400, "signature_missing"),
        ({SIGNATURE_HEADER: f"sha256={wrong}"}, 400, "signature_missing"),
        ({}, 400, "signature_missing"),
        ({SIGNATURE_HEADER: "sha256=zz", TIMESTAMP_HEADER: str(ts)}, 400, "signature_malformed"),
        ({SIGNATURE_HEADER: f"sha256={wrong}", TIMESTAMP_HEADER: "soon"}, 400, "signature_malformed"),
    ]
    for headers, expected, code in cases:
        resp = await sub_client.post(PATH, data=raw, headers=headers)
        reply = await resp.json()
        assert (resp.status, reply["code"]) == (expected, code), headers
    # bare hex (no sha256= prefix) is accepted too
    good = compute_signature(secret(settings), raw, ts)
    resp = await sub_client.post(PATH, data=raw, headers={SIGNATURE_HEADER: good, TIMESTAMP_HEADER: str(ts)})
    assert resp.status == 200
    # the body is what was signed: one changed byte fails
    tampered = raw.replace(b"9.99", b"0.01")
    resp = await sub_client.post(PATH, data=tampered, headers={SIGNATURE_HEADER: good, TIMESTAMP_HEADER: str(ts)})
    assert resp.status == 401


async def test_bad_bodies_are_4xx_never_500(sub_client, settings, pool):
    sub = await pending_subscription(pool)
    for raw in (b"", b"not json", b"[]", b"{}", json.dumps(event(sub, status="maybe")).encode(),
                json.dumps(event(sub, amount="1.234")).encode(), json.dumps(event(sub, transaction_id="x")).encode()):
        resp = await sub_client.post(PATH, data=raw, headers=inbound_headers(secret(settings), raw, NOW))
        assert resp.status in (400, 422), raw
    assert await pool.fetchval("SELECT count(*) FROM gateway_webhook_requests") == 0


async def test_the_same_payment_via_stream_and_webhook_applies_once(sub_client, settings, pool, redis, clock):
    deps = Deps(settings=settings, pool=pool, redis=redis, clock=clock)
    route = build_routers(deps)["subscription_update"].routes["payment_outcome"]
    for webhook_first in (True, False):
        sub = await pending_subscription(pool)
        body = event(sub)
        outcome = PaymentOutcome(**{k: v for k, v in body.items() if k not in ("event_id", "event_type")})
        envelope = Envelope.build("payment_outcome", outcome)
        if webhook_first:
            assert (await send(sub_client, settings, body))[1]["data"]["status"] == "processed"
            await route.handler(envelope, outcome)
        else:
            await route.handler(envelope, outcome)
            assert (await send(sub_client, settings, body))[1]["data"]["status"] == "processed"
        assert await status_of(pool, sub) == "active"
        count = await pool.fetchval("SELECT count(*) FROM subscription_events WHERE subscription_id = $1", sub["id"])
        assert count == 1
