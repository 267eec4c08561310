"""Outbound webhook endpoints a user registers, their delivery log, test events and resends.

POST   /v1/webhook-endpoints                      register (idempotent); the signing secret is shown once
GET    /v1/webhook-endpoints                      the user's active endpoints
GET    /v1/webhook-endpoints/{id}                 one endpoint
DELETE /v1/webhook-endpoints/{id}                 stop sending to it (its delivery log stays)
GET    /v1/webhook-endpoints/{id}/deliveries      one row per delivery attempt, newest first
POST   /v1/webhook-endpoints/{id}/test            send a `ping` event to it (idempotent)
POST   /v1/webhook-deliveries/{event_id}/resend   queue an event again (to ?endpoint_id= or where it went before)

Receivers verify `Billing-Signature: t=<unix>,v1=<hex>` = HMAC-SHA256(secret, f"{t}." + raw body)
(billing.signing.verify_outbound does exactly that) and dedupe on the event `id`.
"""
from __future__ import annotations

from datetime import datetime
from uuid import UUID

from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field, field_validator

from billing.http.api import Reply, Routes
from billing.http.context import CLOCK, POOL, SETTINGS, path_uuid, user_id
from billing.http.errors import Conflict, NotFound, ValidationFailed
from billing.sql import webhooks as repo
from billing.sql.webhook_events import queue_delivery
from billing.webhooks import EVENT_TYPES, UnsafeUrl, check_url, new_secret

routes = Routes("webhooks")
PING = "ping"  # the test event: sent only to the endpoint it was asked for


class CreateEndpoint(BaseModel):
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)
    url: str = Field(min_length=1, max_length=2048)
    events: list[str] = Field(default_factory=list, max_length=len(EVENT_TYPES))  # empty = every event
    description: str | None = Field(None, max_length=500)

    @field_validator("events")
    @classmethod
    def _known_events(cls, events: list[str]) -> list[str]:
        unknown = sorted(set(events) - EVENT_TYPES)
        if unknown:
            raise ValueError(f"unknown event types {unknown}; known: {sorted(EVENT_TYPES)}")
        return sorted(set(events))


class EndpointOut(BaseModel):
    id: UUID
    url: str
    description: str | None
    events: list[str]
    is_active: bool
    created_at: datetime


class EndpointWithSecret(EndpointOut):
    secret: str  # whsec_...: returned only when the endpoint is created


class DeliveryOut(BaseModel):
    id: UUID
    event_id: UUID
    event_type: str
    url: str
    attempt: int
    status: str                 # delivered | retrying | failed
    response_status: int | None
    response_body: str | None   # first 1 KiB of the receiver's answer
    error: str | None
    duration_ms: int | None
    created_at: datetime


class DeliveriesQuery(BaseModel):
    model_config = ConfigDict(extra="forbid")
    limit: int = Field(50, ge=1, le=200)
    offset: int = Field(0, ge=0)


class ResendQuery(BaseModel):
    model_config = ConfigDict(extra="forbid")
    endpoint_id: UUID | None = None


class Queued(BaseModel):
    event_id: UUID
    endpoint_ids: list[UUID]


def _endpoint(row) -> EndpointOut:
    return EndpointOut(**{k: row[k] for k in EndpointOut.model_fields})


async def _owned_endpoint(conn, request: web.Request):
    row = await repo.get_endpoint_for_user(conn, path_uuid(request), user_id(request))
    if row is None:
        raise NotFound("no such webhook endpoint")
    return row


@routes.post("/v1/webhook-endpoints", body=CreateEndpoint, response=EndpointWithSecret, status=201, idempotent=True,
             errors=(409, 422), summary="Register a webhook endpoint (its signing secret is shown once)")
async def create_endpoint(request: web.Request, body: CreateEndpoint):
    try:
        url = check_url(body.url, allow_private=request.app[SETTINGS].webhook_private_urls_allowed)
    except UnsafeUrl as exc:
        raise ValidationFailed("validation failed", [{"field": "url", "message": str(exc), "type": "unsafe_url"}]) from None
    async with request.app[POOL].acquire() as conn:
        row = await repo.create_endpoint(conn, user_id(request), url, body.events, body.description, new_secret())
    return EndpointWithSecret(**_endpoint(row).model_dump(), secret=row["secret"])


@routes.get("/v1/webhook-endpoints", response=list[EndpointOut], summary="Your webhook endpoints")
async def list_endpoints(request: web.Request):
    async with request.app[POOL].acquire() as conn:
        return [_endpoint(r) for r in await repo.list_endpoints_for_user(conn, user_id(request))]


@routes.get("/v1/webhook-endpoints/{id}", response=EndpointOut, errors=(404,), summary="One webhook endpoint")
async def get_endpoint(request: web.Request):
    async with request.app[POOL].acquire() as conn:
        return _endpoint(await _owned_endpoint(conn, request))


@routes.delete("/v1/webhook-endpoints/{id}", errors=(404,), summary="Delete a webhook endpoint")
async def delete_endpoint(request: web.Request):
    async with request.app[POOL].acquire() as conn:
        if not await repo.deactivate_endpoint(conn, path_uuid(request), user_id(request)):
            raise NotFound("no such webhook endpoint")
    return Reply({"id": request.match_info["id"], "deleted": True}, "webhook endpoint deleted")


@routes.get("/v1/webhook-endpoints/{id}/deliveries", query=DeliveriesQuery, response=list[DeliveryOut], errors=(404,),
            summary="Delivery log of an endpoint: one row per attempt, newest first")
async def list_deliveries(request: web.Request, query: DeliveriesQuery):
    async with request.app[POOL].acquire() as conn:
        endpoint = await _owned_endpoint(conn, request)
        rows = await repo.list_deliveries_for_endpoint(conn, endpoint["id"], user_id(request), query.limit, query.offset)
    return [DeliveryOut(**{k: r[k] for k in DeliveryOut.model_fields}) for r in rows]


@routes.post("/v1/webhook-endpoints/{id}/test", response=Queued, status=202, idempotent=True, errors=(404,),
             summary="Send a test `ping` event to an endpoint")
async def send_test_event(request: web.Request):
    settings = request.app[SETTINGS]
    async with request.app[POOL].acquire() as conn, conn.transaction():
        endpoint = await _owned_endpoint(conn, request)
        event = await repo.create_event(conn, user_id(request), PING, {"endpoint_id": str(endpoint["id"])},
                                        request.app[CLOCK].now())
        await queue_delivery(conn, settings.redis_prefix, event, endpoint["id"], correlation_id=request["correlation_id"])
    return Reply(Queued(event_id=event["id"], endpoint_ids=[endpoint["id"]]), "test event queued")


@routes.post("/v1/webhook-deliveries/{event_id}/resend", query=ResendQuery, response=Queued, status=202,
             errors=(404, 409), summary="Queue an event again for delivery")
async def resend(request: web.Request, query: ResendQuery):
    owner, settings = user_id(request), request.app[SETTINGS]
    async with request.app[POOL].acquire() as conn, conn.transaction():
        event = await repo.get_event_for_user(conn, path_uuid(request, "event_id"), owner)
        if event is None:
            raise NotFound("no such event")
        if query.endpoint_id is not None:
            if await repo.get_endpoint_for_user(conn, query.endpoint_id, owner) is None:
                raise NotFound("no such webhook endpoint")
            targets = [query.endpoint_id]
        else:
            targets = await repo.endpoints_delivered_event(conn, event["id"], owner)
            if not targets and event["type"] != PING:
                targets = [r["id"] for r in await repo.active_endpoints_for_event(conn, owner, event["type"])]
        if not targets:
            raise Conflict("no active webhook endpoint to send this event to", code="no_endpoint")
        for endpoint_id in targets:
            await queue_delivery(conn, settings.redis_prefix, event, endpoint_id, correlation_id=request["correlation_id"])
    return Reply(Queued(event_id=event["id"], endpoint_ids=targets), "event queued for delivery")
