"""Idempotency-Key for every POST that creates or charges (Stripe's semantics).

The first request with a key runs and its response (2xx or 4xx) is stored; the same key with the
same request replays that response; the same key with a different request is 409. A 5xx is not
stored, so the client may retry with the same key. Keys are per user and expire after a TTL.
"""
from __future__ import annotations

import hashlib
import json
from datetime import timedelta
from typing import Awaitable, Callable

from aiohttp import web

from billing.http.context import CLOCK, POOL, SETTINGS, user_id
from billing.http.envelope import error_body, json_response
from billing.http.errors import ApiError, BadRequest, Conflict

HEADER = "Idempotency-Key"


async def run_idempotent(request: web.Request, op, call: Callable[[], Awaitable[web.StreamResponse]]) -> web.StreamResponse:
    key = request.headers.get(HEADER, "").strip()
    if not key:
        raise BadRequest(f"the {HEADER} header is required for this request", code="idempotency_key_required")
    if len(key) > 255:
        raise BadRequest(f"{HEADER} is longer than 255 characters", code="idempotency_key_invalid")
    owner = user_id(request)
    scope = f"{op.method} {op.path}"
    # The concrete path is part of the request: one key cannot refund two different payments.
    digest = hashlib.sha256(request.method.encode() + b" " + request.path.encode() + b"\n" + await request.read()).hexdigest()
    now = request.app[CLOCK].now()
    ttl = timedelta(hours=request.app[SETTINGS].idempotency_key_ttl_hours)
    pool = request.app[POOL]

    async with pool.acquire() as conn:
        # An expired key is free again.
        await conn.execute(
            "DELETE FROM idempotency_keys WHERE user_id = $1 AND scope = $2 AND key = $3 AND expires_at <= $4",
            owner, scope, key, now,
        )
        inserted = await conn.fetchval(
            """INSERT INTO idempotency_keys (user_id, scope, key, request_hash, status, expires_at)
               VALUES ($1, $2, $3, $4, 'in_progress', $5)
               ON CONFLICT DO NOTHING RETURNING true""",
            owner, scope, key, digest, now + ttl,
        )
        if not inserted:
            stored = await conn.fetchrow(
                "SELECT request_hash, status, response_status, response_body FROM idempotency_keys WHERE user_id = $1 AND scope = $2 AND key = $3",
                owner, scope, key,
            )
            if stored is None:  # expired and deleted in between: the caller may simply retry
                raise Conflict("idempotency key is being reset, retry", code="idempotency_key_in_use")
            if stored["request_hash"] != digest:
                raise Conflict(f"this {HEADER} was already used with a different request", code="idempotency_key_reused")
            if stored["status"] == "in_progress":
                raise Conflict(f"a request with this {HEADER} is still in progress", code="idempotency_key_in_use")
            return json_response(stored["response_body"], stored["response_status"], headers={"Idempotent-Replayed": "true"})

    try:
        response = await call()
    except ApiError as exc:
        response = json_response(error_body(exc.message, exc.code, exc.details), exc.status, headers=exc.headers)
    except BaseException:
        await _forget(pool, owner, scope, key)
        raise

    if response.status >= 500 or not isinstance(response, web.Response):
        await _forget(pool, owner, scope, key)
        return response
    await pool.execute(
        """UPDATE idempotency_keys SET status = 'completed', response_status = $4, response_body = $5
           WHERE user_id = $1 AND scope = $2 AND key = $3""",
        owner, scope, key, response.status, json.loads(response.text),
    )
    return response


async def _forget(pool, owner, scope: str, key: str) -> None:
    """Free the key after a 5xx or a crash in the handler, so the client's retry runs again."""
    await pool.execute("DELETE FROM idempotency_keys WHERE user_id = $1 AND scope = $2 AND key = $3", owner, scope, key)
