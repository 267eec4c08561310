"""Prometheus metrics of the runtime, registered once in the default registry."""

from functools import lru_cache
from typing import NamedTuple

import redis.asyncio as aioredis
from prometheus_client import REGISTRY, Counter, Gauge, Histogram


def _metric(cls, name: str, documentation: str, labels: list[str], **kwargs):
    # Tests may import this module anew (reload, spawned workers); reuse what is registered.
    existing = REGISTRY._names_to_collectors.get(name)
    return existing if existing is not None else cls(name, documentation, labels, **kwargs)


PROCESSED = _metric(Counter, "streams_processed", "Messages handled successfully", ["stream", "action"])
FAILED = _metric(Counter, "streams_failed", "Handler runs that raised", ["stream", "action"])
RETRIED = _metric(Counter, "streams_retried", "Messages scheduled for a delayed retry", ["stream", "action"])
DEAD = _metric(Counter, "streams_dead", "Messages moved to dead letter", ["stream", "action"])
LATENCY = _metric(
    Histogram, "streams_handler_seconds", "Handler run time", ["stream", "action"],
    buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
)
PENDING = _metric(Gauge, "streams_pending", "Delivered but not yet acknowledged", ["stream", "group"])
LAG = _metric(Gauge, "streams_lag", "Entries not yet delivered to the group", ["stream", "group"])


class ActionMetrics(NamedTuple):
    processed: Counter
    failed: Counter
    retried: Counter
    dead: Counter
    latency: Histogram


@lru_cache(maxsize=1024)
def for_action(stream: str, action: str) -> ActionMetrics:
    """The labelled children, looked up once: `.labels()` costs as much as a noop handler."""
    return ActionMetrics(*(m.labels(stream, action) for m in (PROCESSED, FAILED, RETRIED, DEAD, LATENCY)))


async def observe_group(redis: aioredis.Redis, stream: str, group: str) -> None:
    """Refresh the pending and lag gauges from XINFO GROUPS."""
    for info in await redis.xinfo_groups(stream):
        if info["name"] != group:
            continue
        PENDING.labels(stream, group).set(info["pending"])
        lag = info.get("lag")  # absent before Redis 7, nil when Redis cannot tell
        if lag is not None:
            LAG.labels(stream, group).set(lag)
