from datetime import datetime, timedelta, timezone
from fractions import Fraction
from itertools import product

import pytest
from hypothesis import given
from hypothesis import strategies as st

from billing.money import CurrencyMismatch, Money
from billing.plans import DEMO_PLANS_BY_ID, BillingCycle, Period, Plan
from billing.subscriptions import (
    TERMINAL_STATUSES,
    TRANSITIONS,
    ChangeKind,
    ChangeTiming,
    DunningPolicy,
    IllegalTransition,
    PeriodEndAction,
    SamePlan,
    SubscriptionEvent as E,
    SubscriptionStatus as S,
    TrialOutcome,
    allowed_events,
    decide_plan_change,
    decide_trial_end,
    dunning_after_retry_failure,
    next_dunning_step,
    next_period,
    on_period_end,
    opening_event,
    prorate,
    start_period,
    start_trial,
    transition,
)
from billing.utc import NaiveDatetime

UTC = timezone.utc
TRIAL, BASIC, PRO, PRO_YEARLY = (DEMO_PLANS_BY_ID[i] for i in ("trial", "basic", "pro", "pro-yearly"))


def at(*args) -> datetime:
    return datetime(*args, tzinfo=UTC)


def usd(x: str) -> Money:
    return Money.of(x, "USD")


# -- the transition table -------------------------------------------------------------

# Written out independently of the implementation: the specification.
LEGAL = {
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
ALL_PAIRS = list(product([None, *S], E))


def test_table_matches_the_specification():
    assert TRANSITIONS == LEGAL


@pytest.mark.parametrize("status, event", list(LEGAL))
def test_every_legal_transition(status, event):
    assert transition(status, event) == LEGAL[(status, event)]


@pytest.mark.parametrize("status, event", [pair for pair in ALL_PAIRS if pair not in LEGAL])
def test_every_other_pair_is_refused(status, event):
    with pytest.raises(IllegalTransition) as info:
        transition(status, event)
    assert (info.value.status, info.value.event) == (status, event)
    assert event.value in str(info.value)


def test_terminal_statuses_allow_nothing():
    assert TERMINAL_STATUSES == {S.CANCELED, S.EXPIRED}
    for status in TERMINAL_STATUSES:
        assert allowed_events(status) == frozenset()


def test_allowed_events():
    assert allowed_events(None) == {E.START_TRIAL, E.CREATE_PAID}
    assert allowed_events(S.PAST_DUE) == {E.PAYMENT_SUCCEEDED, E.DUNNING_RETRY_FAILED, E.DUNNING_EXHAUSTED, E.CANCEL_NOW}


def test_string_values_are_accepted_and_unknown_ones_refused():
    assert transition("active", "renew_failed") == S.PAST_DUE  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        transition("frozen", E.CANCEL_NOW)  # type: ignore[arg-type]


def test_every_status_is_reachable_from_creation():
    reached, frontier = set(), {None}
    while frontier:
        frontier = {LEGAL[(s, e)] for s in frontier for e in E if (s, e) in LEGAL} - reached
        reached |= frontier
    assert reached == set(S)


def test_lifecycle_with_dunning_to_cancellation():
    status = None
    for event in [E.CREATE_PAID, E.PAYMENT_SUCCEEDED, E.RENEW_SUCCEEDED, E.RENEW_FAILED,
                  E.DUNNING_RETRY_FAILED, E.DUNNING_RETRY_FAILED, E.DUNNING_EXHAUSTED]:
        status = transition(status, event)
    assert status == S.CANCELED


# -- creation and periods -----------------------------------------------------------------


def test_opening_event_depends_on_trial_days():
    assert opening_event(TRIAL) == E.START_TRIAL
    assert opening_event(BASIC) == E.CREATE_PAID


def test_start_trial_and_period():
    assert start_trial(at(2024, 1, 1, 9), 14) == Period(at(2024, 1, 1, 9), at(2024, 1, 15, 9))
    assert start_period(at(2024, 1, 31), BillingCycle.MONTHLY) == Period(at(2024, 1, 31), at(2024, 2, 29))
    assert start_period(at(2024, 2, 29), BillingCycle.YEARLY) == Period(at(2024, 2, 29), at(2025, 2, 28))
    for bad in (0, -1, True, 1.5):
        with pytest.raises(ValueError):
            start_trial(at(2024, 1, 1), bad)
    with pytest.raises(NaiveDatetime):
        start_period(datetime(2024, 1, 1), BillingCycle.MONTHLY)


def test_renewals_follow_the_anchor_not_the_previous_end():
    anchor = at(2024, 1, 31)
    first = start_period(anchor, BillingCycle.MONTHLY)
    second = next_period(first.end, BillingCycle.MONTHLY, anchor=anchor)
    third = next_period(second.end, BillingCycle.MONTHLY, anchor=anchor)
    assert [first, second, third] == [
        Period(at(2024, 1, 31), at(2024, 2, 29)),
        Period(at(2024, 2, 29), at(2024, 3, 31)),
        Period(at(2024, 3, 31), at(2024, 4, 30)),
    ]


def test_next_period_refuses_a_non_boundary():
    with pytest.raises(ValueError):
        next_period(at(2024, 2, 15), BillingCycle.MONTHLY, anchor=at(2024, 1, 31))


# -- proration --------------------------------------------------------------------------------


def test_upgrade_halfway_through_a_30_day_month_nets_exactly_ten():
    p = prorate(usd("9.99"), usd("29.99"), at(2025, 4, 1), at(2025, 5, 1), at(2025, 4, 16))
    assert p.fraction == Fraction(1, 2)
    assert (p.credit, p.debit, p.net) == (usd("5.00"), usd("15.00"), usd("10.00"))  # 4.995 and 14.995 round half-even


def test_leap_february_has_29_days():
    # 15 of 29 days left: 9.99*15/29 = 5.1672..., 29.99*15/29 = 15.5120...
    p = prorate(usd("9.99"), usd("29.99"), at(2024, 2, 1), at(2024, 3, 1), at(2024, 2, 15))
    assert p.fraction == Fraction(15, 29)
    assert (p.credit, p.debit, p.net) == (usd("5.17"), usd("15.51"), usd("10.34"))


def test_common_february_has_28_days():
    p = prorate(usd("9.99"), usd("29.99"), at(2025, 2, 1), at(2025, 3, 1), at(2025, 2, 15))
    assert p.fraction == Fraction(1, 2)
    assert p.net == usd("10.00")


def test_yearly_in_a_leap_year():
    # 184 of 366 days left: 299.90*92/183 = 150.769..., 599.90*92/183 = 301.589...
    p = prorate(usd("299.90"), usd("599.90"), at(2024, 1, 1), at(2025, 1, 1), at(2024, 7, 1))
    assert p.fraction == Fraction(184, 366)
    assert (p.credit, p.debit, p.net) == (usd("150.77"), usd("301.59"), usd("150.82"))


def test_downgrade_proration_is_negative():
    p = prorate(usd("29.99"), usd("9.99"), at(2025, 1, 1), at(2025, 1, 31), at(2025, 1, 21))
    assert p.fraction == Fraction(1, 3)
    assert (p.credit, p.debit, p.net) == (usd("10.00"), usd("3.33"), Money.of("-6.67", "USD", allow_negative=True))


def test_proration_is_by_the_second():
    start, end = at(2025, 4, 1), at(2025, 5, 1)
    p = prorate(usd("9.99"), usd("29.99"), start, end, end - timedelta(seconds=1))
    assert p.fraction == Fraction(1, 30 * 86400)
    assert p.net == usd("0.00")
    p = prorate(usd("100000"), usd("200000"), start, end, end - timedelta(hours=1))
    assert p.fraction == Fraction(1, 720)
    assert (p.credit, p.debit) == (usd("138.89"), usd("277.78"))


def test_proration_at_the_edges():
    start, end = at(2025, 4, 1), at(2025, 5, 1)
    whole = prorate(usd("9.99"), usd("29.99"), start, end, start)
    assert (whole.fraction, whole.credit, whole.debit) == (1, usd("9.99"), usd("29.99"))
    none = prorate(usd("9.99"), usd("29.99"), start, end, end)
    assert (none.fraction, none.net) == (0, usd("0.00"))


def test_proration_refuses_bad_input():
    start, end = at(2025, 4, 1), at(2025, 5, 1)
    with pytest.raises(CurrencyMismatch):
        prorate(usd("1"), Money.of("2", "EUR"), start, end, start)
    with pytest.raises(ValueError):
        prorate(usd("1"), usd("2"), start, end, end + timedelta(microseconds=1))
    with pytest.raises(ValueError):
        prorate(usd("1"), usd("2"), start, end, start - timedelta(seconds=1))
    with pytest.raises(ValueError):
        prorate(usd("1"), usd("2"), end, start, end)
    with pytest.raises(ValueError):
        prorate(-usd("1"), usd("2"), start, end, start)
    with pytest.raises(NaiveDatetime):
        prorate(usd("1"), usd("2"), start, end, datetime(2025, 4, 2))


prices = st.decimals(min_value=0, max_value=100_000, places=2).map(lambda d: Money(d, "USD"))
period_starts = st.datetimes(min_value=datetime(2000, 1, 1), max_value=datetime(2090, 1, 1), timezones=st.just(UTC))


@st.composite
def periods_and_moments(draw):
    start = draw(period_starts)
    length = draw(st.integers(min_value=1, max_value=400 * 86400 * 10**6))
    end = start + timedelta(microseconds=length)
    moment = start + timedelta(microseconds=draw(st.integers(0, length)))
    return start, end, moment


@given(old=prices, new=prices, window=periods_and_moments())
def test_proration_properties(old, new, window):
    start, end, moment = window
    p = prorate(old, new, start, end, moment)
    assert 0 <= p.fraction <= 1
    assert usd("0") <= p.credit <= old  # never credit more than was paid
    assert usd("0") <= p.debit <= new
    assert p.net == p.debit - p.credit
    assert abs(Fraction(p.credit.amount) - Fraction(old.amount) * p.fraction) <= Fraction(1, 200)


# -- plan changes ------------------------------------------------------------------------------

APRIL = Period(at(2025, 4, 1), at(2025, 5, 1))


def test_upgrade_is_charged_now_with_proration():
    change = decide_plan_change(S.ACTIVE, BASIC, PRO, APRIL, at(2025, 4, 16))
    assert (change.kind, change.timing, change.effective_at) == (ChangeKind.UPGRADE, ChangeTiming.IMMEDIATE, at(2025, 4, 16))
    assert change.charge_now == usd("10.00") == change.proration.net
    assert (change.from_plan_id, change.to_plan_id) == ("basic", "pro")


def test_downgrade_waits_for_period_end_without_refund():
    change = decide_plan_change(S.ACTIVE, PRO, BASIC, APRIL, at(2025, 4, 16))
    assert (change.kind, change.timing, change.effective_at) == (ChangeKind.DOWNGRADE, ChangeTiming.PERIOD_END, APRIL.end)
    assert change.charge_now == usd("0") and change.proration is None


def test_cycle_changes_take_effect_at_period_end():
    to_yearly = decide_plan_change(S.ACTIVE, PRO, PRO_YEARLY, APRIL, at(2025, 4, 16))
    assert (to_yearly.kind, to_yearly.timing) == (ChangeKind.DOWNGRADE, ChangeTiming.PERIOD_END)  # 299.90/yr < 12 x 29.99
    basic_to_yearly = decide_plan_change(S.ACTIVE, BASIC, PRO_YEARLY, APRIL, at(2025, 4, 16))
    assert (basic_to_yearly.kind, basic_to_yearly.timing) == (ChangeKind.UPGRADE, ChangeTiming.PERIOD_END)
    assert basic_to_yearly.charge_now.is_zero()


def test_lateral_change():
    monthly = Plan("m", "M", usd("10"), BillingCycle.MONTHLY)
    twin = Plan("m2", "M2", usd("10"), BillingCycle.MONTHLY)
    yearly = Plan("y", "Y", usd("120"), BillingCycle.YEARLY)
    for target in (twin, yearly):
        change = decide_plan_change(S.ACTIVE, monthly, target, APRIL, at(2025, 4, 16))
        assert (change.kind, change.timing, change.charge_now) == (ChangeKind.LATERAL, ChangeTiming.PERIOD_END, usd("0"))


def test_change_during_trial_is_immediate_and_free():
    trial = Period(at(2025, 4, 1), at(2025, 4, 15))
    change = decide_plan_change(S.TRIAL, TRIAL, PRO, trial, at(2025, 4, 5))
    assert (change.kind, change.timing, change.charge_now, change.proration) == (
        ChangeKind.UPGRADE, ChangeTiming.IMMEDIATE, usd("0"), None)


def test_same_plan_and_cross_currency_are_refused():
    with pytest.raises(SamePlan):
        decide_plan_change(S.ACTIVE, BASIC, BASIC, APRIL, at(2025, 4, 16))
    euro_pro = Plan("pro-eur", "Pro EUR", Money.of("29.99", "EUR"), BillingCycle.MONTHLY)
    with pytest.raises(CurrencyMismatch):
        decide_plan_change(S.ACTIVE, BASIC, euro_pro, APRIL, at(2025, 4, 16))


@pytest.mark.parametrize("status", [S.PENDING, S.PAST_DUE, S.CANCELED, S.EXPIRED])
def test_plan_change_only_in_trial_or_active(status):
    with pytest.raises(IllegalTransition):
        decide_plan_change(status, BASIC, PRO, APRIL, at(2025, 4, 16))


# -- period end, trial end ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "status, flag, action",
    [(S.ACTIVE, False, PeriodEndAction.RENEW), (S.ACTIVE, True, PeriodEndAction.CANCEL),
     (S.TRIAL, False, PeriodEndAction.END_TRIAL), (S.TRIAL, True, PeriodEndAction.CANCEL)],
)
def test_on_period_end(status, flag, action):
    assert on_period_end(status, cancel_at_period_end=flag) == action
    if action == PeriodEndAction.CANCEL:
        assert transition(status, E.PERIOD_END_REACHED) == S.CANCELED


@pytest.mark.parametrize("status", [S.PENDING, S.PAST_DUE, S.CANCELED, S.EXPIRED])
def test_on_period_end_refused_elsewhere(status):
    with pytest.raises(IllegalTransition):
        on_period_end(status, cancel_at_period_end=False)


def test_trial_end_decision():
    assert decide_trial_end(BASIC, has_payment_method=True) == TrialOutcome.CHARGE
    assert decide_trial_end(BASIC, has_payment_method=False) == TrialOutcome.EXPIRE
    assert decide_trial_end(TRIAL, has_payment_method=True) == TrialOutcome.EXPIRE


# -- dunning -----------------------------------------------------------------------------------------


def test_default_dunning_schedule():
    failed = at(2025, 3, 1, 10)
    assert next_dunning_step(failed, 0) == at(2025, 3, 2, 10)
    assert next_dunning_step(failed, 1) == at(2025, 3, 4, 10)
    assert next_dunning_step(failed, 2) == at(2025, 3, 6, 10)
    assert next_dunning_step(failed, 3) is None
    assert next_dunning_step(failed, 10) is None


def test_custom_and_empty_policies():
    assert next_dunning_step(at(2025, 1, 1), 0, DunningPolicy((7,))) == at(2025, 1, 8)
    assert next_dunning_step(at(2025, 1, 1), 0, DunningPolicy(())) is None
    for bad in ((0,), (-1,), (1.5,), (True,)):
        with pytest.raises(ValueError):
            DunningPolicy(bad)


def test_dunning_refuses_bad_input():
    with pytest.raises(ValueError):
        next_dunning_step(at(2025, 1, 1), -1)
    with pytest.raises(NaiveDatetime):
        next_dunning_step(datetime(2025, 1, 1), 0)


def test_dunning_after_retry_failure():
    assert dunning_after_retry_failure(at(2025, 1, 2), 1) == (E.DUNNING_RETRY_FAILED, at(2025, 1, 5))
    assert dunning_after_retry_failure(at(2025, 1, 10), 3) == (E.DUNNING_EXHAUSTED, None)


def test_a_declined_first_payment_leaves_the_customer_a_window_to_retry():
    status = transition(transition(None, E.CREATE_PAID), E.PAYMENT_FAILED)
    assert status == S.PENDING  # Stripe's "incomplete": another card may still pay
    assert transition(status, E.PAYMENT_SUCCEEDED) == S.ACTIVE
    assert transition(status, E.PAYMENT_WINDOW_EXPIRED) == S.EXPIRED


def test_a_trial_user_choosing_a_paid_plan_ends_the_trial_and_owes_the_first_payment():
    status = transition(transition(None, E.START_TRIAL), E.END_TRIAL_FOR_PAYMENT)
    assert status == S.PENDING
    assert transition(status, E.PAYMENT_SUCCEEDED) == S.ACTIVE
    for other in (S.PENDING, S.ACTIVE, S.PAST_DUE, S.CANCELED, S.EXPIRED):
        with pytest.raises(IllegalTransition):
            transition(other, E.END_TRIAL_FOR_PAYMENT)
