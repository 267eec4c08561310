"""A worker process: one consumer per stream family its service owns, plus the outbox relay.

Each actor module has `build_routers(deps) -> {family: Router}`; SERVICES says which modules a
worker of each service runs.
"""
from __future__ import annotations

import asyncio
import importlib
import socket
from contextlib import AsyncExitStack

import redis.asyncio as aioredis
import structlog
from aiohttp import web

from billing import eventloop
from billing.clock import Clock, clock_for, start_clock, stop_clock
from billing.config import Settings
from billing.observability import metrics_handler
from billing.consumers.deps import Deps, retry_policy
from billing.consumers.webhooks import http_session
from billing.sql import pool_for
from billing.streams import Consumer, OutboxRelay, Publisher, RetryPolicy, Router

log = structlog.get_logger("billing.worker")

# Actor modules per service (dotted paths, so a module is imported only by the worker that runs it).
SERVICES: dict[str, list[str]] = {
    "subscriptions": ["billing.consumers.subscriptions", "billing.consumers.usage"],
    "payments": ["billing.consumers.payments", "billing.consumers.gateway_webhooks", "billing.consumers.webhooks"],
}


def build_routers(service: str, deps: Deps) -> dict[str, Router]:
    routers: dict[str, Router] = {}
    for path in SERVICES[service]:
        for family, router in importlib.import_module(path).build_routers(deps).items():
            if family in routers:
                raise RuntimeError(f"stream family {family!r} is consumed by two modules")
            routers[family] = router
    return routers


def build_policies(service: str, settings: Settings) -> dict[str, RetryPolicy]:
    """Per-family retry policies of modules that define `build_policies(settings)` (others use the default)."""
    policies: dict[str, RetryPolicy] = {}
    for path in SERVICES[service]:
        module = importlib.import_module(path)
        if hasattr(module, "build_policies"):
            policies.update(module.build_policies(settings))
    return policies


def consumer_name(service: str, index: int) -> str:
    # Stable across restarts, so a restarted worker rereads its own pending entries first.
    return f"{socket.gethostname()}-{service}-{index}"


async def run_worker(settings: Settings, service: str, *, index: int = 0, clock: Clock | None = None,
                     stop: asyncio.Event | None = None, concurrency: int = 16, metrics_port: int | None = None) -> None:
    stop = stop or asyncio.Event()
    async with AsyncExitStack() as resources:  # whatever was opened is closed, even if start-up fails half way
        pool = await pool_for(settings)
        resources.push_async_callback(pool.close)
        redis = aioredis.from_url(settings.redis_url, decode_responses=True)
        resources.push_async_callback(redis.aclose)
        clock = clock or clock_for(settings)
        await start_clock(clock, redis)  # development: the test clock every process shares through Redis
        resources.push_async_callback(stop_clock, clock)
        deps = Deps(settings=settings, pool=pool, redis=redis, clock=clock, http=http_session(settings))
        resources.push_async_callback(deps.http.close)
        policy, policies = retry_policy(settings), build_policies(service, settings)

        async def dependencies_up() -> None:
            # A handler failing while PostgreSQL or Redis is down is retried without using up an attempt.
            async with pool.acquire(timeout=2) as conn:
                await conn.fetchval("SELECT 1")
            await redis.ping()

        routers = build_routers(service, deps)
        for close in deps.on_shutdown:
            resources.push_async_callback(close)
        consumers = [
            Consumer(redis, deps.stream(family), group=f"billing-{service}", name=consumer_name(service, index),
                     router=router, policy=policies.get(family, policy), concurrency=router.concurrency or concurrency,
                     maxlen=settings.stream_maxlen, dependencies_up=dependencies_up)
            for family, router in routers.items()
        ]
        metrics = await serve_metrics(settings.host, metrics_port or settings.worker_metrics_port)
        if metrics is not None:
            resources.push_async_callback(metrics.cleanup)
        relay = OutboxRelay(pool, redis, Publisher(redis, settings.stream_maxlen))
        log.info("worker started", service=service, streams=[c.stream for c in consumers])
        await asyncio.gather(relay.run(stop), *(c.run(stop) for c in consumers))
    log.info("worker stopped", service=service)


async def serve_metrics(host: str, port: int | None) -> web.AppRunner | None:
    """Prometheus /metrics of this worker (stream counters, handler latency, pending/lag gauges)."""
    if not port:
        return None
    app = web.Application()
    app.router.add_get("/metrics", metrics_handler)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, host, port).start()
    log.info("worker metrics", url=f"http://{host}:{port}/metrics")
    return runner


def main(settings: Settings, service: str, index: int = 0, metrics_port: int | None = None) -> None:
    eventloop.run_until_signalled(
        lambda stop: run_worker(settings, service, index=index, stop=stop, metrics_port=metrics_port))
