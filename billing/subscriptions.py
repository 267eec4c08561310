"""Subscription lifecycle: state machine, periods, proration, plan changes, dunning, trials.

Everything here is a decision: callers (consumers, HTTP handlers) load state,
ask this module what happens, then persist the answer. ``now`` is always a
parameter, so a test clock can drive the whole lifecycle.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum
from fractions import Fraction
from typing import Optional

from billing.money import CurrencyMismatch, Money
from billing.plans import BillingCycle, Period, Plan, add_cycle, period_containing
from billing.utc import require_utc


class SubscriptionStatus(StrEnum):
    TRIAL = "trial"
    PENDING = "pending"  # created on a paid plan, first payment not yet confirmed
    ACTIVE = "active"
    PAST_DUE = "past_due"  # a renewal failed; dunning retries are running
    CANCELED = "canceled"  # ended by the customer or by exhausted dunning
    EXPIRED = "expired"  # never became paid: trial lapsed or first payment failed


class SubscriptionEvent(StrEnum):
    START_TRIAL = "start_trial"
    CREATE_PAID = "create_paid"
    PAYMENT_SUCCEEDED = "payment_succeeded"  # an outstanding charge (first or dunning) got paid
    PAYMENT_FAILED = "payment_failed"  # a first charge was declined; the customer may retry (Stripe's "incomplete")
    PAYMENT_WINDOW_EXPIRED = "payment_window_expired"  # no first payment in time: give up
    END_TRIAL_FOR_PAYMENT = "end_trial_for_payment"  # the trial user chose a paid plan: pay now
    TRIAL_EXPIRED_CONVERTED = "trial_expired_converted"
    TRIAL_EXPIRED_NO_PAYMENT = "trial_expired_no_payment"
    TRIAL_PAYMENT_FAILED = "trial_payment_failed"  # conversion charge declined -> dunning
    RENEW_SUCCEEDED = "renew_succeeded"
    RENEW_FAILED = "renew_failed"
    DUNNING_RETRY_FAILED = "dunning_retry_failed"  # another retry is scheduled
    DUNNING_EXHAUSTED = "dunning_exhausted"
    CANCEL_NOW = "cancel_now"
    CANCEL_AT_PERIOD_END = "cancel_at_period_end"  # sets a flag; the status does not change
    RESUME = "resume"  # clears the cancel_at_period_end flag
    PERIOD_END_REACHED = "period_end_reached"  # period ended with cancel_at_period_end set
    CHANGE_PLAN = "change_plan"


S, E = SubscriptionStatus, SubscriptionEvent  # short aliases keep the table below readable

# The single source of truth: (current status, event) -> new status.
# ``None`` as current status means "no subscription yet" (creation events).
# Anything absent is illegal; CANCELED and EXPIRED are terminal.
TRANSITIONS: dict[tuple[Optional[SubscriptionStatus], SubscriptionEvent], SubscriptionStatus] = {
    (None, E.START_TRIAL): S.TRIAL,
    (None, E.CREATE_PAID): S.PENDING,
    (S.PENDING, E.PAYMENT_SUCCEEDED): S.ACTIVE,
    (S.PENDING, E.PAYMENT_FAILED): S.PENDING,
    (S.PENDING, E.PAYMENT_WINDOW_EXPIRED): S.EXPIRED,
    (S.PENDING, E.CANCEL_NOW): S.CANCELED,
    (S.TRIAL, E.TRIAL_EXPIRED_CONVERTED): S.ACTIVE,
    (S.TRIAL, E.TRIAL_EXPIRED_NO_PAYMENT): S.EXPIRED,
    (S.TRIAL, E.TRIAL_PAYMENT_FAILED): S.PAST_DUE,
    (S.TRIAL, E.CANCEL_NOW): S.CANCELED,
    (S.TRIAL, E.CANCEL_AT_PERIOD_END): S.TRIAL,
    (S.TRIAL, E.RESUME): S.TRIAL,
    (S.TRIAL, E.PERIOD_END_REACHED): S.CANCELED,
    (S.TRIAL, E.CHANGE_PLAN): S.TRIAL,
    (S.TRIAL, E.END_TRIAL_FOR_PAYMENT): S.PENDING,
    (S.ACTIVE, E.RENEW_SUCCEEDED): S.ACTIVE,
    (S.ACTIVE, E.RENEW_FAILED): S.PAST_DUE,
    (S.ACTIVE, E.CANCEL_NOW): S.CANCELED,
    (S.ACTIVE, E.CANCEL_AT_PERIOD_END): S.ACTIVE,
    (S.ACTIVE, E.RESUME): S.ACTIVE,
    (S.ACTIVE, E.PERIOD_END_REACHED): S.CANCELED,
    (S.ACTIVE, E.CHANGE_PLAN): S.ACTIVE,
    (S.PAST_DUE, E.PAYMENT_SUCCEEDED): S.ACTIVE,
    (S.PAST_DUE, E.DUNNING_RETRY_FAILED): S.PAST_DUE,
    (S.PAST_DUE, E.DUNNING_EXHAUSTED): S.CANCELED,
    (S.PAST_DUE, E.CANCEL_NOW): S.CANCELED,
}

TERMINAL_STATUSES = frozenset({S.CANCELED, S.EXPIRED})


class IllegalTransition(Exception):
    """The event is not allowed in the current status (the HTTP layer answers 409)."""

    def __init__(self, status: Optional[SubscriptionStatus], event: SubscriptionEvent) -> None:
        shown = status.value if status is not None else "none"
        super().__init__(f"event {event.value!r} is not allowed in status {shown!r}")
        self.status = status
        self.event = event


def transition(status: Optional[SubscriptionStatus], event: SubscriptionEvent) -> SubscriptionStatus:
    status = SubscriptionStatus(status) if status is not None else None
    event = SubscriptionEvent(event)
    try:
        return TRANSITIONS[(status, event)]
    except KeyError:
        raise IllegalTransition(status, event) from None


def allowed_events(status: Optional[SubscriptionStatus]) -> frozenset[SubscriptionEvent]:
    return frozenset(e for (s, e) in TRANSITIONS if s == status)


# -- creation and periods --------------------------------------------------------


def opening_event(plan: Plan) -> SubscriptionEvent:
    """A plan with trial days starts a trial; any other starts pending its first payment."""
    return E.START_TRIAL if plan.trial_days > 0 else E.CREATE_PAID


def start_trial(now: datetime, trial_days: int) -> Period:
    now = require_utc(now, "now")
    if isinstance(trial_days, bool) or not isinstance(trial_days, int) or trial_days <= 0:
        raise ValueError("trial_days must be a positive int")
    return Period(now, now + timedelta(days=trial_days))


def start_period(now: datetime, cycle: BillingCycle) -> Period:
    """First paid period; ``now`` becomes the billing anchor."""
    now = require_utc(now, "now")
    return Period(now, add_cycle(now, cycle))


def next_period(period_end: datetime, cycle: BillingCycle, *, anchor: datetime) -> Period:
    """The period after the one ending at ``period_end``.

    ``anchor`` (the subscription's billing anchor) is required: deriving the
    next end from ``period_end`` alone would drift after a short month.
    """
    period_end = require_utc(period_end, "period_end")
    period = period_containing(anchor, cycle, period_end)
    if period.start != period_end:
        raise ValueError("period_end is not a cycle boundary of anchor")
    return period


# -- proration -------------------------------------------------------------------


@dataclass(frozen=True)
class Proration:
    credit: Money  # unused part of what was paid for the old plan (>= 0)
    debit: Money  # remaining part of the new plan's price (>= 0)
    net: Money  # debit - credit; positive = the customer owes it now
    fraction: Fraction  # remaining / total period time, exact (a Decimal could not hold 1/3)


def _micros(delta: timedelta) -> int:
    return delta // timedelta(microseconds=1)  # exact integer, no float seconds


def prorate(
    old_price: Money, new_price: Money, period_start: datetime, period_end: datetime, at: datetime
) -> Proration:
    """Credit the unused old price and debit the new price for the time left in the period.

    The fraction is exact; credit and debit are each rounded once, and net is
    their difference, so the invoice lines always add up to net.
    """
    if old_price.currency != new_price.currency:
        raise CurrencyMismatch(old_price.currency, new_price.currency)
    if old_price.is_negative() or new_price.is_negative():
        raise ValueError("prices must not be negative")
    period_start = require_utc(period_start, "period_start")
    period_end = require_utc(period_end, "period_end")
    at = require_utc(at, "at")
    if not period_start < period_end:
        raise ValueError("period_start must be before period_end")
    if not period_start <= at <= period_end:
        raise ValueError("at must lie within the period")
    fraction = Fraction(_micros(period_end - at), _micros(period_end - period_start))
    credit = old_price.scaled(fraction)
    debit = new_price.scaled(fraction)
    return Proration(credit=credit, debit=debit, net=debit - credit, fraction=fraction)


# -- plan changes ----------------------------------------------------------------


class ChangeKind(StrEnum):
    UPGRADE = "upgrade"
    DOWNGRADE = "downgrade"
    LATERAL = "lateral"  # same yearly price, different plan (e.g. monthly <-> yearly at par)


class ChangeTiming(StrEnum):
    IMMEDIATE = "immediate"
    PERIOD_END = "period_end"


class SamePlan(ValueError):
    """Changing to the plan the subscription already has."""


@dataclass(frozen=True)
class PlanChange:
    from_plan_id: str
    to_plan_id: str
    kind: ChangeKind
    timing: ChangeTiming
    effective_at: datetime
    charge_now: Money  # zero unless an immediate upgrade of a paid period
    proration: Optional[Proration]  # set only when charge_now was prorated


def decide_plan_change(
    status: SubscriptionStatus, current: Plan, new: Plan, period: Period, at: datetime
) -> PlanChange:
    """Policy:

    - trial: switch now, charge nothing (the trial end charges the new plan);
    - active, same cycle, higher price: upgrade now, charge the prorated net;
    - anything else (downgrade, lateral, cycle change): at period end, no
      refund and no proration; the new plan starts with the next period.
    Cross-currency changes are refused.
    """
    transition(status, E.CHANGE_PLAN)  # raises IllegalTransition unless trial/active
    at = require_utc(at, "at")
    if new.id == current.id:
        raise SamePlan(f"subscription is already on plan {new.id!r}")
    if new.price.currency != current.price.currency:
        raise CurrencyMismatch(current.price.currency, new.price.currency)

    old_rate, new_rate = current.annualized_price(), new.annualized_price()
    kind = ChangeKind.UPGRADE if new_rate > old_rate else (
        ChangeKind.DOWNGRADE if new_rate < old_rate else ChangeKind.LATERAL
    )
    zero = Money.zero(current.price.currency)

    def change(timing: ChangeTiming, effective_at: datetime, charge: Money, proration=None) -> PlanChange:
        return PlanChange(current.id, new.id, kind, timing, effective_at, charge, proration)

    if status == S.TRIAL:
        return change(ChangeTiming.IMMEDIATE, at, zero)
    same_cycle = new.billing_cycle == current.billing_cycle
    if same_cycle and new.price > current.price:
        proration = prorate(current.price, new.price, period.start, period.end, at)
        return change(ChangeTiming.IMMEDIATE, at, proration.net, proration)
    return change(ChangeTiming.PERIOD_END, period.end, zero)


# -- period end, cancellation, trials ---------------------------------------------


class PeriodEndAction(StrEnum):
    CANCEL = "cancel"  # apply PERIOD_END_REACHED
    RENEW = "renew"  # charge the next period (RENEW_SUCCEEDED / RENEW_FAILED)
    END_TRIAL = "end_trial"  # see decide_trial_end


def on_period_end(status: SubscriptionStatus, *, cancel_at_period_end: bool) -> PeriodEndAction:
    """What the scheduler does when a trial or paid period ends."""
    if status not in (S.ACTIVE, S.TRIAL):
        raise IllegalTransition(status, E.PERIOD_END_REACHED)
    if cancel_at_period_end:
        return PeriodEndAction.CANCEL
    return PeriodEndAction.END_TRIAL if status == S.TRIAL else PeriodEndAction.RENEW


class TrialOutcome(StrEnum):
    CHARGE = "charge"  # then TRIAL_EXPIRED_CONVERTED or TRIAL_PAYMENT_FAILED
    EXPIRE = "expire"  # apply TRIAL_EXPIRED_NO_PAYMENT


def decide_trial_end(plan: Plan, *, has_payment_method: bool) -> TrialOutcome:
    """Convert only when there is something to charge and a card to charge it to."""
    if not plan.is_free and has_payment_method:
        return TrialOutcome.CHARGE
    return TrialOutcome.EXPIRE


# -- dunning ---------------------------------------------------------------------


@dataclass(frozen=True)
class DunningPolicy:
    """Days to wait after each failed attempt before the next retry.

    (1, 3, 5): retry 1 day after the failed renewal, 3 days after that retry
    fails, 5 days after the next; then give up (4 charges over 9 days).
    """

    retry_after_days: tuple[int, ...] = (1, 3, 5)

    def __post_init__(self) -> None:
        days = tuple(self.retry_after_days)
        if any(isinstance(d, bool) or not isinstance(d, int) or d <= 0 for d in days):
            raise ValueError("retry_after_days must be positive ints")
        object.__setattr__(self, "retry_after_days", days)


def next_dunning_step(
    failed_at: datetime, attempts_so_far: int, policy: DunningPolicy = DunningPolicy()
) -> Optional[datetime]:
    """When to retry after the failure at ``failed_at``; None means give up (cancel).

    ``attempts_so_far`` counts retries already made, not the original charge:
    0 right after the renewal failed.
    """
    failed_at = require_utc(failed_at, "failed_at")
    if isinstance(attempts_so_far, bool) or not isinstance(attempts_so_far, int) or attempts_so_far < 0:
        raise ValueError("attempts_so_far must be a non-negative int")
    if attempts_so_far >= len(policy.retry_after_days):
        return None
    return failed_at + timedelta(days=policy.retry_after_days[attempts_so_far])


def dunning_after_retry_failure(
    failed_at: datetime, attempts_so_far: int, policy: DunningPolicy = DunningPolicy()
) -> tuple[SubscriptionEvent, Optional[datetime]]:
    """After a retry failed (``attempts_so_far`` includes it): keep trying or cancel."""
    retry_at = next_dunning_step(failed_at, attempts_so_far, policy)
    if retry_at is None:
        return E.DUNNING_EXHAUSTED, None
    return E.DUNNING_RETRY_FAILED, retry_at
