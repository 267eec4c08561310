"""Declared endpoints: one decorator gives aiohttp its route and OpenAPI its operation.

    routes = Routes("subscriptions")

    @routes.post("/v1/subscriptions/", body=CreateSubscription, status=201, idempotent=True)
    async def create(request, body: CreateSubscription):
        return {...}            # wrapped in the success envelope

The wrapper parses and validates the body and query with pydantic (422 with field details),
enforces the Idempotency-Key where asked, and turns the return value into the envelope.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Awaitable, Callable

from aiohttp import web
from pydantic import BaseModel, ValidationError

from billing.http.envelope import ok
from billing.http.errors import BadRequest, ValidationFailed, validation_details
from billing.http.idempotency import run_idempotent


@dataclass
class Reply:
    """A handler's result when it needs a message or status other than the endpoint's default."""
    data: Any = None
    message: str = "OK"
    status: int | None = None


@dataclass
class Operation:
    method: str
    path: str
    handler: Callable[..., Awaitable[Any]]
    summary: str
    tags: tuple[str, ...]
    body: type[BaseModel] | None = None
    query: type[BaseModel] | None = None
    response: Any = None
    status: int = 200
    auth: bool = True
    idempotent: bool = False
    errors: tuple[int, ...] = ()
    # Documented in OpenAPI but parsed by the handler itself (e.g. after checking a signature on the raw bytes).
    raw_body: type[BaseModel] | None = None


async def read_json(request: web.Request) -> Any:
    raw = await request.read()
    if not raw:
        raise BadRequest("request body required", code="body_required")
    try:
        return json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        raise BadRequest("request body is not valid JSON", code="malformed_json") from None


def parse(model: type[BaseModel], data: Any) -> BaseModel:
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise ValidationFailed("validation failed", validation_details(exc)) from None


OPERATIONS = web.AppKey("operations", list)


class Routes:
    def __init__(self, tag: str):
        self.tag = tag
        self.operations: list[Operation] = []

    def route(self, method: str, path: str, *, summary: str = "", tags: tuple[str, ...] | None = None, **options):
        def decorate(handler):
            op = Operation(
                method=method, path=path, handler=handler,
                summary=summary or (handler.__doc__ or "").strip().split("\n")[0],
                tags=tags or (self.tag,), **options,
            )
            self.operations.append(op)
            return handler
        return decorate

    def get(self, path: str, **options):
        return self.route("GET", path, **options)

    def post(self, path: str, **options):
        return self.route("POST", path, **options)

    def put(self, path: str, **options):
        return self.route("PUT", path, **options)

    def delete(self, path: str, **options):
        return self.route("DELETE", path, **options)

    def register(self, app: web.Application) -> None:
        for op in self.operations:
            app.router.add_route(op.method, op.path, _wrap(op))
        app[OPERATIONS].extend(self.operations)


def _wrap(op: Operation):
    async def handler(request: web.Request) -> web.StreamResponse:
        if op.idempotent:
            return await run_idempotent(request, op, lambda: _call(op, request))
        return await _call(op, request)

    handler.operation = op  # the auth middleware reads op.auth
    return handler


async def _call(op: Operation, request: web.Request) -> web.StreamResponse:
    kwargs = {}
    if op.body is not None:
        kwargs["body"] = parse(op.body, await read_json(request))
    if op.query is not None:
        kwargs["query"] = parse(op.query, dict(request.query))
    result = await op.handler(request, **kwargs)
    if isinstance(result, web.StreamResponse):
        return result
    if isinstance(result, Reply):
        return ok(result.data, result.message, result.status or op.status)
    return ok(result, status=op.status)
