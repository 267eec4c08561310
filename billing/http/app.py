"""aiohttp application factories for the two front doors."""
from __future__ import annotations

from typing import Literal

import redis.asyncio as aioredis
from aiohttp import web

from billing.clock import Clock, clock_for, start_clock, stop_clock
from billing.config import Settings
from billing.http import (auth, clock_api, health, invoices, ops, payments, plans, subscriptions, usage,
                          webhook_endpoints, webhooks)
from billing.http.docs import setup_docs
from billing.http.api import OPERATIONS
from billing.http.context import CLOCK, POOL, REDIS, SERVICE, SETTINGS
from billing.http.middleware import MIDDLEWARES
from billing.observability import metrics_handler
from billing.sql import pool_for

Service = Literal["subscriptions", "payments"]

# Which endpoint groups each front door serves.
SERVICE_ROUTES = {
    "subscriptions": [health.routes, auth.routes, plans.routes, subscriptions.routes, webhooks.routes, usage.routes,
                      invoices.routes, webhook_endpoints.routes, clock_api.routes, ops.routes],
    "payments": [health.routes, auth.routes, clock_api.routes, payments.routes],
}


async def _resources(app: web.Application):
    """The pool and the Redis client live exactly as long as the app."""
    settings = app[SETTINGS]
    app[POOL] = await pool_for(settings)
    app[REDIS] = aioredis.from_url(settings.redis_url, decode_responses=True)
    await start_clock(app[CLOCK], app[REDIS])  # the shared test clock (development) follows Redis
    yield
    await stop_clock(app[CLOCK])
    await app[REDIS].aclose()
    await app[POOL].close()


def setup_routes(app: web.Application, service: Service) -> None:
    for routes in SERVICE_ROUTES[service]:
        routes.register(app)
    app.router.add_get("/metrics", metrics_handler)
    setup_docs(app)


def create_app(settings: Settings, service: Service, *, clock: Clock | None = None) -> web.Application:
    if settings.database_url is None or settings.redis_url is None:
        raise ValueError("DATABASE_URL and REDIS_URL must be set (billing up resolves them)")
    app = web.Application(middlewares=MIDDLEWARES, client_max_size=1024 * 1024)
    app[SETTINGS] = settings
    app[SERVICE] = service
    app[CLOCK] = clock or clock_for(settings)
    app[OPERATIONS] = []
    app.cleanup_ctx.append(_resources)
    setup_routes(app, service)
    return app
