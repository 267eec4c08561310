"""The mock gateway's webhook sender: POST each signed payment notification to the subscriptions
service (settings.gateway_webhook_target), retried with the runtime's backoff until it is accepted.

2xx: delivered. Connection errors, timeouts, 5xx, 408 and 429: raise, the runtime retries.
Any other 4xx: the receiver refuses this body for good, so PermanentError (dead letter).
"""
from __future__ import annotations

import json

import aiohttp
import structlog

from billing.commands import DELIVER_GATEWAY_WEBHOOK, GatewayWebhook
from billing.consumers.deps import Deps
from billing.signing import inbound_headers
from billing.streams import Envelope, PermanentError, Router

log = structlog.get_logger("billing.gateway_webhooks")

RETRYABLE_4XX = {408, 429}


class DeliveryFailed(Exception):
    """The receiver did not accept the webhook this time; retry later."""


def encode(body: dict) -> bytes:
    """Compact, key-sorted JSON: the exact bytes that are signed and sent."""
    return json.dumps(body, separators=(",", ":"), sort_keys=True).encode()


class GatewayWebhookSender:
    """One aiohttp ClientSession per worker, created on first use."""

    def __init__(self, deps: Deps) -> None:
        self.deps = deps
        self._session: aiohttp.ClientSession | None = None

    def session(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            timeout = aiohttp.ClientTimeout(total=self.deps.settings.gateway_webhook_timeout_seconds)
            self._session = aiohttp.ClientSession(timeout=timeout)
        return self._session

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()

    async def deliver(self, envelope: Envelope, webhook: GatewayWebhook) -> None:
        settings = self.deps.settings
        body = encode(webhook.body)
        headers = {
            **inbound_headers(settings.webhook_secret.get_secret_value(), body, self.deps.clock.now()),
            "Content-Type": "application/json",
            "X-Webhook-Event-ID": webhook.event_id,
            "User-Agent": "billing-mock-gateway/1",
        }
        try:
            async with self.session().post(settings.gateway_webhook_target, data=body, headers=headers) as resp:
                status = resp.status
                text = (await resp.text())[:500]
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise DeliveryFailed(f"{type(exc).__name__}: {exc}") from exc
        if 200 <= status < 300:
            log.info("gateway webhook delivered", event_id=webhook.event_id, status=status)
            return
        if 400 <= status < 500 and status not in RETRYABLE_4XX:
            raise PermanentError(f"receiver refused the webhook with {status}: {text}")
        raise DeliveryFailed(f"receiver answered {status}: {text}")


def build_routers(deps: Deps) -> dict[str, Router]:
    sender = GatewayWebhookSender(deps)
    deps.on_shutdown.append(sender.close)
    router = Router()
    router.register(DELIVER_GATEWAY_WEBHOOK, GatewayWebhook, sender.deliver)
    return {"gateway_webhook": router}
