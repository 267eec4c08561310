"""The harness and the fault proxy themselves: real processes come up, die and come back."""
from __future__ import annotations

import asyncpg
import aiohttp

from tests.conftest import PG_URL
from tests.faults import FaultProxy


async def test_processes_start_answer_and_restart(stack):
    await stack.start_all()
    async with aiohttp.ClientSession() as http:
        for service in ("subscriptions", "payments"):
            async with http.get(f"{stack.url(service)}/v1/health/detailed") as resp:
                body = await resp.json()
                assert resp.status == 200, body
                assert body["data"]["service"] == service
    stack.kill("worker-payments")
    assert not stack.procs["worker-payments"].alive
    await stack.worker("payments")
    assert stack.procs["worker-payments"].starts == 2
    assert '"worker started"' in stack.log("worker-payments")


async def test_fault_proxy_cuts_and_restores():
    proxy = FaultProxy(("127.0.0.1", 5432)).start()
    url = PG_URL.replace("127.0.0.1:5432", f"127.0.0.1:{proxy.port}")
    try:
        conn = await asyncpg.connect(url)
        assert await conn.fetchval("SELECT 1") == 1
        proxy.cut()
        try:
            await conn.fetchval("SELECT 1")
            raise AssertionError("the query went through a cut line")
        except (asyncpg.PostgresConnectionError, ConnectionError, OSError, asyncpg.InterfaceError):
            pass
        try:
            await asyncpg.connect(url, timeout=2)
            raise AssertionError("a new connection went through a cut line")
        except (ConnectionError, OSError, asyncpg.PostgresConnectionError):
            pass
        proxy.restore()
        conn = await asyncpg.connect(url)
        assert await conn.fetchval("SELECT 2") == 2
        await conn.close()
    finally:
        proxy.stop()
