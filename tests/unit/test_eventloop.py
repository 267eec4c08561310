import asyncio

import uvloop

from billing import eventloop


def test_run_uses_uvloop_and_returns_the_result():
    async def main():
        return type(asyncio.get_running_loop())

    assert eventloop.run(main()) is uvloop.Loop


def test_new_event_loop_is_uvloop():
    loop = eventloop.new_event_loop()
    try:
        assert isinstance(loop, uvloop.Loop)
    finally:
        loop.close()


def test_run_until_signalled_stops_gracefully_on_sigterm():
    import os
    import signal

    seen = []

    async def main(stop):
        asyncio.get_running_loop().call_later(0.05, os.kill, os.getpid(), signal.SIGTERM)
        await asyncio.wait_for(stop.wait(), 5)
        seen.append("stopped")

    eventloop.run_until_signalled(main)
    assert seen == ["stopped"]
