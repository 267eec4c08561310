"""Liveness (/v1/health/), dependency checks (/v1/health/detailed) and Prometheus /metrics."""
from __future__ import annotations

import asyncio
import time

from aiohttp import web

from billing import __version__
from billing.commands import all_stream_keys
from billing.streams import admin
from billing.http.api import Reply, Routes
from billing.http.context import POOL, REDIS, SERVICE, SETTINGS
from billing.http.envelope import error_body, json_response

routes = Routes("health")
CHECK_TIMEOUT = 2.0  # a dependency that does not answer in time is down, the check itself never hangs


async def _timed(check) -> dict:
    started = time.perf_counter()
    try:
        detail = await asyncio.wait_for(check(), CHECK_TIMEOUT)
        status = "healthy"
    except Exception as exc:  # any failure of a dependency is a finding, not a crash
        detail, status = {"error": type(exc).__name__}, "unhealthy"
    result = {"status": status, "response_time_ms": round((time.perf_counter() - started) * 1000, 2)}
    if detail:
        result.update(detail)
    return result


async def stream_depths(redis, prefix: str) -> dict:
    depths = {}
    for key in all_stream_keys(prefix):
        row = await admin.stream_info(redis, key)
        depths[key] = {
            "length": row["length"], "delayed": row["delayed"], "dead": row["dead"],
            "pending": sum(int(g["pending"]) for g in row["groups"]),
            "lag": sum(int(g["lag"] or 0) for g in row["groups"]),
        }
    return depths


@routes.get("/v1/health/", auth=False, summary="Liveness")
async def health(request: web.Request):
    return {"status": "healthy", "service": request.app[SERVICE], "version": __version__}


@routes.get("/v1/health/detailed", auth=False, errors=(503,), summary="Database, Redis and stream depths")
async def health_detailed(request: web.Request):
    pool, redis = request.app[POOL], request.app[REDIS]

    async def database():
        async with pool.acquire(timeout=CHECK_TIMEOUT) as conn:
            await conn.fetchval("SELECT 1")

    async def redis_ping():
        await redis.ping()

    async def streams():
        return {"streams": await stream_depths(redis, request.app[SETTINGS].redis_prefix)}

    db, rd, st = await asyncio.gather(_timed(database), _timed(redis_ping), _timed(streams))
    checks = {"database": db, "redis": rd, "streams": st}
    healthy = all(c["status"] == "healthy" for c in checks.values())
    data = {"status": "healthy" if healthy else "degraded", "service": request.app[SERVICE],
            "version": __version__, "checks": checks}
    if not healthy:
        return json_response(error_body("one or more dependencies are unhealthy", "degraded", data), 503)
    return Reply(data)


