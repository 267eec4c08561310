"""The response envelope every endpoint answers with.

Success: {success: true, data, message, timestamp}
Error:   {success: false, error, code, details, timestamp}
Money is serialised as a string ("9.99") so no client ever parses it into a float.
"""
from __future__ import annotations

import json
from datetime import UTC, datetime
from decimal import Decimal
from enum import Enum
from typing import Any
from uuid import UUID

from aiohttp import web
from pydantic import BaseModel


def _default(value: Any) -> Any:
    if isinstance(value, BaseModel):
        return value.model_dump(mode="json")
    if isinstance(value, Decimal):
        return str(value)
    if isinstance(value, datetime):
        return value.astimezone(UTC).isoformat().replace("+00:00", "Z")
    if isinstance(value, (UUID, Enum)):
        return str(value.value if isinstance(value, Enum) else value)
    if hasattr(value, "isoformat"):
        return value.isoformat()
    if hasattr(value, "items"):  # asyncpg.Record
        return dict(value.items())
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def dumps(value: Any) -> str:
    return json.dumps(value, default=_default)


def timestamp() -> str:
    return datetime.now(UTC).isoformat().replace("+00:00", "Z")


def success_body(data: Any = None, message: str = "OK") -> dict:
    return {"success": True, "data": data, "message": message, "timestamp": timestamp()}


def error_body(error: str, code: str, details: Any = None) -> dict:
    return {"success": False, "error": error, "code": code, "details": details, "timestamp": timestamp()}


def json_response(body: dict, status: int = 200, headers: dict | None = None) -> web.Response:
    return web.Response(text=dumps(body), status=status, content_type="application/json", headers=headers)


def ok(data: Any = None, message: str = "OK", status: int = 200) -> web.Response:
    return json_response(success_body(data, message), status)
