import json
from datetime import UTC, datetime
from uuid import uuid4

import pytest

from billing.webhooks import UnsafeUrl, check_url, event_body, is_public_address, matches, new_secret


@pytest.mark.parametrize("url", ["ftp://example.com/x", "javascript:alert(1)", "https://user:pw@example.com/",
                                 "https://user@example.com/", "http:///nohost", "https://example.com:99999/",
                                 "https://example.com:0/"])
def test_refused_everywhere(url):
    with pytest.raises(UnsafeUrl):
        check_url(url, allow_private=True)


@pytest.mark.parametrize("url", ["http://127.0.0.1:8080/hook", "http://localhost/hook", "http://10.1.2.3/",
                                 "http://192.168.0.1/", "http://169.254.169.254/latest/meta-data",
                                 "http://[::1]/", "http://[::ffff:127.0.0.1]/", "http://0.0.0.0/",
                                 "http://metadata.google.internal/", "http://foo.localhost/"])
def test_private_targets_refused_in_production_allowed_in_development(url):
    with pytest.raises(UnsafeUrl):
        check_url(url, allow_private=False)
    if "internal" not in url and "localhost" not in url:
        assert check_url(url, allow_private=True) == url


def test_public_urls_pass():
    assert check_url("https://hooks.example.com/billing?x=1", allow_private=False)
    assert check_url("http://93.184.216.34/", allow_private=False)
    assert is_public_address("8.8.8.8") and not is_public_address("172.16.0.1")


def test_matching_and_secret():
    assert matches([], "payment.failed") and matches(["payment.failed"], "payment.failed")
    assert not matches(["payment.succeeded"], "payment.failed")
    assert new_secret().startswith("whsec_") and new_secret() != new_secret()


def test_event_body_is_stable_json():
    event_id = uuid4()
    body = event_body(event_id, "subscription.created", datetime(2026, 1, 2, tzinfo=UTC), {"b": 1, "a": "2"})
    assert json.loads(body) == {"id": str(event_id), "type": "subscription.created",
                                "created": "2026-01-02T00:00:00Z", "data": {"a": "2", "b": 1}}
    assert b" " not in body
