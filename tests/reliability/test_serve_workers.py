"""`billing serve --workers N`: N processes on one port; they stop together."""
import asyncio
import os
import signal
from pathlib import Path

import aiohttp

from tests.harness import Stack, wait_until


def children(pid: int) -> list[int]:
    return [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]


async def start_two_workers(stack: Stack):
    port = stack.ports["subscriptions"]
    proc = stack.define("api-subscriptions", "serve", "subscriptions", "--port", str(port), "--workers", "2", port=port)
    stack.start("api-subscriptions")
    await stack.wait_healthy("subscriptions")
    # spawn may add a resource tracker process beside the workers: count the spawned workers only.
    workers = [c for c in children(proc.popen.pid) if b"spawn_main" in Path(f"/proc/{c}/cmdline").read_bytes()]
    return proc, workers


async def test_two_workers_share_the_port_and_answer():
    async with Stack() as stack:
        proc, workers = await start_two_workers(stack)
        assert len(workers) == 2
        async with aiohttp.ClientSession() as session:
            async def health():
                # a new connection each time, so the kernel may pick either worker
                async with session.get(f"{stack.url('subscriptions')}/v1/health/", headers={"Connection": "close"}) as r:
                    return r.status
            assert set(await asyncio.gather(*(health() for _ in range(20)))) == {200}
        os.kill(proc.popen.pid, signal.SIGTERM)
        assert proc.popen.wait(timeout=15) == 0
        assert not any(Path(f"/proc/{w}").exists() for w in workers)


async def test_a_dead_worker_stops_the_group_with_an_error():
    async with Stack() as stack:
        proc, workers = await start_two_workers(stack)
        os.kill(workers[0], signal.SIGKILL)
        assert proc.popen.wait(timeout=15) != 0
        await wait_until(lambda: not Path(f"/proc/{workers[1]}").exists(), timeout=10, message="other worker gone")
        assert "exited" in stack.log("api-subscriptions")
