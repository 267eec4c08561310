"""Usage metering against plan limits.

Counters reset at each billing-period boundary, so a counter's key is
(subscription, feature, period_start) and ``reset_at`` tells clients when
their allowance comes back.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Optional

from billing.plans import BillingCycle, FeatureLimit, Period, period_containing, validate_feature_name

__all__ = ["UsageDecision", "check_usage", "usage_period", "validate_feature_name"]


def usage_period(anchor: datetime, cycle: BillingCycle, now: datetime) -> Period:
    """(period_start, reset_at) of the usage window containing ``now``, on the billing anchor."""
    return period_containing(anchor, cycle, now)


@dataclass(frozen=True)
class UsageDecision:
    allowed: bool
    current_usage: int  # after this request if allowed, unchanged if refused
    limit: FeatureLimit  # None = unlimited
    remaining: Optional[int]  # None = unlimited; 0 when over (e.g. after a downgrade)


def _non_negative_int(value: int, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"{name} must be a non-negative int, got {value!r}")
    return value


def check_usage(current: int, delta: int, limit: FeatureLimit) -> UsageDecision:
    """Allow ``delta`` more units if it stays within ``limit``; all or nothing (no partial grant)."""
    _non_negative_int(current, "current")
    if _non_negative_int(delta, "delta") == 0:
        raise ValueError("delta must be positive")
    if limit is None:
        return UsageDecision(True, current + delta, None, None)
    _non_negative_int(limit, "limit")
    allowed = current + delta <= limit
    usage = current + delta if allowed else current
    return UsageDecision(allowed, usage, limit, max(limit - usage, 0))
