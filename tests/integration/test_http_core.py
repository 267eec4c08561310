import json
import uuid

from aiohttp import web
from pydantic import BaseModel

from billing.http.api import Routes
from billing.http.app import create_app
from billing.observability import configure_logging
from tests.conftest import make_settings, register


async def test_health(sub_client, pay_client):
    for client, service in ((sub_client, "subscriptions"), (pay_client, "payments")):
        resp = await client.get("/v1/health/")
        body = await resp.json()
        assert resp.status == 200 and body["data"]["status"] == "healthy" and body["data"]["service"] == service


async def test_health_detailed_reports_dependencies_and_stream_depths(sub_client, redis, settings):
    await redis.xadd(f"{settings.redis_prefix}:{{sub}}:payment_initiation", {"a": "1"})
    resp = await sub_client.get("/v1/health/detailed")
    body = await resp.json()
    assert resp.status == 200, body
    checks = body["data"]["checks"]
    assert checks["database"]["status"] == "healthy" and checks["database"]["response_time_ms"] >= 0
    assert checks["redis"]["status"] == "healthy"
    streams = checks["streams"]["streams"]
    assert streams[f"{settings.redis_prefix}:{{sub}}:payment_initiation"]["length"] == 1
    assert len(streams) == 8


async def test_health_detailed_is_503_when_redis_is_down(aiohttp_client, settings):
    broken = settings.model_copy(update={"redis_url": "redis://127.0.0.1:1/0"})
    client = await aiohttp_client(create_app(broken, "payments"))
    resp = await client.get("/v1/health/detailed")
    body = await resp.json()
    assert resp.status == 503 and body["success"] is False
    assert body["details"]["checks"]["redis"]["status"] == "unhealthy"
    assert body["details"]["checks"]["database"]["status"] == "healthy"


async def test_metrics(sub_client):
    await sub_client.get("/v1/health/")
    resp = await sub_client.get("/metrics")
    text = await resp.text()
    assert resp.status == 200 and "billing_http_requests_total" in text


async def test_unknown_route_and_wrong_method_use_the_envelope(sub_client):
    resp = await sub_client.get("/v1/nothing-here")
    body = await resp.json()
    assert resp.status == 404 and body["success"] is False and body["code"] == "not_found"
    resp = await sub_client.delete("/v1/auth/login")
    body = await resp.json()
    assert resp.status == 405 and body["code"] == "method_not_allowed"


class Thing(BaseModel):
    name: str


def _test_app(settings, calls):
    routes = Routes("test")

    @routes.get("/v1/boom", auth=False)
    async def boom(request):
        raise RuntimeError("secret internal detail")

    @routes.post("/v1/things", body=Thing, status=201, idempotent=True)
    async def create_thing(request, body: Thing):
        calls.append(body.name)
        if body.name == "bad":
            from billing.http.errors import Conflict
            raise Conflict("bad thing")
        return {"id": str(uuid.uuid4()), "name": body.name}

    app = create_app(settings, "subscriptions")
    routes.register(app)
    return app


async def test_500_hides_internals_and_logs_with_request_id(aiohttp_client, settings, capsys):
    configure_logging("INFO", json=True)
    client = await aiohttp_client(_test_app(settings, []))
    resp = await client.get("/v1/boom", headers={"X-Request-ID": "req-123"})
    body = await resp.json()
    assert resp.status == 500 and body["code"] == "internal_error"
    assert "secret internal detail" not in json.dumps(body)
    assert body["details"] == {"request_id": "req-123"} and resp.headers["X-Request-ID"] == "req-123"
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.startswith("{")]
    assert any(line.get("request_id") == "req-123" and line["event"] == "unhandled error" for line in lines)


async def test_idempotency_key_replays_and_refuses_reuse(aiohttp_client, settings):
    calls = []
    client = await aiohttp_client(_test_app(settings, calls))
    user = await register(client)
    headers = {**user["headers"], "Idempotency-Key": "k-1"}

    resp = await client.post("/v1/things", json={"name": "a"}, headers=user["headers"])
    assert resp.status == 400 and (await resp.json())["code"] == "idempotency_key_required"

    first = await client.post("/v1/things", json={"name": "a"}, headers=headers)
    second = await client.post("/v1/things", json={"name": "a"}, headers=headers)
    assert first.status == second.status == 201
    assert (await first.json())["data"] == (await second.json())["data"]
    assert second.headers["Idempotent-Replayed"] == "true"
    assert calls == ["a"]

    resp = await client.post("/v1/things", json={"name": "b"}, headers=headers)
    assert resp.status == 409 and (await resp.json())["code"] == "idempotency_key_reused"

    # A 4xx result is a result: replayed too, the handler is not run again.
    bad = {**user["headers"], "Idempotency-Key": "k-2"}
    assert (await client.post("/v1/things", json={"name": "bad"}, headers=bad)).status == 409
    assert (await client.post("/v1/things", json={"name": "bad"}, headers=bad)).status == 409
    assert calls == ["a", "bad"]

    # Keys are per user.
    other = await register(client)
    resp = await client.post("/v1/things", json={"name": "c"}, headers={**other["headers"], "Idempotency-Key": "k-1"})
    assert resp.status == 201 and calls[-1] == "c"


async def test_concurrent_requests_with_one_key_run_once(aiohttp_client, settings):
    import asyncio
    calls = []
    client = await aiohttp_client(_test_app(settings, calls))
    user = await register(client)
    headers = {**user["headers"], "Idempotency-Key": "same"}
    responses = await asyncio.gather(*(client.post("/v1/things", json={"name": "x"}, headers=headers) for _ in range(10)))
    assert calls == ["x"]
    assert {r.status for r in responses} <= {201, 409}
