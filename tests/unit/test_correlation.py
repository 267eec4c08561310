"""Commands published while handling an HTTP request or a message carry the caller's correlation id."""

import fakeredis
import structlog
from aiohttp import web
from pydantic import BaseModel

from billing.http.context import SERVICE
from billing.http.middleware import correlation
from billing.streams import Envelope, Publisher

STREAM = "s:corr"


class Ping(BaseModel):
    n: int


def test_build_defaults_to_the_bound_correlation_id():
    with structlog.contextvars.bound_contextvars(correlation_id="req-1"):
        assert Envelope.build("ping", {"n": 1}).correlation_id == "req-1"
        assert Envelope.build("ping", {"n": 1}, correlation_id="explicit").correlation_id == "explicit"
    envelope = Envelope.build("ping", {"n": 1})
    assert envelope.correlation_id == envelope.id  # nothing bound: the envelope starts its own chain


async def test_a_command_published_during_a_request_carries_its_correlation_id(aiohttp_client):
    async def handler(request):
        envelope = await Publisher(request.app["redis"]).publish(STREAM, "ping", Ping(n=1))
        return web.json_response({"correlation_id": envelope.correlation_id})

    app = web.Application(middlewares=[correlation])
    app[SERVICE] = "test"
    app["redis"] = fakeredis.FakeAsyncRedis(decode_responses=True)
    app.router.add_post("/ping", handler)
    client = await aiohttp_client(app)
    response = await client.post("/ping", headers={"X-Correlation-ID": "from-the-caller"})
    assert (await response.json())["correlation_id"] == "from-the-caller"
    [(_, fields)] = await app["redis"].xrange(STREAM)
    assert fields["correlation_id"] == "from-the-caller"
