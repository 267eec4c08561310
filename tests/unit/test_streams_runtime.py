"""Unit tests of the streams runtime: pure logic, plus fakeredis for the command shapes.

Behaviour against Redis itself is proven in tests/integration/test_streams_redis.py.
"""

import json
import time
from datetime import UTC
from decimal import Decimal

import fakeredis
import pytest
from pydantic import BaseModel, ValidationError

from billing.streams import (
    Consumer,
    Envelope,
    PermanentError,
    Publisher,
    RetryPolicy,
    Router,
    UnknownAction,
    dead_key,
    delayed_key,
)
from billing.streams.cli import format_table

STREAM = "s:test"


class Charge(BaseModel):
    account: str
    amount: Decimal


# --- policy ------------------------------------------------------------------------------


def test_delay_grows_geometrically_and_is_capped():
    policy = RetryPolicy(base_delay=60, multiplier=2, max_delay=200, jitter=0)
    assert [policy.delay_for(n) for n in (1, 2, 3, 4)] == [60, 120, 200, 200]


def test_jitter_is_added_within_bounds():
    policy = RetryPolicy(base_delay=1, jitter=0.5)
    delays = [policy.delay_for(1) for _ in range(200)]
    assert all(1 <= d <= 1.5 for d in delays)
    assert len(set(delays)) > 1


def test_policy_defaults():
    policy = RetryPolicy()
    assert (policy.max_retries, policy.base_delay, policy.multiplier) == (3, 60.0, 2.0)
    assert (policy.max_delay, policy.jitter, policy.lease) == (3600.0, 10.0, 120.0)
    assert policy.max_attempts == 4


# --- envelope ------------------------------------------------------------------------------


def test_envelope_roundtrips_through_flat_string_fields():
    envelope = Envelope.build("charge", Charge(account="a1", amount=Decimal("9.99")), idempotency_key="k1")
    fields = envelope.to_fields()
    assert all(isinstance(v, str) for v in fields.values())
    assert json.loads(fields["payload"]) == {"account": "a1", "amount": "9.99"}
    assert fields["attempts"] == "0"
    assert "max_attempts" not in fields  # None: left to the consumer's policy
    back = Envelope.from_fields(fields)
    assert back == envelope
    assert back.created_at.tzinfo is not None and back.created_at.utcoffset() == UTC.utcoffset(None)


def test_envelope_defaults():
    envelope = Envelope.build("charge", {"x": 1}, max_attempts=2)
    assert len(envelope.id) == 32 and envelope.correlation_id == envelope.id
    assert Envelope.from_fields(envelope.to_fields()).max_attempts == 2
    assert Envelope.build("charge", {}, correlation_id="c1").correlation_id == "c1"


def test_build_validates_dict_payload_against_registered_model():
    models = {"charge": Charge}
    envelope = Envelope.build("charge", {"account": "a1", "amount": "1.50"}, models=models)
    assert envelope.payload == {"account": "a1", "amount": "1.50"}
    with pytest.raises(ValidationError):
        Envelope.build("charge", {"account": "a1"}, models=models)


# --- router ------------------------------------------------------------------------------


async def _noop(envelope, payload):
    pass


def test_router_resolves_and_validates():
    router = Router()
    router.register("charge", Charge, _noop)
    route, payload = router.resolve(Envelope.build("charge", {"account": "a", "amount": "2"}))
    assert route.handler is _noop and payload == Charge(account="a", amount=Decimal(2))
    with pytest.raises(ValidationError):
        router.resolve(Envelope.build("charge", {"amount": "x"}))
    with pytest.raises(UnknownAction):
        router.resolve(Envelope.build("refund", {}))


def test_router_decorator_and_duplicates():
    router = Router()

    @router.register("charge", Charge)
    async def handle(envelope, payload):
        pass

    assert router.routes["charge"].handler is handle
    assert router.models == {"charge": Charge}
    with pytest.raises(ValueError):
        router.register("charge", Charge, _noop)


# --- publisher and consumer command shapes (fakeredis) ------------------------------------


@pytest.fixture
def redis():
    return fakeredis.FakeAsyncRedis(decode_responses=True)


async def test_publish_writes_readable_fields(redis):
    publisher = Publisher(redis, maxlen=10, models={"charge": Charge})
    envelope = await publisher.publish(STREAM, "charge", {"account": "a", "amount": "3"}, correlation_id="c")
    [(_, fields)] = await redis.xrange(STREAM)
    assert fields == envelope.to_fields()
    assert fields["action"] == "charge" and fields["correlation_id"] == "c"
    with pytest.raises(ValidationError):
        await publisher.publish(STREAM, "charge", {"account": "a"})


def test_consumer_requires_decoded_responses():
    with pytest.raises(ValueError):
        Consumer(fakeredis.FakeAsyncRedis(), STREAM, "g", "c", Router())


async def _deliver(redis, consumer):
    """Deliver the stream's next entry to `consumer` and process it like the read loop does."""
    await consumer.ensure_group()
    [[_, [(msg_id, fields)]]] = await redis.xreadgroup(consumer.group, consumer.name, {STREAM: ">"}, count=1)
    await consumer._process(msg_id, fields, None)
    await consumer._flush_acks()
    return msg_id


def _consumer(redis, handler, policy=RetryPolicy(max_retries=2, base_delay=10, jitter=0)):
    router = Router()
    router.register("charge", Charge, handler)
    return Consumer(redis, STREAM, "g", "c1", router, policy=policy)


async def test_success_is_acked(redis):
    calls = []

    async def handler(envelope, payload):
        calls.append(payload)

    consumer = _consumer(redis, handler)
    await Publisher(redis).publish(STREAM, "charge", Charge(account="a", amount=1))
    await _deliver(redis, consumer)
    assert calls == [Charge(account="a", amount=1)]
    assert (await redis.xpending(STREAM, "g"))["pending"] == 0


async def test_failure_schedules_delayed_retry_and_acks(redis):
    async def handler(envelope, payload):
        raise RuntimeError("card declined")

    consumer = _consumer(redis, handler)
    sent = await Publisher(redis).publish(STREAM, "charge", Charge(account="a", amount=1))
    before = time.time()
    await _deliver(redis, consumer)
    [(member, due)] = await redis.zrange(delayed_key(STREAM), 0, -1, withscores=True)
    flat = json.loads(member)
    retry = Envelope.from_fields(dict(zip(flat[::2], flat[1::2])))
    assert retry.id == sent.id and retry.attempts == 1
    assert retry.last_error == "RuntimeError: card declined"
    assert before + 10 <= due <= time.time() + 10
    assert (await redis.xpending(STREAM, "g"))["pending"] == 0
    assert await redis.xlen(dead_key(STREAM)) == 0


async def test_last_attempt_goes_to_dead_letter(redis):
    async def handler(envelope, payload):
        raise RuntimeError("still declined")

    consumer = _consumer(redis, handler)  # max_retries=2: three attempts
    envelope = Envelope.build("charge", Charge(account="a", amount=1)).model_copy(update={"attempts": 2})
    await redis.xadd(STREAM, envelope.to_fields())
    msg_id = await _deliver(redis, consumer)
    [(_, dead)] = await redis.xrange(dead_key(STREAM))
    assert dead["error"] == "still declined" and dead["error_type"] == "RuntimeError"
    assert dead["attempts"] == "3" and dead["source_id"] == msg_id and dead["id"] == envelope.id
    assert await redis.zcard(delayed_key(STREAM)) == 0
    assert (await redis.xpending(STREAM, "g"))["pending"] == 0


async def test_envelope_max_attempts_overrides_policy(redis):
    async def handler(envelope, payload):
        raise RuntimeError("no")

    consumer = _consumer(redis, handler)
    await Publisher(redis).publish(STREAM, "charge", Charge(account="a", amount=1), max_attempts=1)
    await _deliver(redis, consumer)
    assert await redis.xlen(dead_key(STREAM)) == 1


@pytest.mark.parametrize(
    "action, payload, error_type",
    [
        ("charge", {"account": "a", "amount": "not a number"}, "ValidationError"),
        ("refund", {}, "UnknownAction"),
        ("charge", {"account": "a", "amount": "1"}, "PermanentError"),
    ],
)
async def test_permanent_failures_dead_letter_at_once(redis, action, payload, error_type):
    calls = []

    async def handler(envelope, payload):
        calls.append(payload)
        raise PermanentError("account closed")

    consumer = _consumer(redis, handler)
    await Publisher(redis).publish(STREAM, action, payload)
    await _deliver(redis, consumer)
    [(_, dead)] = await redis.xrange(dead_key(STREAM))
    assert dead["error_type"] == error_type and dead["action"] == action
    assert len(calls) == (1 if error_type == "PermanentError" else 0)
    assert await redis.zcard(delayed_key(STREAM)) == 0


def test_format_table():
    text = format_table([{"a": 1, "b": None}, {"a": "long value", "b": "x"}], ["a", "b"])
    assert text.splitlines() == ["A           B", "1           -", "long value  x"]


async def test_failure_during_an_outage_does_not_use_up_an_attempt(redis):
    async def handler(envelope, payload):
        raise ConnectionRefusedError("database unreachable")

    async def database_down():
        raise OSError("connection refused")

    router = Router()
    router.register("charge", Charge, handler)
    consumer = Consumer(redis, STREAM, "g", "c1", router, policy=RetryPolicy(max_retries=2, base_delay=10, jitter=0),
                        dependencies_up=database_down)
    last_try = Envelope.build("charge", Charge(account="a", amount=1)).model_copy(update={"attempts": 2})
    await redis.xadd(STREAM, last_try.to_fields())
    await _deliver(redis, consumer)
    # Not dead-lettered although it was the last attempt: retried later, attempts unchanged.
    assert await redis.xlen(dead_key(STREAM)) == 0
    [member] = await redis.zrange(delayed_key(STREAM), 0, -1)
    flat = json.loads(member)
    retry = Envelope.from_fields(dict(zip(flat[::2], flat[1::2])))
    assert retry.attempts == 2 and retry.last_error == "ConnectionRefusedError: database unreachable"


def test_the_apps_migrations_carry_the_runtimes_ddl_unchanged():
    """billing/streams ships its own DDL (it is generic); the app's numbered migrations repeat it."""
    import re

    from billing.sql import migration_files
    from billing.streams.sql import DDL

    def statements(sql: str) -> set[str]:
        without_comments = re.sub(r"--[^\n]*", "", sql)
        return {" ".join(s.split()) for s in re.split(r";\s*\n", without_comments) if s.strip()}

    migrations = set().union(*(statements(sql) for _, _, sql in migration_files()))
    assert statements(DDL) <= migrations
