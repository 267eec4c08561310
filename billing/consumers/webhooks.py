"""Webhook delivery actor: POST one signed event to one user endpoint and log the attempt.

Stream family `webhook_delivery`, action `deliver_webhook`, payload DeliverWebhook (queued by
billing.sql.webhook_events.emit). Runs in the payments worker (SERVICES["payments"]).

Each attempt is a row in webhook_outbound_requests. A 2xx answer is delivered; anything else
raises, so the runtime retries with this family's policy (settings.webhook_*: exponential backoff);
the row of the last attempt says failed and the message goes to the dead letter, from where an
operator can replay it (/ops) or the user resend it (POST /v1/webhook-deliveries/{event_id}/resend).
Delivery is at least once: receivers dedupe on the event id; a delivered message is not sent again
on redelivery (inbox).
"""
from __future__ import annotations

import asyncio
import socket
import time

import aiohttp
import structlog
from aiohttp.abc import AbstractResolver
from aiohttp.resolver import DefaultResolver

from billing import __version__
from billing.commands import DeliverWebhook
from billing.config import Settings
from billing.consumers.deps import Deps, retry_policy
from billing.signing import OUTBOUND_HEADER, sign_outbound
from billing.sql import webhooks as repo
from billing.sql.webhook_events import DELIVER_ACTION, DELIVERY_FAMILY
from billing.streams import Envelope, PermanentError, RetryPolicy, Router, claim_inbox
from billing.webhooks import UnsafeUrl, check_url, event_body, is_public_address

log = structlog.get_logger("billing.webhooks")

INBOX = "webhook_delivery"
RESPONSE_EXCERPT = 1024  # bytes of the receiver's answer kept in the log


class DeliveryFailed(Exception):
    """Non-2xx answer, timeout or connection error: retried by the runtime."""


class PublicOnlyResolver(AbstractResolver):
    """Resolves names like aiohttp does, but refuses private/loopback answers (SSRF, DNS rebinding)."""

    def __init__(self) -> None:
        self._inner = DefaultResolver()

    async def resolve(self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET):
        answers = await self._inner.resolve(host, port, family)
        if not answers or not all(is_public_address(a["host"]) for a in answers):
            raise OSError(f"{host} resolves to a non-public address")
        return answers

    async def close(self) -> None:
        await self._inner.close()


def delivery_policy(settings: Settings) -> RetryPolicy:
    return retry_policy(settings, max_retries=settings.webhook_max_retries, base_delay=settings.webhook_base_delay,
                        max_delay=settings.webhook_max_delay)


def http_session(settings: Settings) -> aiohttp.ClientSession:
    """The worker's one session for webhooks; outside development it only connects to public addresses."""
    resolver = None if settings.webhook_private_urls_allowed else PublicOnlyResolver()
    return aiohttp.ClientSession(connector=aiohttp.TCPConnector(resolver=resolver, limit=100),
                                 timeout=aiohttp.ClientTimeout(total=settings.webhook_timeout_seconds))


class WebhookDelivery:
    def __init__(self, deps: Deps) -> None:
        self.deps = deps
        self.policy = delivery_policy(deps.settings)

    async def deliver(self, envelope: Envelope, cmd: DeliverWebhook) -> None:
        deps = self.deps
        async with deps.pool.acquire() as conn:
            endpoint = await repo.get_endpoint(conn, cmd.endpoint_id)
            done = await conn.fetchval("SELECT true FROM inbox WHERE consumer = $1 AND message_id = $2", INBOX, envelope.id)
        if endpoint is None or not endpoint["is_active"]:
            log.info("webhook endpoint gone; delivery dropped", endpoint_id=str(cmd.endpoint_id))
            return
        if done:  # delivered before, only the ack was lost
            return
        attempt = envelope.attempts + 1
        last = attempt >= (envelope.max_attempts or self.policy.max_attempts)
        now = deps.clock.now()
        body = event_body(cmd.event_id, cmd.event_type, cmd.created_at or now, cmd.payload)
        started = time.perf_counter()
        status, excerpt, error, permanent = None, None, None, False
        try:
            check_url(endpoint["url"], allow_private=deps.settings.webhook_private_urls_allowed)
            status, excerpt = await self._post(endpoint["url"], body, {
                "Content-Type": "application/json",
                "User-Agent": f"billing-webhooks/{__version__}",
                OUTBOUND_HEADER: sign_outbound(endpoint["secret"], body, now),
                "Billing-Event-Id": str(cmd.event_id),
                "Billing-Event-Type": cmd.event_type,
            })
        except UnsafeUrl as exc:
            error, permanent = f"refused: {exc}", True
        except (aiohttp.ClientError, asyncio.TimeoutError, OSError) as exc:
            error = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
        duration_ms = int((time.perf_counter() - started) * 1000)
        delivered = status is not None and 200 <= status < 300
        if error is None and not delivered:
            error = f"HTTP {status}"
        async with deps.pool.acquire() as conn, conn.transaction():
            await repo.log_attempt(
                conn, endpoint_id=cmd.endpoint_id, event_id=cmd.event_id, event_type=cmd.event_type,
                url=endpoint["url"], payload=cmd.payload, attempt=attempt,
                status="delivered" if delivered else ("failed" if last or permanent else "retrying"),
                response_status=status, response_body=excerpt, error=error, duration_ms=duration_ms,
                created_at=now)
            if delivered:
                await claim_inbox(conn, INBOX, envelope.id)
        if permanent:
            raise PermanentError(error)
        if not delivered:
            raise DeliveryFailed(f"{endpoint['url']}: {error}")
        log.info("webhook delivered", event_id=str(cmd.event_id), endpoint_id=str(cmd.endpoint_id), status=status)

    async def _post(self, url: str, body: bytes, headers: dict) -> tuple[int, str]:
        if self.deps.http is None:
            raise RuntimeError("the worker has no HTTP session")
        # No redirects: a 3xx is a failed attempt, and a redirect could point anywhere (SSRF).
        async with self.deps.http.post(url, data=body, headers=headers, allow_redirects=False) as resp:
            raw = await resp.content.read(RESPONSE_EXCERPT)
            return resp.status, raw.decode("utf-8", errors="replace")


def build_routers(deps: Deps) -> dict[str, Router]:
    router = Router()
    router.register(DELIVER_ACTION, DeliverWebhook, WebhookDelivery(deps).deliver)
    return {DELIVERY_FAMILY: router}


def build_policies(settings: Settings) -> dict[str, RetryPolicy]:
    """The worker uses these instead of the default stream policy for these families."""
    return {DELIVERY_FAMILY: delivery_policy(settings)}
