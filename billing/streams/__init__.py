"""Generic Redis Streams actor runtime: envelopes, publisher, consumer groups, retries, dead letters.

It knows nothing of billing; see consumer.py for the delivery guarantees.
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
