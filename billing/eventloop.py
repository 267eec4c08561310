"""The event loop of every long-running process: uvloop where it is installed (a listed dependency),
the standard asyncio loop otherwise (e.g. on Windows, where uvloop does not exist).

uvloop's C transports roughly halve the per-request cost of socket reads/writes in aiohttp and redis-py.
"""
from __future__ import annotations

import asyncio
import signal
from contextlib import suppress
from typing import Any, Awaitable, Callable, Coroutine, TypeVar

try:
    import uvloop
except ImportError:  # pragma: no cover - platforms without uvloop
    uvloop = None

T = TypeVar("T")


def new_event_loop() -> asyncio.AbstractEventLoop:
    return uvloop.new_event_loop() if uvloop is not None else asyncio.new_event_loop()


def run(main: Coroutine[Any, Any, T]) -> T:
    """asyncio.run() on a loop from new_event_loop()."""
    with asyncio.Runner(loop_factory=new_event_loop) as runner:
        return runner.run(main)


def run_until_signalled(main: Callable[[asyncio.Event], Awaitable[None]]) -> None:
    """Run a long-lived process: `main(stop)` is told to stop gracefully on SIGINT or SIGTERM."""
    async def _main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            with suppress(NotImplementedError):  # platforms without signal handlers in the loop
                loop.add_signal_handler(sig, stop.set)
        await main(stop)

    run(_main())
