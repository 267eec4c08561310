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

__all__ = ["UsageDecision", "check_usage", "subscription_usage_period", "usage_period", "validate_feature_name"]


def usage_period(anchor: datetime, cycle: BillingCycle, now: datetime) -> Period:
    """(period_start, reset_at) of the usage window containing ``now``, on the billing anchor."""
    return period_containing(anchor, cycle, now)


def subscription_usage_period(period_start: datetime, period_end: Optional[datetime], cycle: BillingCycle,
                              now: datetime) -> Period:
    """The usage window of a subscription whose row says its current period is [start, end).

    Inside that period it is the window (a trial's window is the trial itself). If the clock has
    already left it (the renewal job has not moved the row yet), the windows keep following the
    same calendar: anchored on ``end`` once past it, on ``start`` otherwise.
    """
    if period_end is not None and period_start <= now < period_end:
        return Period(period_start, period_end)
    anchor = period_end if period_end is not None and now >= period_end else period_start
    return usage_period(anchor, cycle, now)


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
