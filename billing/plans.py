"""Plans and the billing calendar.

Calendar rule (same as Stripe's billing_cycle_anchor): period boundaries are
always computed from the original anchor, ``anchor + n cycles``, never by
chaining "previous end + 1 month". Chaining drifts: Jan 31 -> Feb 28 -> Mar 28.
Anchoring keeps the day: Jan 31 -> Feb 28 (29 in leap years) -> Mar 31.
"""

from __future__ import annotations

import calendar
import re
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from decimal import Decimal
from enum import StrEnum
from types import MappingProxyType
from typing import Mapping, NamedTuple, Optional

from billing.money import Money
from billing.utc import require_utc

FeatureLimit = Optional[int]  # None = unlimited

_FEATURE_NAME = re.compile(r"^[a-z][a-z0-9_]{0,63}$")
_PLAN_ID = re.compile(r"^[a-z0-9][a-z0-9-]{0,63}$")


class BillingCycle(StrEnum):
    DAILY = "daily"  # short cycles make time-driven tests and demos quick
    WEEKLY = "weekly"
    MONTHLY = "monthly"
    YEARLY = "yearly"


_FIXED_LENGTH = {BillingCycle.DAILY: timedelta(days=1), BillingCycle.WEEKLY: timedelta(weeks=1)}
_MONTHS = {BillingCycle.MONTHLY: 1, BillingCycle.YEARLY: 12}
# Approximate cycles per year; only used to *compare* prices across cycles
# (is this change an upgrade?), never to compute an amount.
CYCLES_PER_YEAR = {
    BillingCycle.DAILY: 365,
    BillingCycle.WEEKLY: 52,
    BillingCycle.MONTHLY: 12,
    BillingCycle.YEARLY: 1,
}


class Period(NamedTuple):
    """Half-open interval [start, end): ``end`` belongs to the next period."""

    start: datetime
    end: datetime

    def contains(self, at: datetime) -> bool:
        return self.start <= require_utc(at, "at") < self.end

    @property
    def duration(self) -> timedelta:
        return self.end - self.start


def add_cycle(start: datetime, cycle: BillingCycle, n: int = 1) -> datetime:
    """``start`` moved by ``n`` cycles (n may be 0 or negative), keeping the anchor day.

    The day of month is clamped to the target month's length, so always call
    this with the original anchor and a growing ``n``.
    """
    start = require_utc(start, "start")
    cycle = BillingCycle(cycle)
    if isinstance(n, bool) or not isinstance(n, int):
        raise TypeError("n must be an int")
    if cycle in _FIXED_LENGTH:
        return start + n * _FIXED_LENGTH[cycle]  # UTC has no DST, days are 24 h
    months = start.month - 1 + n * _MONTHS[cycle]
    year, month = start.year + months // 12, months % 12 + 1
    day = min(start.day, calendar.monthrange(year, month)[1])
    return start.replace(year=year, month=month, day=day)


def period_containing(anchor: datetime, cycle: BillingCycle, at: datetime) -> Period:
    """The billing period (anchored on ``anchor``) that contains ``at``."""
    anchor = require_utc(anchor, "anchor")
    at = require_utc(at, "at")
    cycle = BillingCycle(cycle)
    if cycle in _FIXED_LENGTH:
        k = (at - anchor) // _FIXED_LENGTH[cycle]
    else:
        k = ((at.year - anchor.year) * 12 + at.month - anchor.month) // _MONTHS[cycle]
        # The month-count estimate can be one off either way (day/time of month).
        while add_cycle(anchor, cycle, k) > at:
            k -= 1
        while add_cycle(anchor, cycle, k + 1) <= at:
            k += 1
    return Period(add_cycle(anchor, cycle, k), add_cycle(anchor, cycle, k + 1))


def validate_feature_name(name: str) -> str:
    """Feature names are lowercase slugs (``api_calls``), used as keys in limits and counters."""
    if not isinstance(name, str) or not _FEATURE_NAME.match(name):
        raise ValueError(f"feature name must be a lowercase slug like 'api_calls', got {name!r}")
    return name


def _validate_limit(feature: str, limit: FeatureLimit) -> FeatureLimit:
    if limit is None:
        return None
    if isinstance(limit, bool) or not isinstance(limit, int) or limit < 0:
        raise ValueError(f"limit for {feature!r} must be a non-negative int or None, got {limit!r}")
    return limit


@dataclass(frozen=True)
class Plan:
    id: str  # stable slug: seeding the demo plans twice must upsert, not duplicate
    name: str
    price: Money
    billing_cycle: BillingCycle
    trial_days: int = 0
    features: Mapping[str, FeatureLimit] = field(default_factory=dict, hash=False)

    def __post_init__(self) -> None:
        if not isinstance(self.id, str) or not _PLAN_ID.match(self.id):
            raise ValueError(f"plan id must be a lowercase slug, got {self.id!r}")
        if not isinstance(self.name, str) or not self.name.strip():
            raise ValueError("plan name must not be empty")
        if not isinstance(self.price, Money) or self.price.is_negative():
            raise ValueError("plan price must be a non-negative Money")
        object.__setattr__(self, "billing_cycle", BillingCycle(self.billing_cycle))
        if isinstance(self.trial_days, bool) or not isinstance(self.trial_days, int) or self.trial_days < 0:
            raise ValueError("trial_days must be a non-negative int")
        checked = {validate_feature_name(k): _validate_limit(k, v) for k, v in self.features.items()}
        object.__setattr__(self, "features", MappingProxyType(checked))  # plans are shared: freeze

    @property
    def is_free(self) -> bool:
        return self.price.is_zero()

    def limit(self, feature: str) -> FeatureLimit:
        """The plan's limit for ``feature``; a feature the plan does not list is not included (0)."""
        return self.features.get(validate_feature_name(feature), 0)

    def annualized_price(self) -> Decimal:
        """Price per year, to rank plans with different cycles (not for charging)."""
        return self.price.amount * CYCLES_PER_YEAR[self.billing_cycle]


def _usd(amount: str) -> Money:
    return Money.of(amount, "USD")


DEMO_PLANS: tuple[Plan, ...] = (
    Plan(
        id="trial",
        name="Trial",
        price=_usd("0.00"),
        billing_cycle=BillingCycle.MONTHLY,
        trial_days=14,
        features={"api_calls": 100, "storage_gb": 1, "projects": 1, "seats": 1},
    ),
    Plan(
        id="basic",
        name="Basic",
        price=_usd("9.99"),
        billing_cycle=BillingCycle.MONTHLY,
        features={"api_calls": 1_000, "storage_gb": 10, "projects": 3, "seats": 3},
    ),
    Plan(
        id="pro",
        name="Pro",
        price=_usd("29.99"),
        billing_cycle=BillingCycle.MONTHLY,
        features={"api_calls": 100_000, "storage_gb": 100, "projects": None, "seats": 10},
    ),
    Plan(
        id="pro-yearly",
        name="Pro Yearly",
        price=_usd("299.90"),  # two months free compared to Pro monthly
        billing_cycle=BillingCycle.YEARLY,
        features={"api_calls": 100_000, "storage_gb": 100, "projects": None, "seats": 10},
    ),
)

DEMO_PLANS_BY_ID: Mapping[str, Plan] = MappingProxyType({p.id: p for p in DEMO_PLANS})
