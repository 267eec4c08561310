"""Property-based API testing: schemathesis generates requests from each service's own
/openapi.json and runs them against the live processes as a registered user.

Checks: no 5xx, responses conform to the documented schema, status codes are documented.
"""
from __future__ import annotations

import asyncio
import time
from collections import Counter
import uuid

import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import response_schema_conformance, status_code_conformance

from tests.api import PASSWORD
from tests.harness import Stack

MAX_EXAMPLES = 25
CHECKS = [not_a_server_error, response_schema_conformance, status_code_conformance]
# Hard to reach with random data and covered by their own tests: the metrics text, the docs page.
SKIP_PATHS = ("/metrics", "/docs")


@pytest.fixture
def live_stack():
    stack = Stack()
    asyncio.run(stack.__aenter__())
    try:
        asyncio.run(stack.start_all())
        yield stack
    finally:
        asyncio.run(stack.__aexit__(None, None, None))


def _token(stack: Stack) -> str:
    email = f"fuzz-{uuid.uuid4().hex[:10]}@example.com"
    resp = requests.post(f"{stack.url('subscriptions')}/v1/auth/register", json={"email": email, "password": PASSWORD},
                         timeout=10)
    assert resp.status_code == 201, resp.text
    return resp.json()["data"]["access_token"]


@pytest.mark.parametrize("service", ["subscriptions", "payments"])
def test_openapi_fuzz_finds_no_server_error_or_schema_mismatch(live_stack, service):
    base = live_stack.url(service)
    headers = {"Authorization": f"Bearer {_token(live_stack)}"}
    schema = schemathesis.openapi.from_url(f"{base}/openapi.json")
    session = requests.Session()
    ran, cases, failures, statuses = 0, 0, [], Counter()
    started = time.monotonic()
    # The test clock moves time for the whole stack (and so expires the token): fuzz it last.
    operations = sorted((r.ok() for r in schema.get_all_operations()), key=lambda op: op.path.startswith("/v1/test-clock"))
    for operation in operations:
        if operation.path.startswith(SKIP_PATHS):
            continue
        ran += 1

        @settings(max_examples=MAX_EXAMPLES, deadline=None, database=None, derandomize=True,
                  phases=[Phase.explicit, Phase.generate], suppress_health_check=list(HealthCheck))
        @given(case=operation.as_strategy())
        def run(case):
            nonlocal cases
            cases += 1
            # A fresh key per case: idempotent POSTs must not answer 409 for reused keys.
            case.headers = {**(case.headers or {}), **headers, "Idempotency-Key": uuid.uuid4().hex}
            response = case.call_and_validate(base_url=base, session=session, checks=CHECKS)
            statuses[response.status_code] += 1

        try:
            run()
        except Exception as exc:  # collect every operation's failure, report them together
            failures.append(f"{operation.method.upper()} {operation.path}: {str(exc)[:1500]}")
    print(f"\n{service}: {ran} operations, {cases} cases in {time.monotonic() - started:.1f}s, {len(failures)} failing;"
          f" statuses {dict(sorted(statuses.items()))}")
    assert statuses[401] < cases / 2, "mostly unauthenticated: the token did not reach the requests"
    assert ran > 3
    assert not failures, "\n\n".join(failures)
    assert "unhandled error" not in live_stack.all_logs()
