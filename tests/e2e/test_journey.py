"""The seed's whole journey against the running processes (issue 4):
register -> trial -> usage -> upgrade (PUT plan) -> pay on 8002 -> the gateway webhook (payments
worker -> POST /v1/webhooks/payment on 8001) and the subscription_update stream -> active ->
usage against the new plan's limits."""
from __future__ import annotations

import aiohttp
import asyncpg

from tests.api import Api
from tests.conftest import PG_URL
from tests.harness import Stack, wait_until


async def test_full_journey_through_the_real_processes():
    async with Stack() as stack, aiohttp.ClientSession() as http:
        await stack.start_all()
        api = Api(http, stack.url("subscriptions"), stack.url("payments"))
        user = await api.register()

        _, trial = await api.call("POST", f"{api.sub_url}/v1/subscriptions/trial", user=user, json={"plan_id": "trial"},
                                  key="trial-1", expect=201)
        trial = trial["data"]
        assert trial["status"] == "trial" and trial["plan"]["slug"] == "trial"

        _, used = await api.call("POST", f"{api.sub_url}/v1/usage/use", user=user,
                                 json={"feature_name": "api_calls", "delta": 60}, expect=200)
        assert used["data"]["limit"] == 100 and used["data"]["remaining"] == 40
        status, over = await api.call("POST", f"{api.sub_url}/v1/usage/use", user=user,
                                      json={"feature_name": "api_calls", "delta": 41})
        assert status == 429 and over["code"] == "usage_limit_exceeded"

        _, change = await api.call("PUT", f"{api.sub_url}/v1/subscriptions/{trial['id']}", user=user,
                                   json={"plan_id": "basic"}, expect=(200, 202))
        change = change["data"]
        assert change["status"] == "payment_required" and change["subscription"]["status"] == "pending"
        pending = change["subscription"]

        _, paid = await api.pay(user, pending, key="pay-1")
        assert paid["data"]["status"] == "succeeded" and paid["data"]["card_last4"] == "4242"

        async def active():
            sub = await api.my_subscription(user)
            return sub if sub["status"] == "active" else None
        sub = await wait_until(active, timeout=20, message="subscription active")
        assert sub["id"] == trial["id"] and sub["plan"]["slug"] == "basic"

        # The new plan's limits apply (the metering caches a plan's limits for up to
        # usage_entitlement_cache_seconds, 5 s by default).
        async def new_limits():
            _, limits = await api.call("GET", f"{api.sub_url}/v1/usage/limits", user=user, expect=200)
            return limits["data"]["limits"].get("api_calls") == 1000
        await wait_until(new_limits, timeout=10, interval=0.5, message="basic plan limits in the metering")
        _, used = await api.call("POST", f"{api.sub_url}/v1/usage/use", user=user,
                                 json={"feature_name": "api_calls", "delta": 500}, expect=200)
        assert used["data"]["limit"] == 1000

        db = await asyncpg.connect(PG_URL, server_settings={"search_path": stack.settings.database_schema})
        try:
            # The gateway's signed webhook arrived through the payments worker (the stream may have won the race).
            async def webhook_row():
                return await db.fetchrow("SELECT * FROM gateway_webhook_requests WHERE event_id = $1",
                                         f"evt_{paid['data']['id']}")
            row = await wait_until(webhook_row, timeout=20, message="gateway webhook received")
            assert row["status"] == "processed" and row["event_type"] == "payment.succeeded"
        finally:
            await db.close()
        _, events = await api.call("GET", f"{api.sub_url}/v1/subscriptions/{sub['id']}/events", user=user, expect=200)
        kinds = [e["event_type"] for e in events["data"]]
        for expected in ("start_trial", "end_trial_for_payment", "payment_succeeded"):
            assert expected in kinds, kinds
        assert kinds.count("payment_succeeded") == 1
        print(f"\njourney events: {kinds}")
