"""A worker serves Prometheus /metrics on its own port, with the stream metrics of its consumers."""
from __future__ import annotations

import asyncio
import socket

import aiohttp

from billing.consumers.worker import run_worker


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def test_worker_serves_metrics(settings):
    port, stop = _free_port(), asyncio.Event()
    task = asyncio.create_task(run_worker(settings, "payments", stop=stop, metrics_port=port))
    try:
        async with aiohttp.ClientSession() as http:
            for _ in range(100):
                try:
                    async with http.get(f"http://127.0.0.1:{port}/metrics") as resp:
                        text = await resp.text()
                        break
                except aiohttp.ClientConnectionError:
                    await asyncio.sleep(0.05)
            else:
                raise AssertionError("worker metrics port never answered")
        assert resp.status == 200 and "streams_handler_seconds" in text and "streams_processed" in text
    finally:
        stop.set()
        await asyncio.wait_for(task, 15)
