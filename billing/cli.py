"""The `billing` command: up | migrate | serve | worker | scheduler | streams."""
from __future__ import annotations

import argparse
import asyncio
import os
import shlex
import sys
from pathlib import Path

from billing.config import Settings

# The processes of a running system; the repository's Procfile lists the same lines.
PROCESSES = {
    "api-subscriptions": "billing serve subscriptions",
    "api-payments": "billing serve payments",
    "worker-subscriptions": "billing worker subscriptions --metrics-port 9101",
    "worker-payments": "billing worker payments --metrics-port 9102",
    "scheduler": "billing scheduler",
}


def _settings() -> Settings:
    return Settings()


async def _migrate(settings: Settings) -> list[str]:
    from billing.sql import connect_for, migrate

    conn = await connect_for(settings)
    try:
        await conn.execute(f"CREATE SCHEMA IF NOT EXISTS {settings.database_schema}")
        applied = await migrate(conn)
        from billing.sql import plans

        await plans.seed_demo(conn)
        return applied
    finally:
        await conn.close()


def cmd_migrate(args) -> int:
    settings = _settings()
    if settings.database_url is None:
        print("DATABASE_URL is not set", file=sys.stderr)
        return 2
    applied = asyncio.run(_migrate(settings))
    print(f"applied {len(applied)} migration(s): {', '.join(applied) or 'none pending'}; demo plans seeded")
    return 0


def serve_app(service: str, host: str, port: int, *, reuse_port: bool = False) -> None:
    """One HTTP front door process (settings from the environment), until SIGINT/SIGTERM."""
    from aiohttp import web

    from billing import eventloop
    from billing.http.app import create_app
    from billing.observability import configure_logging

    settings = _settings()
    configure_logging(settings.log_level, settings.log_json)
    web.run_app(create_app(settings, service), host=host, port=port, reuse_port=reuse_port or None,
                print=None, access_log=None, loop=eventloop.new_event_loop())


def cmd_serve(args) -> int:
    settings = _settings()
    host = args.host or settings.host
    port = args.port or (settings.subscription_port if args.service == "subscriptions" else settings.payment_port)
    if args.workers <= 1:
        serve_app(args.service, host, port)
        return 0
    return _serve_workers(args.service, host, port, args.workers)


def _serve_workers(service: str, host: str, port: int, workers: int) -> int:
    """`workers` processes on one port (SO_REUSEPORT: the kernel spreads connections over them).

    The parent only supervises: SIGINT/SIGTERM reach every worker, and when one worker exits the others
    are stopped too and the parent exits with its code, so the supervisor above (systemd, honcho, k8s)
    restarts the whole group rather than running silently short of a worker.
    """
    import multiprocessing
    import signal
    from multiprocessing.connection import wait

    context = multiprocessing.get_context("spawn")  # a fresh interpreter each: no event loop or pool inherited
    procs = [context.Process(target=serve_app, args=(service, host, port), kwargs={"reuse_port": True},
                             name=f"api-{service}-{i}") for i in range(workers)]
    for proc in procs:
        proc.start()

    asked_to_stop = False

    def stop(signum=None, _frame=None) -> None:
        nonlocal asked_to_stop
        asked_to_stop = asked_to_stop or signum is not None
        for proc in procs:
            if proc.is_alive():
                proc.terminate()  # SIGTERM: aiohttp shuts down gracefully

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    first = wait([proc.sentinel for proc in procs])
    stop()
    for proc in procs:
        proc.join(timeout=15)
        if proc.is_alive():
            proc.kill()
            proc.join()
    if asked_to_stop:
        return 0
    exited = next(proc for proc in procs if proc.sentinel in first)
    print(f"{exited.name} exited ({exited.exitcode}); stopped the other workers", file=sys.stderr)
    return exited.exitcode if exited.exitcode and exited.exitcode > 0 else 1


def cmd_up(args) -> int:
    from honcho.manager import Manager

    from billing.embedded import embedded_servers

    settings = _settings()
    data_dir = Path(args.data_dir or settings.data_dir).resolve()
    with embedded_servers(data_dir, need_postgres=settings.database_url is None,
                          need_redis=settings.redis_url is None) as urls:
        env = {**os.environ, **urls}
        settings = Settings(**{k.lower(): v for k, v in urls.items()})
        asyncio.run(_migrate(settings))
        print(f"PostgreSQL  {_safe(settings.database_url)}{'  (embedded, ' + str(data_dir) + ')' if 'DATABASE_URL' in urls else ''}")
        print(f"Redis       {settings.redis_url}{'  (embedded)' if 'REDIS_URL' in urls else ''}")
        print(f"Subscriptions API  http://{settings.host}:{settings.subscription_port}/docs")
        print(f"Payments API       http://{settings.host}:{settings.payment_port}/docs")
        print("Ctrl-C stops everything.", flush=True)
        manager = Manager()
        for name, command in PROCESSES.items():
            manager.add_process(name, with_this_python(command), env=env)
        manager.loop()
        return manager.returncode or 0


def with_this_python(command: str) -> str:
    """A Procfile line `billing ...` run by this interpreter, so it works without the console script on PATH."""
    words = shlex.split(command)
    if words[0] == "billing":
        words = [sys.executable, "-m", "billing", *words[1:]]
    return shlex.join(words)


def _safe(url: str | None) -> str:
    # Never print a password that may be part of a URL.
    from urllib.parse import urlsplit, urlunsplit

    if not url:
        return ""
    parts = urlsplit(url)
    if parts.password:
        netloc = parts.netloc.replace(f":{parts.password}@", ":***@")
        return urlunsplit(parts._replace(netloc=netloc))
    return url


def cmd_worker(args) -> int:
    from billing.consumers.worker import main as worker_main
    from billing.observability import configure_logging

    settings = _settings()
    configure_logging(settings.log_level, settings.log_json)
    worker_main(settings, args.service, args.index, args.metrics_port)
    return 0


def cmd_scheduler(args) -> int:
    from billing.observability import configure_logging
    from billing.scheduler import main as scheduler_main

    settings = _settings()
    configure_logging(settings.log_level, settings.log_json)
    scheduler_main(settings)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="billing", description="Subscription and payment backend")
    sub = parser.add_subparsers(dest="command", required=True)

    up = sub.add_parser("up", help="run the whole system (embedded PostgreSQL/Redis unless DATABASE_URL/REDIS_URL)")
    up.add_argument("--data-dir", help="where embedded servers keep their data (default .data)")
    up.set_defaults(func=cmd_up)

    sub.add_parser("migrate", help="apply migrations and seed the demo plans").set_defaults(func=cmd_migrate)

    serve = sub.add_parser("serve", help="run one HTTP front door")
    serve.add_argument("service", choices=["subscriptions", "payments"])
    serve.add_argument("--host")
    serve.add_argument("--port", type=int)
    serve.add_argument("--workers", type=int, default=int(os.environ.get("BILLING_HTTP_WORKERS", "1")),
                       help="processes sharing the port (SO_REUSEPORT, Linux/BSD); default 1 or BILLING_HTTP_WORKERS")
    serve.set_defaults(func=cmd_serve)

    worker = sub.add_parser("worker", help="run the stream consumers of one service")
    worker.add_argument("service", choices=["subscriptions", "payments"])
    worker.add_argument("--index", type=int, default=int(os.environ.get("BILLING_WORKER_INDEX", "0")),
                        help="distinguishes several workers of one service on one host")
    worker.add_argument("--metrics-port", type=int, default=None,
                        help="serve Prometheus /metrics on this port (default BILLING_WORKER_METRICS_PORT, else off)")
    worker.set_defaults(func=cmd_worker)

    sub.add_parser("scheduler", help="run renewals, trial ends, dunning and cleanup on a timer (one leader at a time)"
                   ).set_defaults(func=cmd_scheduler)

    from billing.streams.cli import register_commands

    register_commands(sub, default_prefix=Settings().redis_prefix)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
