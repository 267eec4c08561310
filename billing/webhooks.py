"""Outbound webhooks, the pure part: event types, endpoint URL rules, secrets and the signed body.

Event types are "<object>.<what happened>". Subscription state changes use "subscription." + the
name of the change (billing/sql/subscriptions.record_event calls billing.sql.webhook_events.emit).
Add a new type here before emitting it, so endpoints can subscribe to it.
"""
from __future__ import annotations

import ipaddress
import json
import secrets
from datetime import datetime
from typing import Any
from urllib.parse import urlsplit
from uuid import UUID

EVENT_TYPES = frozenset({
    "subscription.created",
    "subscription.trial_started",
    "subscription.activated",
    "subscription.trial_ended",
    "subscription.renewed",
    "subscription.past_due",
    "subscription.plan_changed",
    "subscription.cancel_scheduled",     # cancel_at_period_end set
    "subscription.resumed",              # cancel_at_period_end cleared
    "subscription.canceled",
    "subscription.expired",
    "payment.succeeded",
    "payment.failed",
    "payment.refunded",
    "invoice.created",
    "invoice.paid",
    "usage.limit_reached",
})

SECRET_PREFIX = "whsec_"
_LOCAL_NAMES = {"localhost", "localhost.localdomain", "ip6-localhost", "ip6-loopback"}


class UnsafeUrl(ValueError):
    """A URL we refuse to send webhooks to."""


def new_secret() -> str:
    return SECRET_PREFIX + secrets.token_urlsafe(32)


def is_public_address(address: str) -> bool:
    """False for loopback, private, link-local (cloud metadata 169.254.169.254), multicast, reserved..."""
    ip = ipaddress.ip_address(address)
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ip.is_global and not ip.is_multicast


def check_url(url: str, *, allow_private: bool) -> str:
    """The URL if webhooks may be sent to it; raises UnsafeUrl otherwise.

    http(s) only, no user:password in the URL. Unless `allow_private` (development, so tests and
    `billing up` can use 127.0.0.1), literal private/loopback addresses and local names are refused
    here, and the delivery checks the resolved addresses again (a public name may point inside: SSRF).
    """
    try:
        parts = urlsplit(url)
        port = parts.port  # raises on a malformed port
    except ValueError as exc:
        raise UnsafeUrl(f"not a valid URL: {exc}") from None
    if parts.scheme not in ("http", "https"):
        raise UnsafeUrl("only http and https URLs are allowed")
    if not parts.hostname:
        raise UnsafeUrl("the URL needs a host")
    if parts.username is not None or parts.password is not None:
        raise UnsafeUrl("credentials in the URL are not allowed; verify the Billing-Signature header instead")
    if port == 0:
        raise UnsafeUrl("port 0 is not allowed")
    if not allow_private:
        host = parts.hostname.lower().rstrip(".")
        if host in _LOCAL_NAMES or host.endswith(".localhost") or host.endswith(".internal"):
            raise UnsafeUrl("local host names are not allowed")
        try:
            public = is_public_address(host)
        except ValueError:
            public = True  # a name: its addresses are checked when delivering
        if not public:
            raise UnsafeUrl("private, loopback and link-local addresses are not allowed")
    return url


def matches(events: list[str], event_type: str) -> bool:
    """An endpoint with no events listed receives every event."""
    return not events or event_type in events


def event_body(event_id: UUID, event_type: str, created: datetime, data: dict[str, Any]) -> bytes:
    """The exact bytes POSTed and signed: {id, type, created, data}, keys sorted, no spaces."""
    body = {"id": str(event_id), "type": event_type, "created": created.isoformat().replace("+00:00", "Z"), "data": data}
    return json.dumps(body, separators=(",", ":"), sort_keys=True).encode()
