"""Swagger UI at /docs of both services, rendered by a real headless Chromium (not just served).

Needs the Debian package `chromium` (/usr/bin/chromium; .ci/run installs it). Without it this test
FAILS on purpose: a skipped browser test would hide a broken /docs.
"""
from __future__ import annotations

import asyncio
import os
import shutil
import socket
import tempfile

import pytest
from aiohttp import web

from billing.http.app import create_app

CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def _rendered_dom(url: str) -> str:
    profile = tempfile.mkdtemp(prefix="billing-chromium-")
    try:
        proc = await asyncio.create_subprocess_exec(
            CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
            "--disable-background-networking", "--disable-component-update", "--disable-sync",
            "--disable-dev-shm-usage", f"--user-data-dir={profile}", "--virtual-time-budget=15000",
            "--dump-dom", url,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )
        try:
            out, err = await asyncio.wait_for(proc.communicate(), 90)
        except TimeoutError:
            proc.kill()
            await proc.wait()
            raise AssertionError(f"chromium did not finish rendering {url} in 90 s")
        assert proc.returncode == 0, f"chromium exited {proc.returncode}: {err.decode(errors='replace')[-2000:]}"
        return out.decode(errors="replace")
    finally:
        shutil.rmtree(profile, ignore_errors=True)


@pytest.mark.parametrize("service, operations", [
    ("subscriptions", ["/v1/auth/login", "/v1/plans", "/v1/webhook-endpoints", "Register a webhook endpoint"]),
    ("payments", ["/v1/auth/login", "/v1/auth/register", "/v1/test-clock/advance"]),
])
async def test_swagger_ui_renders_the_operations_in_chromium(settings, service, operations):
    if not (os.path.isfile(CHROMIUM) and os.access(CHROMIUM, os.X_OK)):
        pytest.fail(f"{CHROMIUM} not found: install it with `apt-get update && apt-get install -y chromium` "
                    "(.ci/run does this) or point CHROMIUM at a Chromium binary")
    runner = web.AppRunner(create_app(settings, service))
    await runner.setup()
    port = _free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        dom = await _rendered_dom(f"http://127.0.0.1:{port}/docs")
    finally:
        await runner.cleanup()
    # Only the rendered UI contains these: the served HTML is an empty <div id="swagger-ui">.
    assert "opblock-summary" in dom, dom[:2000]
    for text in operations + ["Register a user and get an access token", "Liveness"]:
        assert text in dom, f"{text!r} not rendered on {service} /docs"
