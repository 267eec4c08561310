"""Middlewares: correlation id + access log, the error envelope, metrics, and JWT auth."""
from __future__ import annotations

import os
import time

import asyncpg
import structlog
from aiohttp import web
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError
from prometheus_client import Counter, Histogram

from billing.auth import InvalidToken, decode_token
from billing.http.context import CLOCK, SERVICE, SETTINGS
from billing.http.envelope import error_body, json_response
from billing.http.errors import ApiError, Unauthorized

log = structlog.get_logger("billing.http")

REQUESTS = Counter("billing_http_requests_total", "HTTP requests", ["service", "method", "route", "status"])
LATENCY = Histogram("billing_http_request_seconds", "HTTP request latency", ["service", "method", "route"])

_HTTP_CODES = {400: "bad_request", 401: "unauthorized", 403: "forbidden", 404: "not_found", 405: "method_not_allowed",
               409: "conflict", 413: "payload_too_large", 415: "unsupported_media_type", 429: "rate_limited"}


def _route_name(request: web.Request) -> str:
    resource = request.match_info.route.resource
    return resource.canonical if resource is not None else "unmatched"


# (service, method, route, status) -> the labelled counter and histogram. .labels() validates and locks on
# every call; the children never change, so each combination is looked up once. Bounded like the
# metric itself (route is the route template, not the path).
_METRIC_CHILDREN: dict[tuple[str, str, str, int], tuple] = {}


def _metrics_for(service: str, method: str, route: str, status: int) -> tuple:
    key = (service, method, route, status)
    children = _METRIC_CHILDREN.get(key)
    if children is None:
        children = _METRIC_CHILDREN[key] = (REQUESTS.labels(service, method, route, status),
                                            LATENCY.labels(service, method, route))
    return children


def _new_request_id() -> str:
    # 32 hex digits like uuid4().hex, without building a UUID object on every request.
    return os.urandom(16).hex()


@web.middleware
async def correlation(request: web.Request, handler):
    """Bind a request id (taken from the caller if given) to every log line of this request."""
    headers = request.headers
    request_id = (headers.get("X-Request-ID") or _new_request_id())[:128]
    correlation_id = (headers.get("X-Correlation-ID") or request_id)[:128]
    request["request_id"], request["correlation_id"] = request_id, correlation_id
    service = request.app[SERVICE]
    structlog.contextvars.clear_contextvars()
    structlog.contextvars.bind_contextvars(request_id=request_id, correlation_id=correlation_id, service=service)
    started = time.perf_counter()
    response = await handler(request)
    elapsed = time.perf_counter() - started
    route = _route_name(request)
    requests, latency = _metrics_for(service, request.method, route, response.status)
    requests.inc()
    latency.observe(elapsed)
    response.headers["X-Request-ID"] = request_id
    response.headers["X-Correlation-ID"] = correlation_id
    if route != "/metrics":
        log.info("request", method=request.method, path=request.path, status=response.status,
                 duration_ms=round(elapsed * 1000, 2), user_id=str(request.get("user_id") or "") or None)
    return response


_UNAVAILABLE = (OSError, asyncpg.PostgresConnectionError, asyncpg.CannotConnectNowError,
                asyncpg.TooManyConnectionsError, RedisConnectionError, RedisTimeoutError)


@web.middleware
async def errors(request: web.Request, handler):
    """Every failure leaves as the error envelope; a 500 never shows internals."""
    try:
        return await handler(request)
    except ApiError as exc:
        return json_response(error_body(exc.message, exc.code, exc.details), exc.status, headers=exc.headers)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        code = _HTTP_CODES.get(exc.status, "http_error")
        headers = {k: v for k, v in exc.headers.items() if k.lower() in ("allow", "retry-after")}
        return json_response(error_body(exc.reason, code), exc.status, headers=headers)
    except _UNAVAILABLE as exc:
        # PostgreSQL or Redis unreachable: a temporary condition the client may retry, not a bug.
        log.warning("dependency unavailable", path=request.path, error=type(exc).__name__)
        return json_response(error_body("a dependency is temporarily unavailable, retry later", "service_unavailable"),
                             503, headers={"Retry-After": "5"})
    except Exception:
        log.exception("unhandled error", path=request.path)
        return json_response(
            error_body("internal server error", "internal_error", {"request_id": request.get("request_id")}), 500)


@web.middleware
async def authentication(request: web.Request, handler):
    """Bearer JWT on every declared endpoint unless it says auth=False; undeclared routes are public."""
    operation = getattr(request.match_info.handler, "operation", None)
    header = request.headers.get("Authorization", "")
    needs_auth = operation is not None and operation.auth
    if header or needs_auth:
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            if needs_auth:
                raise _unauthorized("missing bearer token")
        else:
            try:
                request["user_id"] = decode_token(token.strip(), request.app[SETTINGS].jwt_secret.get_secret_value(),
                                                  now=request.app[CLOCK].now())
            except InvalidToken as exc:
                if needs_auth:
                    raise _unauthorized("invalid or expired token") from exc
        if "user_id" in request:
            structlog.contextvars.bind_contextvars(user_id=str(request["user_id"]))
    return await handler(request)


def _unauthorized(message: str) -> Unauthorized:
    return Unauthorized(message, headers={"WWW-Authenticate": "Bearer"})


MIDDLEWARES = [correlation, errors, authentication]
