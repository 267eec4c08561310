import pytest
from pydantic import ValidationError

from billing.config import DEV_JWT_SECRET, Settings

URLS = dict(database_url="postgresql://db/x", redis_url="redis://r")
STRONG = "x" * 40


def test_development_accepts_the_shipped_secrets():
    s = Settings(_env_file=None)
    assert s.environment == "development"
    assert s.jwt_secret.get_secret_value() == DEV_JWT_SECRET
    assert s.test_clock_enabled


@pytest.mark.parametrize("environment", ["staging", "production"])
def test_non_development_refuses_development_secrets(environment):
    with pytest.raises(ValidationError, match="development secret"):
        Settings(_env_file=None, environment=environment, **URLS)


@pytest.mark.parametrize("environment", ["staging", "production"])
def test_non_development_accepts_real_secrets_and_disables_test_clock(environment):
    s = Settings(_env_file=None, environment=environment, jwt_secret=STRONG, webhook_secret=STRONG + "y",
                 operator_token=STRONG + "z", **URLS)
    assert not s.test_clock_enabled


def test_production_refuses_the_development_operator_token():
    with pytest.raises(ValidationError, match="operator_token: the development secret"):
        Settings(_env_file=None, environment="production", jwt_secret=STRONG, webhook_secret=STRONG, **URLS)


def test_production_refuses_short_secrets_and_missing_urls():
    with pytest.raises(ValidationError, match="at least 32"):
        Settings(_env_file=None, environment="production", jwt_secret="short", webhook_secret=STRONG,
                 operator_token=STRONG, **URLS)
    with pytest.raises(ValidationError, match="required"):
        Settings(_env_file=None, environment="production", jwt_secret=STRONG, webhook_secret=STRONG, operator_token=STRONG)


def test_environment_variables_are_read(monkeypatch):
    monkeypatch.setenv("DATABASE_URL", "postgresql://elsewhere/db")
    monkeypatch.setenv("BILLING_ENV", "development")
    monkeypatch.setenv("BILLING_JWT_EXPIRY_MINUTES", "5")
    s = Settings(_env_file=None)
    assert s.database_url == "postgresql://elsewhere/db"
    assert s.jwt_expiry_minutes == 5


def test_invalid_values_are_refused():
    with pytest.raises(ValidationError):
        Settings(_env_file=None, environment="moon")
    with pytest.raises(ValidationError):
        Settings(_env_file=None, database_schema="bad;drop")


def test_gateway_webhooks_follow_the_subscriptions_port_unless_set():
    assert Settings(_env_file=None, subscription_port=9001).gateway_webhook_target == \
        "http://127.0.0.1:9001/v1/webhooks/payment"
    assert Settings(_env_file=None, host="0.0.0.0").gateway_webhook_target.startswith("http://127.0.0.1:8001/")
    assert Settings(_env_file=None, gateway_webhook_url="http://hooks.internal/x").gateway_webhook_target == \
        "http://hooks.internal/x"
