"""Real processes for reliability and end-to-end tests.

A `Stack` owns one fresh migrated + seeded schema and Redis key prefix and starts the real
commands (`python -m billing serve|worker|scheduler ...`) as subprocesses pointed at them, with
small stream-policy delays so retries happen within a test. Every process writes stdout+stderr
to its own file under the stack's log directory, so tests can assert on what was logged.

    async with Stack() as stack:
        await stack.start_all()                     # both APIs + both workers
        base = stack.url("subscriptions")
        stack.kill("worker-payments"); stack.start("worker-payments")
"""
from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp

from tests.conftest import PG_URL, REDIS_URL, create_schema, drop_schema, make_settings

ROOT = Path(__file__).resolve().parent.parent

# Small delays so a retried or abandoned message comes back within a test, not in minutes.
FAST_STREAM_POLICY = {
    "BILLING_STREAM_BASE_DELAY": "0.2",
    "BILLING_STREAM_JITTER": "0.05",
    "BILLING_STREAM_MAX_DELAY": "2",
    "BILLING_STREAM_LEASE": "2",
}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Proc:
    name: str
    args: list[str]
    log_path: Path
    port: int | None = None
    popen: subprocess.Popen | None = None
    starts: int = 0

    @property
    def alive(self) -> bool:
        return self.popen is not None and self.popen.poll() is None


@dataclass
class Stack:
    """One isolated deployment: schema, key prefix, ports, processes and their logs."""
    database_url: str = PG_URL      # what the processes use (a fault proxy may sit in between)
    redis_url: str = REDIS_URL
    env: dict[str, str] = field(default_factory=dict)   # extra BILLING_* for every process
    tag: str = field(default_factory=lambda: uuid.uuid4().hex[:10])

    def __post_init__(self):
        # The test's own view: direct to PostgreSQL, never through a proxy.
        self.settings = make_settings(self.tag, redis_url=self.redis_url)
        self.log_dir = Path(tempfile.mkdtemp(prefix=f"billing-{self.tag}-"))
        self.ports = {"subscriptions": free_port(), "payments": free_port()}
        self.procs: dict[str, Proc] = {}

    # -- lifecycle -------------------------------------------------------------------------

    async def __aenter__(self) -> "Stack":
        await create_schema(self.settings)
        return self

    async def __aexit__(self, *exc) -> None:
        self.stop_all()
        await drop_schema(self.settings)

    def process_env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("BILLING_")}
        env.update({
            "PYTHONPATH": str(ROOT),
            "PYTHONUNBUFFERED": "1",      # a SIGKILLed process has still written every line
            "DATABASE_URL": self.database_url,
            "REDIS_URL": self.redis_url,
            "BILLING_ENV": "development",
            "BILLING_DATABASE_SCHEMA": self.settings.database_schema,
            "BILLING_REDIS_PREFIX": self.settings.redis_prefix,
            "BILLING_BCRYPT_ROUNDS": "4",
            "BILLING_DATABASE_POOL_SIZE": "5",
            "BILLING_LOG_LEVEL": "INFO",
            "BILLING_LOG_JSON": "true",
            "BILLING_GATEWAY_WEBHOOK_URL": f"http://127.0.0.1:{self.ports['subscriptions']}/v1/webhooks/payment",
            "BILLING_SUBSCRIPTION_SERVICE_URL": f"http://127.0.0.1:{self.ports['subscriptions']}",
            **FAST_STREAM_POLICY,
        })
        env.update(self.env)
        return env

    def url(self, service: str) -> str:
        return f"http://127.0.0.1:{self.ports[service]}"

    # -- processes -------------------------------------------------------------------------

    def define(self, name: str, *args: str, port: int | None = None) -> Proc:
        proc = Proc(name, [sys.executable, "-m", "billing", *args], self.log_dir / f"{name}.log", port)
        self.procs[name] = proc
        return proc

    def start(self, name: str) -> Proc:
        proc = self.procs[name]
        if proc.alive:
            return proc
        with open(proc.log_path, "ab") as out:  # appended across restarts: one file per process name
            proc.popen = subprocess.Popen(proc.args, cwd=ROOT, env=self.process_env(), stdout=out,
                                          stderr=subprocess.STDOUT, start_new_session=True)
        proc.starts += 1
        return proc

    def kill(self, name: str, sig: int = signal.SIGKILL) -> None:
        proc = self.procs[name]
        if proc.alive:
            os.killpg(proc.popen.pid, sig)
            try:
                proc.popen.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(proc.popen.pid, signal.SIGKILL)
                proc.popen.wait(timeout=5)

    def stop_all(self) -> None:
        # SIGTERM first (graceful), then anything left is killed; never leaves a child behind.
        for proc in self.procs.values():
            if proc.alive:
                os.killpg(proc.popen.pid, signal.SIGTERM)
        deadline = time.monotonic() + 10
        for proc in self.procs.values():
            if proc.popen is None:
                continue
            try:
                proc.popen.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                with _suppress_lookup():
                    os.killpg(proc.popen.pid, signal.SIGKILL)
                proc.popen.wait(timeout=5)

    async def serve(self, service: str) -> Proc:
        name = f"api-{service}"
        if name not in self.procs:
            self.define(name, "serve", service, "--port", str(self.ports[service]), port=self.ports[service])
        self.start(name)
        await self.wait_healthy(service)
        return self.procs[name]

    async def worker(self, service: str, index: int = 0) -> Proc:
        name = f"worker-{service}" + (f"-{index}" if index else "")
        if name not in self.procs:
            self.define(name, "worker", service, "--index", str(index))
        proc = self.start(name)
        await self.wait_logged(name, "worker started")
        return proc

    async def scheduler(self) -> Proc:
        if "scheduler" not in self.procs:
            self.define("scheduler", "scheduler")
        return self.start("scheduler")

    async def start_all(self, *, workers: bool = True) -> None:
        await asyncio.gather(self.serve("subscriptions"), self.serve("payments"))
        if workers:
            await asyncio.gather(self.worker("subscriptions"), self.worker("payments"))

    # -- waiting and observing -------------------------------------------------------------

    async def wait_healthy(self, service: str, timeout: float = 20.0) -> None:
        proc = self.procs[f"api-{service}"]
        url = f"{self.url(service)}/v1/health/"
        deadline = time.monotonic() + timeout
        async with aiohttp.ClientSession() as session:
            while time.monotonic() < deadline:
                if not proc.alive:
                    raise RuntimeError(f"{proc.name} exited ({proc.popen.returncode}):\n{self.log(proc.name)[-3000:]}")
                try:
                    async with session.get(url, timeout=aiohttp.ClientTimeout(total=2)) as resp:
                        if resp.status == 200:
                            return
                except (aiohttp.ClientError, asyncio.TimeoutError):
                    pass
                await asyncio.sleep(0.1)
        raise TimeoutError(f"{proc.name} not healthy after {timeout}s:\n{self.log(proc.name)[-3000:]}")

    async def wait_logged(self, name: str, text: str, timeout: float = 20.0, *, occurrences: int | None = None) -> None:
        """Wait until the process's log holds `text` (by default once more than before its last start)."""
        proc = self.procs[name]
        wanted = occurrences or proc.starts
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.log(name).count(text) >= wanted:
                return
            if not proc.alive:
                raise RuntimeError(f"{name} exited ({proc.popen.returncode}):\n{self.log(name)[-3000:]}")
            await asyncio.sleep(0.05)
        raise TimeoutError(f"{name} did not log {text!r} in {timeout}s:\n{self.log(name)[-3000:]}")

    def log(self, name: str) -> str:
        path = self.procs[name].log_path
        return path.read_text(errors="replace") if path.exists() else ""

    def all_logs(self) -> str:
        return "\n".join(self.log(name) for name in self.procs)


class _suppress_lookup:
    def __enter__(self):
        return self

    def __exit__(self, exc_type, *_):
        return exc_type is ProcessLookupError


async def wait_until(predicate, timeout: float = 30.0, interval: float = 0.2, message: str = "condition"):
    """Await `predicate()` (sync or async) until truthy; returns its value."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if asyncio.iscoroutine(value):
            value = await value
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"{message} not reached in {timeout}s")
        await asyncio.sleep(interval)


class PrivateRedis:
    """A throw-away redis-server of our own, so a test may restart it (the shared one is never touched)."""

    def __init__(self, port: int | None = None):
        self.port = port or free_port()
        self.popen: subprocess.Popen | None = None
        self.log_path = Path(tempfile.mkdtemp(prefix="billing-redis-")) / "redis.log"

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        with open(self.log_path, "ab") as out:
            self.popen = subprocess.Popen(
                ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
                 "--daemonize", "no"], stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as s:
                    s.sendall(b"PING\r\n")
                    if s.recv(16).startswith(b"+PONG"):
                        return
            except OSError:
                pass
            time.sleep(0.05)
        raise TimeoutError(f"private redis on {self.port} did not start")

    def stop(self) -> None:
        if self.popen is not None and self.popen.poll() is None:
            self.popen.kill()
            self.popen.wait(timeout=5)

    def restart(self, down_for: float = 0.0) -> None:
        """Kill -9 and start again on the same port: every key is gone (--save "")."""
        self.stop()
        time.sleep(down_for)
        self.start()
