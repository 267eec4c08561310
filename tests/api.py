"""A small HTTP client for tests that drive the running processes (tests/harness.py)."""
from __future__ import annotations

import uuid
from dataclasses import dataclass

import aiohttp

PASSWORD = "s3cure-Passw0rd"
CARD = {"card_number": "4242424242424242", "card_expiry": "12/30", "card_cvv": "123", "cardholder_name": "Test User"}


@dataclass
class User:
    id: str
    email: str
    token: str

    @property
    def headers(self) -> dict:
        return {"Authorization": f"Bearer {self.token}"}


class Api:
    def __init__(self, http: aiohttp.ClientSession, sub_url: str, pay_url: str):
        self.http, self.sub_url, self.pay_url = http, sub_url, pay_url

    async def call(self, method: str, url: str, *, user: User | None = None, json=None, key: str | None = None,
                   headers: dict | None = None, expect: int | tuple[int, ...] | None = None) -> tuple[int, dict]:
        h = dict(headers or {})
        if user is not None:
            h.update(user.headers)
        if key is not None:
            h["Idempotency-Key"] = key
        async with self.http.request(method, url, json=json, headers=h) as resp:
            body = await resp.json(content_type=None)
            if expect is not None:
                allowed = (expect,) if isinstance(expect, int) else expect
                assert resp.status in allowed, f"{method} {url} -> {resp.status}: {body}"
            return resp.status, body

    async def register(self, email: str | None = None) -> User:
        email = email or f"user-{uuid.uuid4().hex[:12]}@example.com"
        _, body = await self.call("POST", f"{self.sub_url}/v1/auth/register", json={"email": email, "password": PASSWORD},
                                  expect=201)
        return User(body["data"]["user"]["id"], email, body["data"]["access_token"])

    async def subscribe(self, user: User, plan: str = "basic") -> dict:
        _, body = await self.call("POST", f"{self.sub_url}/v1/subscriptions/", user=user, json={"plan_id": plan},
                                  key=f"sub-{uuid.uuid4().hex}", expect=201)
        return body["data"]

    async def pay(self, user: User, sub: dict, *, key: str | None = None, card: dict = CARD,
                  expect=201) -> tuple[int, dict]:
        body = {**card, "subscription_id": sub["id"], "amount": sub["amount_due"], "currency": sub["currency"]}
        return await self.call("POST", f"{self.pay_url}/v1/payments/process", user=user, json=body,
                               key=key or f"pay-{uuid.uuid4().hex}", expect=expect)

    async def my_subscription(self, user: User) -> dict:
        _, body = await self.call("GET", f"{self.sub_url}/v1/subscriptions/me", user=user, expect=200)
        return body["data"]
