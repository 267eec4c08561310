"""A worker process: one consumer per stream family its service owns, plus the outbox relay.

Each actor module has `build_routers(deps) -> {family: Router}`; SERVICES says which modules a
worker of each service runs.
"""
from __future__ import annotations

import asyncio
import importlib
import signal
import socket
from contextlib import suppress

import redis.asyncio as aioredis
import structlog

from billing.clock import Clock, SystemClock
from billing.config import Settings
from billing.consumers.deps import Deps, retry_policy
from billing.sql import create_pool
from billing.streams import Consumer, OutboxRelay, Router

log = structlog.get_logger("billing.worker")

# Actor modules per service (dotted paths, so a module is imported only by the worker that runs it).
SERVICES: dict[str, list[str]] = {
    "subscriptions": ["billing.consumers.subscriptions", "billing.consumers.usage"],
    "payments": ["billing.consumers.payments", "billing.consumers.gateway_webhooks"],
}


def build_routers(service: str, deps: Deps) -> dict[str, Router]:
    routers: dict[str, Router] = {}
    for path in SERVICES[service]:
        for family, router in importlib.import_module(path).build_routers(deps).items():
            if family in routers:
                raise RuntimeError(f"stream family {family!r} is consumed by two modules")
            routers[family] = router
    return routers


def consumer_name(service: str, index: int) -> str:
    # Stable across restarts, so a restarted worker rereads its own pending entries first.
    return f"{socket.gethostname()}-{service}-{index}"


async def run_worker(settings: Settings, service: str, *, index: int = 0, clock: Clock | None = None,
                     stop: asyncio.Event | None = None, concurrency: int = 16) -> None:
    stop = stop or asyncio.Event()
    pool = await create_pool(settings.database_url, settings.database_schema, max_size=settings.database_pool_size)
    redis = aioredis.from_url(settings.redis_url, decode_responses=True)
    deps = Deps(settings=settings, pool=pool, redis=redis, clock=clock or SystemClock())
    policy = retry_policy(settings)

    async def dependencies_up() -> None:
        # A handler failing while PostgreSQL or Redis is down is retried without using up an attempt.
        async with pool.acquire(timeout=2) as conn:
            await conn.fetchval("SELECT 1")
        await redis.ping()

    consumers = [
        Consumer(redis, deps.stream(family), group=f"billing-{service}", name=consumer_name(service, index),
                 router=router, policy=policy, concurrency=router.concurrency or concurrency, maxlen=settings.stream_maxlen,
                 dependencies_up=dependencies_up)
        for family, router in build_routers(service, deps).items()
    ]
    relay = OutboxRelay(pool, redis, maxlen=settings.stream_maxlen)
    log.info("worker started", service=service, streams=[c.stream for c in consumers])
    try:
        await asyncio.gather(relay.run(stop), *(c.run(stop) for c in consumers))
    finally:
        await redis.aclose()
        await pool.close()
        log.info("worker stopped", service=service)


def main(settings: Settings, service: str, index: int = 0) -> None:
    async def _main():
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            with suppress(NotImplementedError):
                loop.add_signal_handler(sig, stop.set)
        await run_worker(settings, service, index=index, stop=stop)

    asyncio.run(_main())
