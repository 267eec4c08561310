"""The message envelope, stored as flat stream fields so `redis-cli XRANGE` stays readable."""

import json
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any
from uuid import uuid4

import structlog
from pydantic import AwareDatetime, BaseModel, Field, Json


def _new_id() -> str:
    return uuid4().hex


def _now() -> datetime:
    return datetime.now(UTC)


def _bound_correlation_id() -> str | None:
    return structlog.contextvars.get_contextvars().get("correlation_id")


class Envelope(BaseModel):
    id: str = Field(default_factory=_new_id)  # stays the same across retries: the inbox key
    action: str
    correlation_id: str = Field(default_factory=lambda data: data["id"])
    idempotency_key: str | None = None
    created_at: AwareDatetime = Field(default_factory=_now)
    attempts: int = 0  # failed runs so far
    max_attempts: int | None = None  # None: the consumer's policy decides
    last_error: str | None = None
    # On the wire the payload is a JSON string; pydantic decodes it during validation (fast path).
    payload: dict[str, Any] | Json[dict[str, Any]] = Field(default_factory=dict)

    @classmethod
    def build(
        cls,
        action: str,
        payload: BaseModel | Mapping[str, Any],
        *,
        models: Mapping[str, type[BaseModel]] | None = None,
        correlation_id: str | None = None,
        idempotency_key: str | None = None,
        max_attempts: int | None = None,
    ) -> "Envelope":
        """A new envelope; the payload is validated against `models[action]` when known.

        `correlation_id` defaults to the one bound in structlog's contextvars (per HTTP request
        by the middleware, per message by the Consumer), so follow-up commands carry the
        caller's; else to the new envelope's own id."""
        model = (models or {}).get(action)
        if model is not None:
            data = payload.model_dump() if isinstance(payload, BaseModel) else payload
            payload = model.model_validate(data)
        if isinstance(payload, BaseModel):
            payload = payload.model_dump(mode="json")
        envelope_id = _new_id()
        return cls(
            id=envelope_id,
            action=action,
            correlation_id=correlation_id or _bound_correlation_id() or envelope_id,
            idempotency_key=idempotency_key,
            max_attempts=max_attempts,
            payload=dict(payload),
        )

    def to_fields(self) -> dict[str, str]:
        data = self.model_dump(mode="json", exclude_none=True)
        data["payload"] = json.dumps(data["payload"], separators=(",", ":"))
        return {k: str(v) for k, v in data.items()}

    @classmethod
    def from_fields(cls, fields: Mapping[str, str]) -> "Envelope":
        return cls.model_validate(fields)
