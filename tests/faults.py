"""A tiny toxiproxy: forward 127.0.0.1:<port> to a target, and cut the line on demand.

The proxy runs its own event loop in a thread, so it keeps forwarding while the test blocks
(starting processes, sleeping) and the test's own loop stays free.

    proxy = FaultProxy(("127.0.0.1", 5432)); proxy.start()
    url = f"postgresql://postgres@127.0.0.1:{proxy.port}/test"
    proxy.cut()        # every open connection is closed, new ones are accepted and dropped at once
    proxy.restore()
"""
from __future__ import annotations

import asyncio
import threading
from contextlib import suppress

from tests.harness import free_port


class FaultProxy:
    def __init__(self, target: tuple[str, int], port: int | None = None):
        self.target = target
        self.port = port or free_port()
        self.is_cut = False
        self.accepted = 0
        self.refused = 0
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name=f"fault-proxy-{self.port}", daemon=True)
        self._server: asyncio.base_events.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()

    # -- control (called from the test's thread) ----------------------------------------

    def start(self) -> "FaultProxy":
        self._thread.start()
        self._call(self._serve())
        return self

    def cut(self) -> None:
        """PostgreSQL 'goes away': open connections drop, new ones are closed on arrival."""
        self._call(self._cut())

    def restore(self) -> None:
        self.is_cut = False

    def stop(self) -> None:
        self._call(self._shutdown())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=5)

    def _call(self, coro):
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout=10)

    # -- the proxy itself (on its own loop) ---------------------------------------------

    async def _serve(self) -> None:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", self.port)

    async def _cut(self) -> None:
        self.is_cut = True
        for writer in list(self._writers):
            _abort(writer)
        self._writers.clear()

    async def _shutdown(self) -> None:
        await self._cut()
        if self._server is not None:
            self._server.close()

    async def _handle(self, client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter) -> None:
        if self.is_cut:
            self.refused += 1
            _abort(client_writer)
            return
        try:
            upstream_reader, upstream_writer = await asyncio.open_connection(*self.target)
        except OSError:
            _abort(client_writer)
            return
        self.accepted += 1
        self._writers.update((client_writer, upstream_writer))
        try:
            await asyncio.gather(_pipe(client_reader, upstream_writer), _pipe(upstream_reader, client_writer))
        finally:
            for writer in (client_writer, upstream_writer):
                self._writers.discard(writer)
                _abort(writer)


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    except (ConnectionError, OSError):
        pass
    finally:
        _abort(writer)


def _abort(writer: asyncio.StreamWriter) -> None:
    # abort() resets at once (no FIN handshake to wait for): what a crashed server looks like.
    with suppress(Exception):
        writer.transport.abort()
