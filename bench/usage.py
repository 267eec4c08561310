"""Throughput of POST /v1/usage/use end to end, against a bare aiohttp hello-world in the same run.

    python bench/usage.py [--duration 10] [--connections 64] [--processes 2] [--log-level WARNING]

Not a test: it prints figures. It creates its own PostgreSQL schema and Redis prefix (migrated,
seeded, a bench plan with a high api_calls limit and a few subscribed users), starts the
subscriptions app in `--processes` processes sharing the port (reuse_port, on uvloop: what
`billing serve --workers N` runs) and drives it with wrk
(64 connections, POST + bearer token from a Lua script); then the same with a hello-world app.
Afterwards it starts the usage_sync worker and times how long PostgreSQL takes to hold exactly the
accepted units. Everything it created is removed at the end.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import asyncpg  # noqa: E402
import redis.asyncio as aioredis  # noqa: E402

from billing import auth  # noqa: E402
from billing.commands import stream_key  # noqa: E402
from billing.config import Settings  # noqa: E402
from billing.sql import connect, migrate, plans  # noqa: E402

PG_URL = os.environ.get("DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/test")
REDIS_URL = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")
USERS = 32


def make_settings(tag: str, log_level: str) -> Settings:
    return Settings(_env_file=None, database_url=PG_URL, redis_url=REDIS_URL, database_schema=f"bench_{tag}",
                    redis_prefix=f"bench{tag}", environment="development", log_level=log_level)


# --- child processes ----------------------------------------------------------------------

def serve(kind: str, tag: str, port: int, log_level: str) -> None:
    from aiohttp import web
    from billing import eventloop
    from billing.observability import configure_logging

    configure_logging(log_level, json=True)
    if kind == "hello":
        app = web.Application()

        async def hello(_request):
            return web.Response(text="hello")

        app.router.add_route("*", "/", hello)
    else:
        from billing.http.app import create_app
        app = create_app(make_settings(tag, log_level), "subscriptions")
    web.run_app(app, host="127.0.0.1", port=port, reuse_port=True, print=None, access_log=None,
                loop=eventloop.new_event_loop())


def work(tag: str, log_level: str) -> None:
    from billing.consumers import worker
    from billing.observability import configure_logging

    configure_logging(log_level, json=True)
    worker.main(make_settings(tag, log_level), "subscriptions")


# --- the run ------------------------------------------------------------------------------

async def setup(settings: Settings) -> list[str]:
    admin = await asyncpg.connect(PG_URL)
    await admin.execute(f"CREATE SCHEMA {settings.database_schema}")
    await admin.close()
    conn = await connect(PG_URL, settings.database_schema)
    try:
        await migrate(conn)
        await plans.seed_demo(conn)
        plan_id = await conn.fetchval(
            """INSERT INTO plans (slug, name, price, currency, billing_cycle, features)
               VALUES ('bench', 'Bench', 0, 'USD', 'monthly', '{"api_calls": 1000000000}') RETURNING id""")
        now = datetime.now(UTC)
        tokens = []
        for i in range(USERS):
            user_id = await conn.fetchval("INSERT INTO users (email, password_hash) VALUES ($1, 'x') RETURNING id",
                                          f"bench-{i}@example.com")
            await conn.execute(
                """INSERT INTO subscriptions (user_id, plan_id, status, current_period_start, current_period_end)
                   VALUES ($1, $2, 'active', $3, $4)""", user_id, plan_id, now, now + timedelta(days=30))
            tokens.append(auth.create_token(user_id, settings.jwt_secret.get_secret_value(), now=now,
                                            expires_in=timedelta(hours=2)))
        return tokens
    finally:
        await conn.close()


async def teardown(settings: Settings) -> None:
    admin = await asyncpg.connect(PG_URL)
    await admin.execute(f"DROP SCHEMA IF EXISTS {settings.database_schema} CASCADE")
    await admin.close()
    client = aioredis.from_url(REDIS_URL)
    keys = [k async for k in client.scan_iter(match=f"{settings.redis_prefix}:*", count=1000)]
    if keys:
        await client.delete(*keys)
    await client.aclose()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start(args: list[str]) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, __file__, *args], stdout=subprocess.DEVNULL, cwd=ROOT)


def wait_listening(port: int, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"nothing listens on {port}")


def stop(procs: list[subprocess.Popen]) -> None:
    for p in procs:
        p.terminate()
    for p in procs:
        try:
            p.wait(timeout=10)
        except subprocess.TimeoutExpired:
            p.kill()


WRK_SCRIPT = """
local tokens = {%s}
local i = 0
wrk.method = "%s"
request = function()
  i = i + 1
  local headers = {["Content-Type"] = "application/json", ["Authorization"] = "Bearer " .. tokens[(i %% #tokens) + 1]}
  return wrk.format(nil, "%s", headers, %s)
end
"""


def drive(port: int, path: str, method: str, body: str | None, tokens: list[str], duration: int, connections: int,
          threads: int) -> tuple[float, int, int]:
    """(requests/s, requests, non-2xx) as wrk measured them."""
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as f:
        f.write(WRK_SCRIPT % (",".join(json.dumps(t) for t in tokens), method, path,
                              json.dumps(body) if body is not None else "nil"))
    try:
        out = subprocess.run(["wrk", f"-t{threads}", f"-c{connections}", f"-d{duration}s", "--latency", "-s", f.name,
                              f"http://127.0.0.1:{port}{path}"], capture_output=True, text=True, check=True).stdout
    finally:
        os.unlink(f.name)
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    total = int(re.search(r"(\d+) requests in", out).group(1))
    bad = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    p99 = re.search(r"99%\s+(\S+)", out)
    print(f"    wrk: {total} requests, {rps:,.0f}/s, p99 {p99.group(1) if p99 else '?'}")
    return rps, total, int(bad.group(1)) if bad else 0


async def pg_sum(settings: Settings) -> int:
    conn = await connect(PG_URL, settings.database_schema)
    try:
        return await conn.fetchval("SELECT coalesce(sum(used), 0) FROM usage")
    finally:
        await conn.close()


async def main(opts) -> None:
    if shutil.which("wrk") is None:
        sys.exit("wrk is needed: apt-get install -y wrk")
    tag = uuid.uuid4().hex[:8]
    settings = make_settings(tag, opts.log_level)
    tokens = await setup(settings)
    procs: list[subprocess.Popen] = []
    try:
        print(f"{os.cpu_count()} cores, {opts.connections} connections, {opts.duration}s per run, "
              f"{opts.processes} server process(es), log level {opts.log_level}")

        port = free_port()
        procs = [start(["serve", "hello", tag, str(port), opts.log_level]) for _ in range(opts.processes)]
        wait_listening(port)
        print("hello-world (GET /):")
        hello_rps, _, _ = drive(port, "/", "GET", None, tokens, opts.duration, opts.connections, opts.threads)
        stop(procs)

        port = free_port()
        procs = [start(["serve", "app", tag, str(port), opts.log_level]) for _ in range(opts.processes)]
        wait_listening(port)
        body = json.dumps({"feature_name": "api_calls", "delta": 1})
        drive(port, "/v1/usage/use", "POST", body, tokens, 2, opts.connections, opts.threads)  # warm-up: caches, counters
        redis = aioredis.from_url(REDIS_URL, decode_responses=True)
        stream = stream_key(settings.redis_prefix, "usage_sync")
        before = await redis.xlen(stream)
        print("POST /v1/usage/use:")
        use_rps, total, bad = drive(port, "/v1/usage/use", "POST", body, tokens, opts.duration, opts.connections,
                                    opts.threads)
        stop(procs)
        accepted = await redis.xlen(stream)  # delta 1 each: every accepted request is one entry
        print(f"    accepted in the measured run: {accepted - before} (non-2xx {bad}); "
              f"{accepted} in all, counters sum {sum(int(v) for v in await redis.mget([k async for k in redis.scan_iter(match=settings.key('{sub}', 'usage', '*'))]))}")

        print("usage_sync worker draining into PostgreSQL:")
        started = time.monotonic()
        procs = [start(["work", tag, opts.log_level])]
        while (done := await pg_sum(settings)) < accepted:
            if time.monotonic() - started > 300:
                raise RuntimeError(f"drain stalled at {done}/{accepted}")
            await asyncio.sleep(0.05)
        drain = time.monotonic() - started
        assert done == accepted, f"PostgreSQL holds {done}, accepted {accepted}"
        stop(procs)
        await redis.aclose()

        print()
        print(f"usage events/s      {use_rps:>10,.0f}   ({use_rps / hello_rps:.2f} x hello-world {hello_rps:,.0f}/s)")
        print(f"drain to PostgreSQL {drain:>10.2f} s for {accepted} events ({accepted / drain:,.0f} events/s incl. worker start)")
        print(f"PostgreSQL sum == accepted: {done} == {accepted}")
    finally:
        stop(procs)
        await teardown(settings)


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "serve":
        serve(sys.argv[2], sys.argv[3], int(sys.argv[4]), sys.argv[5])
    elif len(sys.argv) > 1 and sys.argv[1] == "work":
        work(sys.argv[2], sys.argv[3])
    else:
        parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
        parser.add_argument("--duration", type=int, default=10)
        parser.add_argument("--connections", type=int, default=64)
        parser.add_argument("--threads", type=int, default=2)
        parser.add_argument("--processes", type=int, default=2)
        parser.add_argument("--log-level", default="WARNING")
        asyncio.run(main(parser.parse_args()))
