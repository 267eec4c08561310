"""Bad input from the outside, against the running processes: forged tokens, other users' ids,
replayed or stale webhooks, login brute force, and secrets leaking into logs or responses."""
from __future__ import annotations

import base64
import json
import time
import uuid
from datetime import datetime, timedelta, timezone

import aiohttp
import jwt
import pytest

from billing.config import DEV_JWT_SECRET, DEV_WEBHOOK_SECRET
from billing.signing import SIGNATURE_HEADER, TIMESTAMP_HEADER, compute_signature
from tests.api import CARD, PASSWORD, Api
from tests.harness import Stack, wait_until

SECRET_CARD = {**CARD, "card_cvv": "987"}


class RecordingApi(Api):
    """Keeps every response body, to scan them for secrets afterwards."""

    def __init__(self, *args):
        super().__init__(*args)
        self.bodies: list[str] = []

    async def call(self, *args, **kwargs):
        status, body = await super().call(*args, **kwargs)
        self.bodies.append(json.dumps(body))
        return status, body


@pytest.fixture
async def live():
    async with Stack() as stack, aiohttp.ClientSession() as http:
        await stack.start_all()
        yield stack, RecordingApi(http, stack.url("subscriptions"), stack.url("payments"))


def _b64(data: dict) -> str:
    return base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()


async def test_forged_tokens_are_rejected_on_both_services(live):
    stack, api = live
    user = await api.register()
    now = int(time.time())
    claims = {"sub": user.id, "iat": now, "exp": now + 600, "type": "access"}
    header, payload, signature = user.token.split(".")
    forged = {
        "alg_none": f"{_b64({'alg': 'none', 'typ': 'JWT'})}.{_b64(claims)}.",
        "tampered_payload": f"{header}.{_b64({**claims, 'sub': str(uuid.uuid4())})}.{signature}",
        "wrong_key": jwt.encode(claims, "another-secret-another-secret-another-secret", algorithm="HS256"),
        "expired": jwt.encode({**claims, "iat": now - 7200, "exp": now - 3600}, DEV_JWT_SECRET, algorithm="HS256"),
        "garbage": "not-a-token",
    }
    for url in (f"{api.sub_url}/v1/auth/me", f"{api.sub_url}/v1/subscriptions/me", f"{api.pay_url}/v1/payments/history",
                f"{api.pay_url}/v1/auth/me"):
        for name, token in forged.items():
            status, body = await api.call("GET", url, headers={"Authorization": f"Bearer {token}"})
            assert status == 401, (name, url, body)
        assert (await api.call("GET", url, user=user))[0] in (200, 404)  # the genuine token works


async def test_other_users_ids_answer_404_everywhere(live):
    stack, api = live
    alice, mallory = await api.register(), await api.register()
    sub = await api.subscribe(alice)
    _, paid = await api.pay(alice, sub)
    charge_id = paid["data"]["id"]
    probes = [
        ("GET", f"{api.sub_url}/v1/subscriptions/{sub['id']}", None),
        ("GET", f"{api.sub_url}/v1/subscriptions/{sub['id']}/events", None),
        ("PUT", f"{api.sub_url}/v1/subscriptions/{sub['id']}", {"plan_id": "pro"}),
        ("DELETE", f"{api.sub_url}/v1/subscriptions/{sub['id']}", None),
        ("POST", f"{api.sub_url}/v1/subscriptions/{sub['id']}/resume", None),
        ("GET", f"{api.pay_url}/v1/payments/{charge_id}", None),
        ("POST", f"{api.pay_url}/v1/payments/{charge_id}/refund", {}),
        ("POST", f"{api.pay_url}/v1/payments/process",
         {**CARD, "subscription_id": sub["id"], "amount": sub["amount_due"], "currency": sub["currency"]}),
    ]
    for method, url, body in probes:
        status, answer = await api.call(method, url, user=mallory, json=body, key=f"k-{uuid.uuid4().hex}")
        assert status == 404, (method, url, answer)
    # ... and Alice's rows are untouched.
    assert (await api.my_subscription(alice))["status"] in ("pending", "active")
    _, history = await api.call("GET", f"{api.pay_url}/v1/payments/history", user=mallory, expect=200)
    assert history["data"]["items"] == []


async def _post_webhook(api: Api, body: dict, timestamp: int) -> tuple[int, dict]:
    raw = json.dumps(body, separators=(",", ":"), sort_keys=True).encode()
    headers = {SIGNATURE_HEADER: compute_signature(DEV_WEBHOOK_SECRET, raw, timestamp),
               TIMESTAMP_HEADER: str(timestamp), "Content-Type": "application/json"}
    async with api.http.post(f"{api.sub_url}/v1/webhooks/payment", data=raw, headers=headers) as resp:
        return resp.status, await resp.json()


async def test_webhook_replay_and_stale_or_future_timestamps_are_rejected(live):
    stack, api = live
    user = await api.register()
    sub = await api.subscribe(user)
    body = {"event_id": f"evt_{uuid.uuid4()}", "event_type": "payment.succeeded", "transaction_id": str(uuid.uuid4()),
            "subscription_id": sub["id"], "user_id": user.id, "status": "succeeded", "amount": sub["amount_due"],
            "currency": sub["currency"], "reason": "subscription_create",
            "occurred_at": datetime.now(timezone.utc).isoformat()}
    now = int(time.time())
    for skew in (-3600, -301, 301, 3600):  # tolerance is 300 s both ways
        status, answer = await _post_webhook(api, body, now + skew)
        assert status == 400, (skew, answer)
    raw = json.dumps(body).encode()
    async with api.http.post(f"{api.sub_url}/v1/webhooks/payment", data=raw,
                             headers={SIGNATURE_HEADER: "sha256=" + "0" * 64, TIMESTAMP_HEADER: str(now)}) as resp:
        assert resp.status == 401
    assert (await api.my_subscription(user))["status"] == "pending"  # nothing rejected had an effect

    status, first = await _post_webhook(api, body, now)
    assert status == 200 and first["data"]["status"] == "processed", first
    status, replay = await _post_webhook(api, body, now + 5)  # same event_id, freshly signed
    assert status == 200 and replay["data"]["status"] == "duplicate", replay
    assert (await api.my_subscription(user))["status"] == "active"


async def test_login_brute_force_is_rate_limited(live):
    stack, api = live
    user = await api.register()
    statuses = []
    for _ in range(8):
        status, _ = await api.call("POST", f"{api.sub_url}/v1/auth/login", json={"email": user.email, "password": "wrong-Passw0rd"})
        statuses.append(status)
    assert statuses[:5] == [401] * 5 and set(statuses[5:]) == {429}, statuses
    # Even the right password is refused while locked out: guessing gains nothing.
    status, body = await api.call("POST", f"{api.sub_url}/v1/auth/login", json={"email": user.email, "password": PASSWORD})
    assert status == 429, body


async def test_no_card_number_cvv_or_password_hash_in_logs_or_responses(live):
    stack, api = live
    user = await api.register()
    await api.call("POST", f"{api.sub_url}/v1/auth/login", json={"email": user.email, "password": PASSWORD}, expect=200)
    await api.call("POST", f"{api.sub_url}/v1/auth/login", json={"email": user.email, "password": "Wrong-passw0rd"})
    await api.call("GET", f"{api.sub_url}/v1/auth/me", user=user, expect=200)
    sub = await api.subscribe(user)
    await api.pay(user, sub, card={**SECRET_CARD, "card_number": "4242 4242 4242 4242"})
    await wait_until(lambda: _active(api, user), timeout=20, message="subscription active")
    await api.call("POST", f"{api.pay_url}/v1/payment-methods", user=user, json=SECRET_CARD,
                   key=f"pm-{uuid.uuid4().hex}", expect=201)
    declined = {**SECRET_CARD, "card_number": "4000000000000002"}
    await api.call("POST", f"{api.pay_url}/v1/payment-methods", user=user, json=declined, key=f"pm-{uuid.uuid4().hex}")
    bad = {**SECRET_CARD, "card_number": "4242424242424241"}  # Luhn fails: 422, must not echo it
    await api.pay(user, sub, card=bad, expect=(409, 422))
    for path in ("/v1/payments/history", "/v1/payment-methods"):
        await api.call("GET", f"{api.pay_url}{path}", user=user, expect=200)
    await api.call("GET", f"{api.sub_url}/v1/subscriptions/{sub['id']}/events", user=user, expect=200)
    await wait_until(lambda: '"payment processed"' in stack.all_logs(), timeout=5)

    logs = stack.all_logs()
    assert logs.count("\n") > 20, "the processes logged almost nothing: the scan would prove nothing"
    haystacks = {"logs": logs, "responses": "\n".join(api.bodies)}
    forbidden = ["4242424242424242", "4242 4242 4242 4242", "4000000000000002", "4242424242424241",
                 '"987"', "cvv=987", "'987'", PASSWORD, "Wrong-passw0rd", "$2b$", "$2a$"]
    for where, text in haystacks.items():
        for secret in forbidden:
            assert secret not in text, f"{secret!r} found in {where}"
    assert user.token not in logs  # tokens belong in register/login answers, never in a log line
    print(f"\nscanned {logs.count(chr(10))} log lines and {len(api.bodies)} response bodies: no card, CVV, password,"
          " hash or token")


async def _active(api: Api, user) -> bool:
    return (await api.my_subscription(user))["status"] == "active"
