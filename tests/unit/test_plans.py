import calendar
from datetime import datetime, timedelta, timezone

import pytest
from hypothesis import given
from hypothesis import strategies as st

from billing.money import Money
from billing.plans import (
    DEMO_PLANS,
    DEMO_PLANS_BY_ID,
    BillingCycle,
    Period,
    Plan,
    add_cycle,
    period_containing,
    validate_feature_name,
)
from billing.utc import NaiveDatetime

UTC = timezone.utc


def at(*args) -> datetime:
    return datetime(*args, tzinfo=UTC)


# -- add_cycle -------------------------------------------------------------------------


def test_month_end_anchor_is_kept_across_short_months():
    anchor = at(2024, 1, 31, 12, 30)
    assert [add_cycle(anchor, BillingCycle.MONTHLY, n) for n in range(5)] == [
        at(2024, 1, 31, 12, 30),
        at(2024, 2, 29, 12, 30),  # leap year
        at(2024, 3, 31, 12, 30),  # back to the 31st, no drift
        at(2024, 4, 30, 12, 30),
        at(2024, 5, 31, 12, 30),
    ]


def test_february_in_a_common_year():
    assert add_cycle(at(2025, 1, 31), BillingCycle.MONTHLY) == at(2025, 2, 28)
    assert add_cycle(at(2025, 1, 29), BillingCycle.MONTHLY) == at(2025, 2, 28)
    assert add_cycle(at(2025, 1, 28), BillingCycle.MONTHLY) == at(2025, 2, 28)


def test_month_arithmetic_crosses_years():
    assert add_cycle(at(2024, 11, 30), BillingCycle.MONTHLY, 3) == at(2025, 2, 28)
    assert add_cycle(at(2024, 12, 15), BillingCycle.MONTHLY, 1) == at(2025, 1, 15)
    assert add_cycle(at(2024, 3, 31), BillingCycle.MONTHLY, -1) == at(2024, 2, 29)


def test_yearly_on_leap_day():
    anchor = at(2024, 2, 29)
    assert add_cycle(anchor, BillingCycle.YEARLY) == at(2025, 2, 28)
    assert add_cycle(anchor, BillingCycle.YEARLY, 4) == at(2028, 2, 29)


def test_fixed_length_cycles():
    start = at(2024, 2, 28, 23, 0)
    assert add_cycle(start, BillingCycle.DAILY) == at(2024, 2, 29, 23, 0)
    assert add_cycle(start, BillingCycle.DAILY, 2) == at(2024, 3, 1, 23, 0)
    assert add_cycle(start, BillingCycle.WEEKLY) == at(2024, 3, 6, 23, 0)


def test_zero_cycles_is_identity_and_string_cycle_accepted():
    start = at(2024, 5, 5, 5, 5, 5, 5)
    assert add_cycle(start, BillingCycle.MONTHLY, 0) == start
    assert add_cycle(start, "monthly") == at(2024, 6, 5, 5, 5, 5, 5)  # type: ignore[arg-type]


def test_naive_datetimes_are_refused():
    with pytest.raises(NaiveDatetime):
        add_cycle(datetime(2024, 1, 1), BillingCycle.MONTHLY)


def test_other_timezones_are_converted_to_utc_first():
    plus_two = timezone(timedelta(hours=2))
    result = add_cycle(datetime(2024, 2, 1, 1, 0, tzinfo=plus_two), BillingCycle.MONTHLY)
    assert result == at(2024, 2, 29, 23, 0) and result.tzinfo == UTC  # from Jan 31 23:00 UTC


def test_n_must_be_an_int():
    with pytest.raises(TypeError):
        add_cycle(at(2024, 1, 1), BillingCycle.MONTHLY, 1.0)  # type: ignore[arg-type]


instants = st.datetimes(min_value=datetime(1990, 1, 1), max_value=datetime(2090, 1, 1), timezones=st.just(UTC))
cycles = st.sampled_from(list(BillingCycle))


@given(start=instants, cycle=cycles, n=st.integers(-100, 100), k=st.integers(1, 50))
def test_add_cycle_is_strictly_monotonic(start, cycle, n, k):
    assert add_cycle(start, cycle, n) < add_cycle(start, cycle, n + k)


@given(start=instants, n=st.integers(-300, 300))
def test_monthly_keeps_anchor_day_clamped_to_month_length(start, n):
    result = add_cycle(start, BillingCycle.MONTHLY, n)
    assert result.day == min(start.day, calendar.monthrange(result.year, result.month)[1])
    assert result.time() == start.time()
    assert (result.year * 12 + result.month) - (start.year * 12 + start.month) == n


# -- period_containing ------------------------------------------------------------------


def test_period_containing_uses_the_anchor():
    anchor = at(2024, 1, 31)
    assert period_containing(anchor, BillingCycle.MONTHLY, at(2024, 3, 15)) == Period(at(2024, 2, 29), at(2024, 3, 31))
    assert period_containing(anchor, BillingCycle.MONTHLY, at(2024, 3, 31)) == Period(at(2024, 3, 31), at(2024, 4, 30))
    assert period_containing(anchor, BillingCycle.MONTHLY, anchor) == Period(anchor, at(2024, 2, 29))


def test_period_end_belongs_to_the_next_period():
    period = period_containing(at(2024, 1, 1), BillingCycle.MONTHLY, at(2024, 1, 31, 23, 59, 59, 999999))
    assert period == Period(at(2024, 1, 1), at(2024, 2, 1))
    assert period.contains(at(2024, 1, 1)) and not period.contains(at(2024, 2, 1))
    assert period.duration == timedelta(days=31)


def test_period_before_the_anchor():
    assert period_containing(at(2024, 3, 31), BillingCycle.MONTHLY, at(2024, 3, 1)) == Period(at(2024, 2, 29), at(2024, 3, 31))


def test_period_containing_fixed_cycles():
    anchor = at(2024, 1, 1, 6)
    assert period_containing(anchor, BillingCycle.DAILY, at(2024, 1, 10, 5)) == Period(at(2024, 1, 9, 6), at(2024, 1, 10, 6))
    assert period_containing(anchor, BillingCycle.WEEKLY, at(2024, 1, 8, 6)) == Period(at(2024, 1, 8, 6), at(2024, 1, 15, 6))


@given(anchor=instants, cycle=cycles, moment=instants)
def test_period_containing_is_consecutive_boundaries_around_the_moment(anchor, cycle, moment):
    start, end = period_containing(anchor, cycle, moment)
    assert start <= moment < end
    # start and end are the k-th and (k+1)-th boundaries for some k near a rough estimate.
    rough_days_per_cycle = {"daily": 1, "weekly": 7, "monthly": 30, "yearly": 365}[cycle.value]
    guess = (start - anchor).days // rough_days_per_cycle
    assert any(
        add_cycle(anchor, cycle, k) == start and add_cycle(anchor, cycle, k + 1) == end
        for k in range(guess - 30, guess + 30)
    )


# -- plans ---------------------------------------------------------------------------------


def make_plan(**overrides) -> Plan:
    fields = dict(id="team", name="Team", price=Money.of("5", "USD"), billing_cycle=BillingCycle.MONTHLY)
    fields.update(overrides)
    return Plan(**fields)


@pytest.mark.parametrize(
    "overrides",
    [
        {"id": "Team"}, {"id": "team plan"}, {"id": ""}, {"id": "-team"}, {"name": " "},
        {"price": Money.of("-1", "USD", allow_negative=True)}, {"price": "5"},
        {"trial_days": -1}, {"trial_days": True}, {"billing_cycle": "fortnightly"},
        {"features": {"API calls": 1}}, {"features": {"api_calls": -1}}, {"features": {"api_calls": True}},
        {"features": {"api_calls": 1.5}},
    ],
)
def test_invalid_plans_are_refused(overrides):
    with pytest.raises(ValueError):
        make_plan(**overrides)


def test_plan_limits():
    plan = make_plan(features={"api_calls": 10, "projects": None})
    assert plan.limit("api_calls") == 10
    assert plan.limit("projects") is None  # unlimited
    assert plan.limit("seats") == 0  # not part of the plan
    with pytest.raises(ValueError):
        plan.limit("Seats")


def test_plan_features_are_frozen_and_plans_hashable():
    plan = make_plan(features={"api_calls": 10})
    with pytest.raises(TypeError):
        plan.features["api_calls"] = 11  # type: ignore[index]
    assert hash(plan) == hash(make_plan(features={"api_calls": 10}))


def test_annualized_price_and_is_free():
    assert make_plan(price=Money.of("10", "USD")).annualized_price() == 120
    assert make_plan(price=Money.of("10", "USD"), billing_cycle=BillingCycle.YEARLY).annualized_price() == 10
    assert make_plan(price=Money.of("0", "USD")).is_free


@pytest.mark.parametrize("name", ["api_calls", "storage_gb", "seats", "a", "x1_2"])
def test_valid_feature_names(name):
    assert validate_feature_name(name) == name


@pytest.mark.parametrize("name", ["", "API", "api-calls", "1api", "_api", "api calls", "é", "a" * 65, None, 3])
def test_invalid_feature_names(name):
    with pytest.raises(ValueError):
        validate_feature_name(name)


# -- demo plans ----------------------------------------------------------------------------


def test_demo_plans_have_stable_ids():
    assert [p.id for p in DEMO_PLANS] == ["trial", "basic", "pro", "pro-yearly"]
    assert set(DEMO_PLANS_BY_ID) == {"trial", "basic", "pro", "pro-yearly"}


def test_demo_plan_contents():
    trial, basic, pro, pro_yearly = DEMO_PLANS
    assert trial.is_free and trial.trial_days == 14 and trial.billing_cycle == BillingCycle.MONTHLY
    assert basic.price == Money.of("9.99", "USD") and basic.limit("api_calls") == 1000 and basic.limit("storage_gb") == 10
    assert pro.price == Money.of("29.99", "USD") and pro.limit("projects") is None
    assert pro_yearly.billing_cycle == BillingCycle.YEARLY and pro_yearly.price == Money.of("299.90", "USD")
    for feature in trial.features:
        small, bigger = trial.limit(feature), pro.limit(feature)
        assert bigger is None or small <= basic.limit(feature) <= bigger
    assert all(p.price.currency == "USD" for p in DEMO_PLANS)
