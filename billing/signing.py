"""HMAC-SHA256 webhook signatures, both directions.

Inbound (payment gateway -> us): ``X-Webhook-Signature`` is the hex HMAC of
``b"<timestamp>." + body`` (optionally prefixed ``sha256=``), and
``X-Webhook-Timestamp`` is unix seconds. The timestamp is signed too, and
must be within ``tolerance`` seconds of now in BOTH directions: too old is a
replay, too far ahead means a skewed or forged clock.

Outbound (us -> customer endpoints), Stripe style:
``Billing-Signature: t=<unix>,v1=<hex>[,v1=<hex>...]``; one v1 per active
secret so receivers keep working while a secret is rotated.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Optional, Sequence, Union

from billing.utc import from_unix_seconds, require_utc, unix_seconds

SIGNATURE_HEADER = "X-Webhook-Signature"
TIMESTAMP_HEADER = "X-Webhook-Timestamp"
OUTBOUND_HEADER = "Billing-Signature"
DEFAULT_TOLERANCE = 300  # seconds

Secret = Union[str, bytes]
Secrets = Union[Secret, Sequence[Secret]]

_HEX_SIGNATURE = re.compile(r"^[0-9a-f]{64}$")
_TIMESTAMP = re.compile(r"^[0-9]{1,12}$")  # plain unix seconds: no sign, fraction or exponent


class SignatureFailure(StrEnum):
    MISSING = "missing"
    MALFORMED = "malformed"
    STALE = "stale"
    FUTURE = "future"
    MISMATCH = "mismatch"


class SignatureError(Exception):
    def __init__(self, reason: SignatureFailure, message: str) -> None:
        super().__init__(f"{reason.value}: {message}")
        self.reason = reason


def _key(secret: Secret) -> bytes:
    key = secret.encode() if isinstance(secret, str) else secret
    if not isinstance(key, bytes) or not key:
        raise ValueError("signing secret must be a non-empty str or bytes")
    return key


def _keys(secrets: Secrets) -> list[bytes]:
    keys = [_key(secrets)] if isinstance(secrets, (str, bytes)) else [_key(s) for s in secrets]
    if not keys:
        raise ValueError("at least one secret is required")
    return keys


def compute_signature(secret: Secret, body: bytes, timestamp: int) -> str:
    """Hex HMAC-SHA256 over ``f"{timestamp}."`` followed by the raw body bytes."""
    if not isinstance(body, bytes):
        raise TypeError("body must be the raw request bytes")  # re-encoding JSON changes bytes
    return hmac.new(_key(secret), f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()


def _check_window(timestamp: int, now: datetime, tolerance: int) -> None:
    skew = require_utc(now, "now") - from_unix_seconds(timestamp)
    if skew > timedelta(seconds=tolerance):
        raise SignatureError(SignatureFailure.STALE, f"timestamp older than {tolerance}s")
    if skew < -timedelta(seconds=tolerance):
        raise SignatureError(SignatureFailure.FUTURE, f"timestamp more than {tolerance}s in the future")


def _matches_any(keys: list[bytes], body: bytes, timestamp: int, candidates: list[str]) -> bool:
    # Compare every pair in constant time; no early exit on the first match.
    found = False
    for key in keys:
        expected = compute_signature(key, body, timestamp)
        for candidate in candidates:
            found |= hmac.compare_digest(expected, candidate)
    return found


# -- inbound ---------------------------------------------------------------------


def inbound_headers(secret: Secret, body: bytes, now: datetime) -> dict[str, str]:
    """Headers a gateway (or the mock one, or a test) sends with ``body``."""
    timestamp = unix_seconds(now)
    return {
        SIGNATURE_HEADER: f"sha256={compute_signature(secret, body, timestamp)}",
        TIMESTAMP_HEADER: str(timestamp),
    }


def verify(
    secret: Secrets,
    body: bytes,
    signature: Optional[str],
    timestamp: Optional[Union[str, int]],
    now: datetime,
    tolerance: int = DEFAULT_TOLERANCE,
) -> None:
    """Raise ``SignatureError`` unless ``signature`` is valid for ``body`` at ``timestamp`` near ``now``."""
    if not signature or timestamp is None or timestamp == "":
        raise SignatureError(SignatureFailure.MISSING, "signature or timestamp header missing")
    ts = _parse_timestamp(timestamp)
    candidate = signature.strip().lower()
    if candidate.startswith("sha256="):
        candidate = candidate[len("sha256="):]
    if not _HEX_SIGNATURE.match(candidate):
        raise SignatureError(SignatureFailure.MALFORMED, "signature is not 64 hex characters")
    if not _matches_any(_keys(secret), body, ts, [candidate]):
        raise SignatureError(SignatureFailure.MISMATCH, "signature does not match")
    _check_window(ts, now, tolerance)


def _parse_timestamp(timestamp: Union[str, int]) -> int:
    if isinstance(timestamp, bool):
        raise SignatureError(SignatureFailure.MALFORMED, "timestamp must be unix seconds")
    if isinstance(timestamp, int):
        if timestamp < 0:
            raise SignatureError(SignatureFailure.MALFORMED, "timestamp must not be negative")
        return timestamp
    if not isinstance(timestamp, str) or not _TIMESTAMP.match(timestamp.strip()):
        raise SignatureError(SignatureFailure.MALFORMED, "timestamp must be unix seconds")
    return int(timestamp.strip())


# -- outbound --------------------------------------------------------------------


def sign_outbound(secrets: Secrets, body: bytes, now: datetime) -> str:
    """``Billing-Signature`` header value: ``t=<unix>,v1=<hex>`` with one v1 per secret."""
    timestamp = unix_seconds(now)
    parts = [f"t={timestamp}"] + [f"v1={compute_signature(k, body, timestamp)}" for k in _keys(secrets)]
    return ",".join(parts)


def parse_outbound_header(header: Optional[str]) -> tuple[int, list[str]]:
    """(timestamp, v1 signatures). Unknown schemes (v0, ...) are ignored, as Stripe does."""
    if not header or not header.strip():
        raise SignatureError(SignatureFailure.MISSING, f"{OUTBOUND_HEADER} header missing")
    timestamps: list[str] = []
    signatures: list[str] = []
    for item in header.split(","):
        key, sep, value = item.strip().partition("=")
        if not sep:
            raise SignatureError(SignatureFailure.MALFORMED, "expected key=value items")
        if key == "t":
            timestamps.append(value)
        elif key == "v1":
            if not _HEX_SIGNATURE.match(value.lower()):
                raise SignatureError(SignatureFailure.MALFORMED, "v1 is not 64 hex characters")
            signatures.append(value.lower())
    if len(timestamps) != 1 or not signatures:
        raise SignatureError(SignatureFailure.MALFORMED, "need exactly one t and at least one v1")
    return _parse_timestamp(timestamps[0]), signatures


def verify_outbound(
    secrets: Secrets, body: bytes, header: Optional[str], now: datetime, tolerance: int = DEFAULT_TOLERANCE
) -> None:
    """What a receiver does: accept if any v1 matches any of its secrets, within the window."""
    timestamp, signatures = parse_outbound_header(header)
    if not _matches_any(_keys(secrets), body, timestamp, signatures):
        raise SignatureError(SignatureFailure.MISMATCH, "no v1 signature matches")
    _check_window(timestamp, now, tolerance)
