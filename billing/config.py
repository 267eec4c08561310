"""Typed settings: one class holds connection strings, secrets and business policy.

Environments: development (the default, test clock on, dev secrets allowed),
staging and production (real secrets required, test clock off).
"""
from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import AliasChoices, Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

Environment = Literal["development", "staging", "production"]

# Shipped so `billing up` works out of the box; production refuses them.
DEV_JWT_SECRET = "dev-only-jwt-secret-change-me-0123456789abcdef"
DEV_WEBHOOK_SECRET = "dev-only-webhook-secret-change-me-0123456789"
DEV_OPERATOR_TOKEN = "dev-only-operator-token-change-me-0123456789"
DEV_SECRETS = {DEV_JWT_SECRET, DEV_WEBHOOK_SECRET, DEV_OPERATOR_TOKEN}


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="BILLING_", env_file=".env", extra="ignore", frozen=True)

    environment: Environment = Field("development", validation_alias=AliasChoices("BILLING_ENV", "environment"))

    # Connections. None means "use the embedded servers" (only `billing up` resolves that).
    database_url: str | None = Field(None, validation_alias=AliasChoices("DATABASE_URL", "database_url"))
    database_schema: str = Field("public", pattern=r"^[a-z_][a-z0-9_]*$")
    database_pool_size: int = Field(10, ge=1, le=200)
    redis_url: str | None = Field(None, validation_alias=AliasChoices("REDIS_URL", "redis_url"))
    redis_prefix: str = Field("billing", pattern=r"^[A-Za-z0-9_.-]+$")
    data_dir: Path = Path(".data")

    host: str = "127.0.0.1"
    subscription_port: int = 8001
    payment_port: int = 8002

    # Secrets.
    jwt_secret: SecretStr = SecretStr(DEV_JWT_SECRET)
    jwt_expiry_minutes: int = Field(60, ge=1, le=24 * 60)
    webhook_secret: SecretStr = SecretStr(DEV_WEBHOOK_SECRET)

    # Auth policy.
    password_min_length: int = Field(8, ge=8)
    bcrypt_rounds: int = Field(12, ge=4, le=16)
    login_max_attempts: int = Field(5, ge=1)
    login_window_seconds: int = Field(300, ge=1)

    # Webhooks: accepted clock skew, both into the past and the future.
    webhook_tolerance_seconds: int = Field(300, ge=1)

    # Business policy.
    dunning_retry_days: tuple[int, ...] = (1, 3, 5)
    idempotency_key_ttl_hours: int = Field(24, ge=1)
    pending_expiry_hours: int = Field(23, ge=1)      # an unpaid pending subscription expires (Stripe's incomplete)

    # Scheduler: one leader ticks every interval; the lock outlives a few missed renewals.
    scheduler_interval_seconds: float = Field(30.0, gt=0)
    scheduler_lock_ttl_seconds: float = Field(120.0, gt=0)
    scheduler_batch_size: int = Field(100, ge=1, le=10_000)
    # A charge whose gateway outcome is still unknown after this long is failed (the customer may pay again).
    pending_charge_timeout_minutes: int = Field(30, ge=1)

    # Stream policy defaults (DESIGN.md).
    stream_max_retries: int = 3
    stream_base_delay: float = 60.0
    stream_multiplier: float = 2.0
    stream_max_delay: float = 3600.0
    stream_jitter: float = 10.0
    stream_lease: float = 120.0
    stream_maxlen: int = 100_000
    stream_bookkeeping_retention_days: int = Field(30, ge=1)  # published outbox rows and inbox rows kept this long

    # Usage metering.
    usage_entitlement_cache_seconds: float = Field(5.0, ge=0)  # how long a user's plan limits are cached in-process
    usage_event_dedup_hours: int = Field(24, ge=1)            # how long an event_id is remembered for retries
    usage_retention_days: int = Field(400, ge=1)              # usage rows of periods ended longer ago are deleted
    usage_batch_size: int = Field(500, ge=1)                  # usage_sync actor: messages per PostgreSQL transaction
    usage_batch_wait_ms: int = Field(20, ge=0)                # ... or this long after the first one, whichever first

    # Outbound webhooks to user endpoints: their own retry policy (more, later retries than commands).
    webhook_max_retries: int = Field(6, ge=0, le=20)     # 7 attempts: ~0.5, 1, 2, 4, 8, 16 minutes apart
    webhook_base_delay: float = Field(30.0, ge=0)
    webhook_max_delay: float = Field(3600.0, ge=0)
    webhook_timeout_seconds: float = Field(10.0, gt=0, le=60)
    # Private/loopback webhook URLs (SSRF) are refused outside development unless this is set.
    webhook_allow_private_urls: bool = False

    # The operator page /ops (streams, dead letters, replay): header X-Operator-Token or ?token=.
    operator_token: SecretStr = SecretStr(DEV_OPERATOR_TOKEN)
    # A worker serves Prometheus /metrics on this port (None: off); `billing worker --metrics-port` overrides.
    worker_metrics_port: int | None = Field(None, ge=1, le=65535)

    # Where the mock gateway's signed payment webhooks go (POST /v1/webhooks/payment on 8001).
    gateway_webhook_url: str | None = None  # default: this deployment's subscriptions port (gateway_webhook_target)
    gateway_webhook_timeout_seconds: float = Field(10.0, gt=0)

    log_level: str = "INFO"
    log_json: bool = True

    @property
    def test_clock_enabled(self) -> bool:
        return self.environment == "development"

    @model_validator(mode="after")
    def _secrets_fit_environment(self) -> "Settings":
        if self.environment == "development":
            return self
        for name in ("jwt_secret", "webhook_secret", "operator_token"):
            value = getattr(self, name).get_secret_value()
            if value in DEV_SECRETS:
                raise ValueError(f"{name}: the development secret is refused in {self.environment}")
            if len(value) < 32:
                raise ValueError(f"{name}: must be at least 32 characters in {self.environment}")
        if self.database_url is None or self.redis_url is None:
            raise ValueError(f"DATABASE_URL and REDIS_URL are required in {self.environment}")
        return self

    @property
    def webhook_private_urls_allowed(self) -> bool:
        return self.environment == "development" or self.webhook_allow_private_urls

    @property
    def gateway_webhook_target(self) -> str:
        """Where the mock gateway's webhooks go: set explicitly, or this deployment's subscriptions API."""
        host = "127.0.0.1" if self.host in ("0.0.0.0", "::") else self.host
        return self.gateway_webhook_url or f"http://{host}:{self.subscription_port}/v1/webhooks/payment"

    def key(self, *parts: str) -> str:
        """A Redis key under this deployment's prefix (tests get their own prefix)."""
        return ":".join((self.redis_prefix, *parts))
