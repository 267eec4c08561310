"""The stream contract: which command families exist and the Redis key of each.

Hash tags ({sub}, {pay}) keep each family's stream, delayed set and dead letters in one
Redis Cluster slot. Payload models of the commands live beside the consumers that run them.
"""
from __future__ import annotations

SUBSCRIPTION_STREAMS = ("payment_initiation", "trial_payment", "plan_change", "usage_sync")
PAYMENT_STREAMS = ("subscription_update", "refund_initiation")


def stream_key(prefix: str, family: str) -> str:
    if family in SUBSCRIPTION_STREAMS:
        return f"{prefix}:{{sub}}:{family}"
    if family in PAYMENT_STREAMS:
        return f"{prefix}:{{pay}}:{family}"
    raise KeyError(f"unknown stream family {family!r}")


def all_stream_keys(prefix: str) -> list[str]:
    return [stream_key(prefix, f) for f in (*SUBSCRIPTION_STREAMS, *PAYMENT_STREAMS)]
