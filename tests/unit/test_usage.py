from datetime import datetime, timezone

import pytest
from hypothesis import given
from hypothesis import strategies as st

from billing.plans import BillingCycle, Period
from billing.usage import UsageDecision, check_usage, usage_period, validate_feature_name
from billing.utc import NaiveDatetime

UTC = timezone.utc


def at(*args) -> datetime:
    return datetime(*args, tzinfo=UTC)


def test_usage_period_follows_the_billing_anchor():
    anchor = at(2024, 1, 31, 8)
    assert usage_period(anchor, BillingCycle.MONTHLY, at(2024, 3, 10)) == Period(at(2024, 2, 29, 8), at(2024, 3, 31, 8))
    start, reset_at = usage_period(anchor, BillingCycle.MONTHLY, at(2024, 3, 31, 8))  # unpacks as a pair
    assert (start, reset_at) == (at(2024, 3, 31, 8), at(2024, 4, 30, 8))


def test_usage_period_yearly_and_daily():
    assert usage_period(at(2024, 2, 29), BillingCycle.YEARLY, at(2025, 6, 1)) == Period(at(2025, 2, 28), at(2026, 2, 28))
    assert usage_period(at(2024, 1, 1), BillingCycle.DAILY, at(2024, 1, 5, 23)) == Period(at(2024, 1, 5), at(2024, 1, 6))


def test_usage_period_refuses_naive_time():
    with pytest.raises(NaiveDatetime):
        usage_period(at(2024, 1, 1), BillingCycle.MONTHLY, datetime(2024, 2, 1))


def test_within_limit():
    assert check_usage(10, 5, 100) == UsageDecision(True, 15, 100, 85)


def test_reaching_the_limit_exactly_is_allowed():
    assert check_usage(99, 1, 100) == UsageDecision(True, 100, 100, 0)


def test_over_limit_is_refused_and_usage_unchanged():
    assert check_usage(99, 2, 100) == UsageDecision(False, 99, 100, 1)
    assert check_usage(100, 1, 100) == UsageDecision(False, 100, 100, 0)


def test_zero_limit_means_not_included():
    assert check_usage(0, 1, 0) == UsageDecision(False, 0, 0, 0)


def test_unlimited():
    assert check_usage(10**12, 10**6, None) == UsageDecision(True, 10**12 + 10**6, None, None)


def test_usage_above_a_lowered_limit_reports_zero_remaining():
    assert check_usage(1500, 1, 1000) == UsageDecision(False, 1500, 1000, 0)


@pytest.mark.parametrize(
    "current, delta, limit",
    [(0, 0, 10), (0, -1, 10), (0, True, 10), (0, 1.0, 10), (0, "1", 10), (-1, 1, 10), (0.5, 1, 10),
     (0, 1, -1), (0, 1, 1.5), (0, 1, True)],
)
def test_invalid_arguments(current, delta, limit):
    with pytest.raises(ValueError):
        check_usage(current, delta, limit)


@given(
    current=st.integers(0, 10**6),
    delta=st.integers(1, 10**6),
    limit=st.one_of(st.none(), st.integers(0, 2 * 10**6)),
)
def test_usage_properties(current, delta, limit):
    decision = check_usage(current, delta, limit)
    assert decision.allowed == (limit is None or current + delta <= limit)
    assert decision.current_usage == (current + delta if decision.allowed else current)
    if limit is None:
        assert decision.remaining is None
    else:
        assert decision.remaining == max(limit - decision.current_usage, 0)
        assert decision.current_usage <= max(limit, current)


def test_feature_names_are_validated_here_too():
    assert validate_feature_name("api_calls") == "api_calls"
    with pytest.raises(ValueError):
        validate_feature_name("API-Calls")


def test_subscription_usage_period_is_the_rows_period_while_inside_it():
    from billing.usage import subscription_usage_period
    # A 14-day trial on a monthly plan: the window is the trial, not a month.
    start, end = at(2024, 1, 10), at(2024, 1, 24)
    assert subscription_usage_period(start, end, BillingCycle.MONTHLY, at(2024, 1, 20)) == Period(start, end)


def test_subscription_usage_period_follows_the_calendar_once_the_row_lags():
    from billing.usage import subscription_usage_period
    start, end = at(2024, 1, 31), at(2024, 2, 29)
    # Past the end (renewal not applied yet): anchored on the end.
    assert subscription_usage_period(start, end, BillingCycle.MONTHLY, at(2024, 3, 5)) == Period(at(2024, 2, 29), at(2024, 3, 29))
    # No end known: anchored on the start.
    assert subscription_usage_period(start, None, BillingCycle.MONTHLY, at(2024, 3, 5)) == Period(at(2024, 2, 29), at(2024, 3, 31))
