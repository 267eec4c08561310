from decimal import Decimal
from fractions import Fraction

import pytest
from hypothesis import given
from hypothesis import strategies as st

from billing.money import (
    MAX_AMOUNT,
    CurrencyMismatch,
    InvalidAmount,
    InvalidCurrency,
    Money,
    parse_amount,
    quantize,
)


def usd(x: str) -> Money:
    return Money.of(x, "USD")


# -- parsing -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "value, expected",
    [("9.99", "9.99"), ("10", "10.00"), ("0.5", "0.50"), (" 7.10 ", "7.10"), (12, "12.00"), (Decimal("1.2"), "1.20")],
)
def test_of_parses_to_two_places(value, expected):
    money = Money.of(value, "USD")
    assert money.amount == Decimal(expected)
    assert str(money.amount) == expected


def test_currency_is_normalised_to_upper_case():
    assert Money.of("1", "usd").currency == "USD"
    assert Money.of("1", "usd") == Money.of("1.00", "USD")


@pytest.mark.parametrize("value", [9.99, 1.0, True])
def test_floats_and_bools_are_refused(value):
    with pytest.raises(TypeError):
        Money.of(value, "USD")


@pytest.mark.parametrize(
    "value",
    ["NaN", "inf", "-inf", "1e3", "9.999", "", "abc", "1,00", ".5", "5.", "--1", "0x10",
     Decimal("NaN"), Decimal("Infinity"), Decimal("0.001"), "10000000000.00"],
)
def test_malformed_or_unstorable_amounts_are_refused(value):
    with pytest.raises(InvalidAmount):
        Money.of(value, "USD")


def test_negative_refused_unless_allowed():
    with pytest.raises(InvalidAmount):
        Money.of("-1", "USD")
    assert Money.of("-1", "USD", allow_negative=True).amount == Decimal("-1.00")


def test_max_amount_is_numeric_12_2():
    assert Money.of(MAX_AMOUNT, "USD").amount == Decimal("9999999999.99")
    with pytest.raises(InvalidAmount):
        Money.of(MAX_AMOUNT, "USD") + usd("0.01")


@pytest.mark.parametrize("currency", ["XYZ", "JPY", "KWD", "US", "USDD", "", 840, None])
def test_unsupported_currencies_are_refused(currency):
    with pytest.raises(InvalidCurrency):
        Money.of("1", currency)


def test_constructor_refuses_float_and_sub_cent():
    with pytest.raises(TypeError):
        Money(1.5, "USD")  # type: ignore[arg-type]
    with pytest.raises(InvalidAmount):
        Money(Decimal("1.005"), "USD")


def test_negative_zero_is_plain_zero():
    assert str(Money(Decimal("-0"), "EUR")) == "0.00 EUR"


def test_parse_amount_is_strict():
    assert parse_amount("3") == Decimal("3.00")
    with pytest.raises(InvalidAmount):
        parse_amount("-3")
    with pytest.raises(TypeError):
        parse_amount([1])  # type: ignore[arg-type]


# -- arithmetic and comparison ----------------------------------------------------------


def test_add_sub_neg():
    assert usd("9.99") + usd("0.01") == usd("10.00")
    assert usd("1") - usd("2.50") == Money.of("-1.50", "USD", allow_negative=True)
    assert -usd("1") == Money.of("-1", "USD", allow_negative=True)


def test_comparisons_within_currency():
    assert usd("1") < usd("2") <= usd("2") < usd("3")
    assert usd("3") > usd("2") >= usd("2")
    assert usd("0").is_zero() and usd("1").is_positive() and (-usd("1")).is_negative()


@pytest.mark.parametrize("op", ["__add__", "__sub__", "__lt__", "__le__", "__gt__", "__ge__"])
def test_cross_currency_operations_raise(op):
    with pytest.raises(CurrencyMismatch) as info:
        getattr(usd("1"), op)(Money.of("1", "EUR"))
    assert (info.value.left, info.value.right) == ("USD", "EUR")


def test_equality_across_currencies_is_false_not_an_error():
    assert usd("1") != Money.of("1", "EUR")
    assert len({usd("1"), usd("1.00"), Money.of("1", "EUR")}) == 2


def test_money_with_non_money_raises_type_error():
    with pytest.raises(TypeError):
        usd("1") + 1  # type: ignore[operator]


def test_money_is_immutable():
    with pytest.raises(AttributeError):
        usd("1").amount = Decimal("2")  # type: ignore[misc]


def test_str():
    assert str(usd("9.9")) == "9.90 USD"


# -- rounding, ratios, allocation -----------------------------------------------------------


@pytest.mark.parametrize(
    "value, expected",
    [(Decimal("0.125"), "0.12"), (Decimal("0.135"), "0.14"), (Decimal("-0.125"), "-0.12"),
     (Fraction(1, 3), "0.33"), (Fraction(2, 3), "0.67"), (Fraction(1, 200), "0.00"), (Fraction(3, 200), "0.02"), (7, "7.00")],
)
def test_quantize_rounds_half_to_even(value, expected):
    assert quantize(value) == Decimal(expected)


def test_quantize_refuses_float_and_nan():
    with pytest.raises(TypeError):
        quantize(0.1)  # type: ignore[arg-type]
    with pytest.raises(InvalidAmount):
        quantize(Decimal("NaN"))


def test_scaled_rounds_once_half_even():
    assert usd("0.05").scaled(Fraction(1, 2)) == usd("0.02")
    assert usd("0.15").scaled(Fraction(1, 2)) == usd("0.08")
    assert usd("9.99").scaled(Decimal("0.5")) == usd("5.00")
    assert usd("10").scaled(Fraction(1, 3)) == usd("3.33")
    with pytest.raises(TypeError):
        usd("1").scaled(0.5)  # type: ignore[arg-type]


def test_allocate_keeps_every_cent():
    assert [m.amount for m in usd("10").allocate([1, 1, 1])] == [Decimal("3.34"), Decimal("3.33"), Decimal("3.33")]
    assert [m.amount for m in usd("0.05").allocate([1, 1])] == [Decimal("0.03"), Decimal("0.02")]
    assert [m.amount for m in usd("100").allocate([Fraction(1, 4), Decimal("0.75")])] == [Decimal("25.00"), Decimal("75.00")]
    assert [m.amount for m in usd("1").allocate([0, 1])] == [Decimal("0.00"), Decimal("1.00")]


@pytest.mark.parametrize("weights", [[], [0, 0], [1, -1]])
def test_allocate_refuses_bad_weights(weights):
    with pytest.raises(ValueError):
        usd("1").allocate(weights)


@given(
    cents=st.integers(min_value=-10**8, max_value=10**8),
    weights=st.lists(st.integers(min_value=0, max_value=1000), min_size=1, max_size=8).filter(any),
)
def test_allocate_sums_back_and_is_fair_to_the_cent(cents, weights):
    total = Money(Decimal(cents).scaleb(-2), "USD")
    parts = total.allocate(weights)
    assert sum((p for p in parts), Money.zero("USD")) == total
    for part, weight in zip(parts, weights):
        exact = Fraction(cents) * Fraction(weight, sum(weights))
        assert abs(Fraction(part.amount * 100) - exact) < 1


@given(a=st.decimals(min_value=-10**6, max_value=10**6, places=2), b=st.decimals(min_value=-10**6, max_value=10**6, places=2))
def test_add_then_sub_round_trips(a, b):
    x, y = Money(a, "EUR"), Money(b, "EUR")
    assert (x + y) - y == x
