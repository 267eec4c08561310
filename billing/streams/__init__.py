"""Generic Redis Streams actor runtime: envelopes, publisher, consumer groups, retries, dead letters.

It knows nothing of billing; see consumer.py for the delivery guarantees.

    router = Router()

    @router.register("charge", Charge)                 # Charge: a pydantic model
    async def charge(envelope: Envelope, payload: Charge) -> None:
        async with pool.acquire() as conn, conn.transaction():
            if not await claim_inbox(conn, "payments", envelope.id):
                return                                   # redelivered: effect already committed
            ...                                          # the effect, in the same transaction

    redis = Redis.from_url(url, decode_responses=True)
    await Publisher(redis, models=router.models).publish(stream, "charge", Charge(...))
    await Consumer(redis, stream, "payments", f"{host}-worker-0", router).run(stop_event)
"""

from .consumer import Consumer, DeliveryLimitExceeded, dead_key, delayed_key
from .envelope import Envelope
from .inbox import claim_inbox
from .outbox import OutboxRelay, enqueue
from .policy import RetryPolicy
from .publisher import Publisher
from .router import PermanentError, Router, UnknownAction

__all__ = [
    "Consumer",
    "DeliveryLimitExceeded",
    "Envelope",
    "OutboxRelay",
    "PermanentError",
    "Publisher",
    "RetryPolicy",
    "Router",
    "UnknownAction",
    "claim_inbox",
    "dead_key",
    "delayed_key",
    "enqueue",
]
