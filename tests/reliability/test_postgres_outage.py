"""PostgreSQL goes away for 30 s (a fault proxy between the processes and the shared server is cut).

While it is down: /v1/health/detailed answers 503 with the database unhealthy, requests that need
the database answer 503 (never 500), the workers stay up and retry. After it is back everything
completes and nothing is lost.
"""
from __future__ import annotations

import asyncio
import time

import aiohttp

from tests.conftest import PG_URL
from tests.faults import FaultProxy
from tests.harness import Stack, wait_until

OUTAGE_SECONDS = 30.0


async def _detailed(http: aiohttp.ClientSession, base: str) -> tuple[int, dict]:
    async with http.get(f"{base}/v1/health/detailed") as resp:
        return resp.status, await resp.json()


async def test_postgres_outage_of_30s_loses_nothing():
    proxy = FaultProxy(("127.0.0.1", 5432)).start()
    through_proxy = PG_URL.replace("127.0.0.1:5432", f"127.0.0.1:{proxy.port}")
    try:
        async with Stack(database_url=through_proxy) as stack, aiohttp.ClientSession() as http:
            await stack.start_all()
            sub, pay = stack.url("subscriptions"), stack.url("payments")
            assert (await _detailed(http, sub))[0] == 200

            proxy.cut()
            down_since = time.monotonic()
            for base in (sub, pay):
                status, body = await _detailed(http, base)
                assert status == 503, body
                assert body["details"]["checks"]["database"]["status"] == "unhealthy"
                assert body["details"]["checks"]["redis"]["status"] == "healthy"
            # A request that needs the database is refused as temporary, not as a crash.
            async with http.post(f"{sub}/v1/auth/register",
                                 json={"email": "outage@example.com", "password": "s3cure-Passw0rd"}) as resp:
                body = await resp.json()
                assert resp.status == 503, body
                assert resp.headers["Retry-After"] and body["code"] == "service_unavailable"

            while time.monotonic() - down_since < OUTAGE_SECONDS:
                await asyncio.sleep(1.0)
                for name, proc in stack.procs.items():
                    assert proc.alive, f"{name} died during the outage:\n{stack.log(name)[-2000:]}"
            proxy.restore()
            print(f"\nPostgreSQL cut for {time.monotonic() - down_since:.1f}s; "
                  f"proxy refused {proxy.refused} connection attempts")

            async def healthy_again():
                return all([(await _detailed(http, base))[0] == 200 for base in (sub, pay)])
            await wait_until(healthy_again, timeout=15, message="health 200 after the outage")
            async with http.post(f"{sub}/v1/auth/register",
                                 json={"email": "outage@example.com", "password": "s3cure-Passw0rd"}) as resp:
                assert resp.status == 201, await resp.json()
            assert "unhandled error" not in stack.all_logs()
    finally:
        proxy.stop()
