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
