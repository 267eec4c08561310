"""OpenAPI 3.1 from the declared endpoints' pydantic models, and Swagger UI at /docs served offline."""
from __future__ import annotations

import re
from typing import Any

from aiohttp import web
from openapi_ui_bundles import swagger_ui
from pydantic import BaseModel, TypeAdapter

from billing import __version__
from billing.http.api import OPERATIONS, Operation
from billing.http.context import SERVICE

REF = "#/components/schemas/{model}"
_ERROR = {"$ref": "#/components/schemas/ErrorEnvelope"}
_REASONS = {400: "Bad request", 401: "Unauthorized", 402: "Payment failed", 403: "Forbidden", 404: "Not found",
            409: "Conflict", 422: "Validation error", 429: "Too many requests", 503: "Service unavailable"}
_ERROR_ENVELOPE = {
    "type": "object",
    "required": ["success", "error", "code", "timestamp"],
    "properties": {
        "success": {"const": False},
        "error": {"type": "string"},
        "code": {"type": "string"},
        "details": {},
        "timestamp": {"type": "string", "format": "date-time"},
    },
}


def _schema(annotation: Any, mode: str, components: dict) -> dict:
    schema = TypeAdapter(annotation).json_schema(ref_template=REF, mode=mode)
    components.update(schema.pop("$defs", {}))
    if isinstance(annotation, type) and issubclass(annotation, BaseModel) and "$ref" not in schema:
        components[annotation.__name__] = schema
        return {"$ref": REF.format(model=annotation.__name__)}
    return schema


def _envelope(data_schema: dict) -> dict:
    return {
        "type": "object",
        "required": ["success", "data", "message", "timestamp"],
        "properties": {
            "success": {"const": True},
            "data": data_schema,
            "message": {"type": "string"},
            "timestamp": {"type": "string", "format": "date-time"},
        },
    }


def _operation(op: Operation, components: dict) -> dict:
    spec: dict[str, Any] = {"summary": op.summary, "tags": list(op.tags),
                            "operationId": f"{op.handler.__module__.rsplit('.', 1)[-1]}_{op.handler.__name__}"}
    params = [{"name": name, "in": "path", "required": True, "schema": {"type": "string", "format": "uuid"}
               if name.endswith("id") else {"type": "string"}} for name in re.findall(r"{(\w+)}", op.path)]
    if op.query is not None:
        query_schema = op.query.model_json_schema(ref_template=REF)
        components.update(query_schema.pop("$defs", {}))
        required = set(query_schema.get("required", []))
        for name, prop in query_schema.get("properties", {}).items():
            params.append({"name": name, "in": "query", "required": name in required, "schema": prop})
    if op.idempotent:
        params.append({"name": "Idempotency-Key", "in": "header", "required": True,
                       "schema": {"type": "string", "minLength": 1, "maxLength": 255},
                       "description": "Same key + same request replays the first response; a different request is 409."})
    if params:
        spec["parameters"] = params
    body = op.body or op.raw_body
    if body is not None:
        spec["requestBody"] = {"required": True, "content": {"application/json": {"schema": _schema(body, "validation", components)}}}
    data = _schema(op.response, "serialization", components) if op.response is not None else {}
    responses = {str(op.status): {"description": "Success", "content": {"application/json": {"schema": _envelope(data)}}}}
    errors = set(op.errors) | ({401} if op.auth else set()) | ({422, 400} if op.body or op.query else set())
    errors |= {400, 409} if op.idempotent else set()
    errors |= {400, 422} if op.raw_body else set()
    if params and any(p["in"] == "path" for p in params):
        errors.add(404)
    for status in sorted(errors):
        responses[str(status)] = {"description": _REASONS.get(status, "Error"),
                                  "content": {"application/json": {"schema": _ERROR}}}
    spec["responses"] = responses
    if op.auth:
        spec["security"] = [{"bearerAuth": []}]
    return spec


def openapi_spec(app: web.Application) -> dict:
    components: dict[str, Any] = {"ErrorEnvelope": _ERROR_ENVELOPE}
    paths: dict[str, dict] = {}
    for op in app[OPERATIONS]:
        paths.setdefault(op.path, {})[op.method.lower()] = _operation(op, components)
    return {
        "openapi": "3.1.0",
        "info": {"title": f"billing {app[SERVICE]} API", "version": __version__,
                 "description": "Every response is an envelope; money is a decimal string."},
        "paths": paths,
        "components": {"schemas": components,
                       "securitySchemes": {"bearerAuth": {"type": "http", "scheme": "bearer", "bearerFormat": "JWT"}}},
    }


_DOCS_PAGE = """<!doctype html>
<html><head><meta charset="utf-8"><title>billing {service} API</title>
<link rel="stylesheet" href="/docs/static/swagger-ui.css"></head>
<body><div id="swagger-ui"></div>
<script src="/docs/static/swagger-ui-bundle.js"></script>
<script>window.ui = SwaggerUIBundle({{url: "/openapi.json", dom_id: "#swagger-ui", deepLinking: true}});</script>
</body></html>"""


async def openapi_json(request: web.Request) -> web.Response:
    return web.json_response(openapi_spec(request.app))


async def docs_page(request: web.Request) -> web.Response:
    return web.Response(text=_DOCS_PAGE.format(service=request.app[SERVICE]), content_type="text/html")


def setup_docs(app: web.Application) -> None:
    app.router.add_get("/openapi.json", openapi_json)
    app.router.add_get("/docs", docs_page)
    app.router.add_static("/docs/static", swagger_ui.static_path)
