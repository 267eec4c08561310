import json
from datetime import datetime, timezone

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import SecretStr, ValidationError

from billing.money import CurrencyMismatch, Money
from billing.payments import (
    TEST_CARDS,
    TRANSACTION_TRANSITIONS,
    CardBrand,
    CardDetails,
    CardError,
    GatewayResult,
    GatewayStatus,
    IllegalTransactionTransition,
    MockGateway,
    RefundError,
    TransactionStatus as T,
    check_expiry,
    detect_brand,
    last4,
    luhn_valid,
    normalize_card_number,
    refundable,
    status_after_refund,
    status_for_gateway_result,
    transition_transaction,
    validate_cvv,
    validate_refund,
)
from billing.utc import NaiveDatetime

UTC = timezone.utc
NOW = datetime(2025, 6, 15, 12, 0, tzinfo=UTC)
VISA = "4242424242424242"


def usd(x: str) -> Money:
    return Money.of(x, "USD")


# -- Luhn and brands --------------------------------------------------------------------------


@pytest.mark.parametrize("number", [*TEST_CARDS, "6011111111111117", "2223003122003222", "4111111111111111"])
def test_documented_numbers_pass_luhn(number):
    assert luhn_valid(number)


@pytest.mark.parametrize("number", ["4242424242424241", "1234567812345678", "", "abcd", "4242 4242 4242 4242", "٤٢٤٢"])
def test_luhn_failures(number):
    assert not luhn_valid(number)


def luhn_check_digit(payload: str) -> str:
    # Independent reference: double every second digit from the right of payload+check.
    total = 0
    for i, ch in enumerate(reversed(payload)):
        d = int(ch)
        if i % 2 == 0:
            d *= 2
            if d > 9:
                d -= 9
        total += d
    return str((10 - total % 10) % 10)


@given(payload=st.text(alphabet="0123456789", min_size=11, max_size=18), data=st.data())
def test_luhn_accepts_generated_numbers_and_catches_any_single_digit_change(payload, data):
    number = payload + luhn_check_digit(payload)
    assert luhn_valid(number)
    position = data.draw(st.integers(0, len(number) - 1))
    replacement = data.draw(st.sampled_from([d for d in "0123456789" if d != number[position]]))
    assert not luhn_valid(number[:position] + replacement + number[position + 1:])


@pytest.mark.parametrize(
    "number, brand",
    [
        (VISA, CardBrand.VISA), ("4000000000000002", CardBrand.VISA),
        ("5555555555554444", CardBrand.MASTERCARD), ("5105105105105100", CardBrand.MASTERCARD),
        ("2223003122003222", CardBrand.MASTERCARD), ("2720990000000000", CardBrand.MASTERCARD),
        ("378282246310005", CardBrand.AMEX), ("341111111111111", CardBrand.AMEX),
        ("6011111111111117", CardBrand.DISCOVER), ("6500000000000000", CardBrand.DISCOVER),
        ("6440000000000000", CardBrand.DISCOVER), ("6221260000000000", CardBrand.DISCOVER),
        ("3530111333300000", CardBrand.UNKNOWN), ("2220990000000000", CardBrand.UNKNOWN),
        ("5600000000000000", CardBrand.UNKNOWN), ("6221250000000000", CardBrand.UNKNOWN), ("", CardBrand.UNKNOWN),
    ],
)
def test_detect_brand(number, brand):
    assert detect_brand(number) == brand


def test_normalize_card_number():
    assert normalize_card_number("4242 4242-4242 4242") == VISA
    assert last4(VISA) == "4242"
    for bad in ["4242", "42424242424242424242", "4242x24242424242", "37828224631000", "4242424242424241", None]:
        with pytest.raises(CardError) as info:
            normalize_card_number(bad)  # type: ignore[arg-type]
        assert info.value.code == "incorrect_number"


def test_cvv_length_depends_on_brand():
    assert validate_cvv("123", CardBrand.VISA) == "123"
    assert validate_cvv("1234", CardBrand.AMEX) == "1234"
    for cvv, brand in [("1234", CardBrand.VISA), ("123", CardBrand.AMEX), ("12a", CardBrand.VISA), ("", CardBrand.UNKNOWN)]:
        with pytest.raises(CardError) as info:
            validate_cvv(cvv, brand)
        assert info.value.code == "incorrect_cvc"


# -- expiry -----------------------------------------------------------------------------------------


def test_card_is_valid_through_the_end_of_its_expiry_month():
    check_expiry(6, 2025, datetime(2025, 6, 30, 23, 59, 59, 999999, tzinfo=UTC))
    check_expiry(2, 2024, datetime(2024, 2, 29, 23, 0, tzinfo=UTC))
    with pytest.raises(CardError) as info:
        check_expiry(6, 2025, datetime(2025, 7, 1, tzinfo=UTC))
    assert info.value.code == "expired_card"
    with pytest.raises(CardError):
        check_expiry(5, 2025, NOW)


def test_expiry_input_rules():
    check_expiry(6, 25, NOW)  # two-digit year as printed on the card
    for month, year, code in [(0, 2030, "invalid_expiry_month"), (13, 2030, "invalid_expiry_month"),
                              (1, 1999, "invalid_expiry_year"), (1, 2100, "invalid_expiry_year"),
                              (True, 2030, "invalid_expiry_month")]:
        with pytest.raises(CardError) as info:
            check_expiry(month, year, NOW)
        assert info.value.code == code
    with pytest.raises(NaiveDatetime):
        check_expiry(1, 2030, datetime(2025, 1, 1))


# -- CardDetails never leaks the number or CVV -----------------------------------------------------


def card(**overrides):
    data = {"number": VISA, "exp_month": 12, "exp_year": 2030, "cvv": "987"}
    data.update(overrides)
    return CardDetails.parse(data, NOW)


def test_card_details_keep_only_safe_fields_visible():
    details = card(number="4242 4242 4242 4242")
    dumped = details.model_dump()
    assert dumped == {"exp_month": 12, "exp_year": 2030, "brand": CardBrand.VISA, "last4": "4242"}
    assert json.loads(details.model_dump_json()) == {"exp_month": 12, "exp_year": 2030, "brand": "visa", "last4": "4242"}
    for text in (repr(details), str(details), str(dumped), details.model_dump_json(), str(details.model_dump(mode="json"))):
        assert VISA not in text and "987" not in text
    assert details.number.get_secret_value() == VISA  # still available to the gateway call


def test_card_details_are_immutable_and_strict():
    details = card()
    with pytest.raises(ValidationError):
        details.exp_month = 1  # type: ignore[misc]
    with pytest.raises(ValidationError):
        card(extra="field")
    with pytest.raises(ValidationError):
        card(exp_month="12")


def test_card_details_need_a_clock():
    with pytest.raises(ValidationError):
        CardDetails(number=VISA, exp_month=12, exp_year=2030, cvv="987")


@pytest.mark.parametrize(
    "overrides, field, code",
    [
        ({"number": "4242424242424241"}, "number", "incorrect_number"),
        ({"number": 4242424242424242}, "number", "incorrect_number"),
        ({"exp_year": 2024}, "exp_year", "expired_card"),
        ({"exp_month": 5, "exp_year": 2025}, "exp_year", "expired_card"),
        ({"exp_month": 13}, "exp_month", "less_than_equal"),
        ({"cvv": "98"}, "cvv", "incorrect_cvc"),
        ({"cvv": 987}, "cvv", "incorrect_cvc"),
        ({"number": "378282246310005", "cvv": "987"}, "cvv", "incorrect_cvc"),
    ],
)
def test_card_errors_name_the_field_and_hide_the_secrets(overrides, field, code):
    with pytest.raises(ValidationError) as info:
        card(**overrides)
    errors = info.value.errors()
    assert [(e["loc"], e["type"]) for e in errors] == [((field,), code)]
    shown = str(errors) + str(info.value) + info.value.json()
    for secret in (VISA, "4242424242424241", "378282246310005", "987"):
        assert secret not in shown


def test_amex_card():
    details = card(number="3782 822463 10005", cvv="1234")
    assert (details.brand, details.last4) == (CardBrand.AMEX, "0005")


def test_card_from_json_with_secretstr_input():
    payload = json.dumps({"number": VISA, "exp_month": 12, "exp_year": 2030, "cvv": "987"})
    assert CardDetails.model_validate_json(payload, context={"now": NOW}).last4 == "4242"
    assert card(number=SecretStr(VISA), cvv=SecretStr("987")).last4 == "4242"


# -- mock gateway -------------------------------------------------------------------------------------

gateway = MockGateway()


@pytest.mark.parametrize(
    "number, status, decline_code",
    [
        ("4242424242424242", GatewayStatus.SUCCEEDED, None),
        ("5555555555554444", GatewayStatus.SUCCEEDED, None),
        ("378282246310005", GatewayStatus.SUCCEEDED, None),
        ("4000000000000002", GatewayStatus.DECLINED, "card_declined"),
        ("4000000000009995", GatewayStatus.DECLINED, "insufficient_funds"),
        ("4000000000000069", GatewayStatus.DECLINED, "expired_card"),
        ("4000000000000119", GatewayStatus.TIMEOUT, None),
        ("6011111111111117", GatewayStatus.SUCCEEDED, None),  # any other Luhn-valid number
        ("4111 1111 1111 1111", GatewayStatus.SUCCEEDED, None),
        ("4242424242424241", GatewayStatus.DECLINED, "incorrect_number"),
    ],
)
def test_test_cards(number, status, decline_code):
    result = gateway.charge(number, usd("9.99"), NOW, idempotency_key="k1")
    assert (result.status, result.decline_code) == (status, decline_code)
    assert result.retryable == (status == GatewayStatus.TIMEOUT)
    assert result.message
    if status == GatewayStatus.TIMEOUT:
        assert result.gateway_reference is None
    else:
        assert result.gateway_reference.startswith("mock_ch_")
        assert number.replace(" ", "") not in result.gateway_reference


def test_idempotency_key_gives_the_same_reference():
    first = gateway.charge(VISA, usd("9.99"), NOW, idempotency_key="order-1")
    retry = gateway.charge(VISA, usd("9.99"), NOW.replace(minute=5), idempotency_key="order-1")
    other = gateway.charge(VISA, usd("9.99"), NOW, idempotency_key="order-2")
    assert first == retry
    assert first.gateway_reference != other.gateway_reference


def test_references_without_a_key_are_deterministic_per_request():
    a = gateway.charge(VISA, usd("9.99"), NOW)
    assert a == gateway.charge(VISA, usd("9.99"), NOW)
    assert a.gateway_reference != gateway.charge(VISA, usd("10.00"), NOW).gateway_reference
    assert a.gateway_reference != gateway.charge(VISA, usd("9.99"), NOW.replace(second=1)).gateway_reference


def test_charge_refuses_non_positive_amounts_and_naive_time():
    with pytest.raises(ValueError):
        gateway.charge(VISA, usd("0"), NOW)
    with pytest.raises(NaiveDatetime):
        gateway.charge(VISA, usd("1"), datetime(2025, 1, 1))


def test_gateway_refund():
    charge = gateway.charge(VISA, usd("9.99"), NOW, idempotency_key="c")
    refund = gateway.refund(charge.gateway_reference, usd("5"), NOW, idempotency_key="r")
    assert refund.status == GatewayStatus.SUCCEEDED and refund.gateway_reference.startswith("mock_re_")
    assert refund == gateway.refund(charge.gateway_reference, usd("5"), NOW, idempotency_key="r")
    with pytest.raises(ValueError):
        gateway.refund(charge.gateway_reference, usd("0"), NOW)


def test_status_for_gateway_result():
    assert status_for_gateway_result(GatewayResult(GatewayStatus.SUCCEEDED, "r", None, "ok")) == T.SUCCEEDED
    assert status_for_gateway_result(GatewayResult(GatewayStatus.DECLINED, "r", "card_declined", "no")) == T.FAILED
    assert status_for_gateway_result(GatewayResult(GatewayStatus.TIMEOUT, None, None, "?")) == T.PENDING


# -- refunds ------------------------------------------------------------------------------------------


def test_refundable():
    assert refundable(usd("29.99"), usd("0")) == usd("29.99")
    assert refundable(usd("29.99"), usd("10")) == usd("19.99")
    assert refundable(usd("29.99"), usd("29.99")) == usd("0")
    with pytest.raises(ValueError):
        refundable(usd("10"), usd("10.01"))
    with pytest.raises(CurrencyMismatch):
        refundable(usd("10"), Money.of("1", "EUR"))


def test_validate_refund_full_and_partial():
    assert validate_refund(usd("29.99"), usd("0"), None) == usd("29.99")
    assert validate_refund(usd("29.99"), usd("10"), None) == usd("19.99")
    assert validate_refund(usd("29.99"), usd("10"), usd("19.99")) == usd("19.99")
    assert validate_refund(usd("29.99"), usd("0"), usd("0.01")) == usd("0.01")


@pytest.mark.parametrize(
    "paid, refunded, requested, reason",
    [
        ("29.99", "0", "30.00", "exceeds_refundable"),
        ("29.99", "10", "20.00", "exceeds_refundable"),
        ("29.99", "0", "0", "not_positive"),
        ("29.99", "0", "-1", "not_positive"),
        ("29.99", "29.99", None, "nothing_to_refund"),
        ("29.99", "29.99", "1", "nothing_to_refund"),
    ],
)
def test_validate_refund_refusals(paid, refunded, requested, reason):
    request = Money.of(requested, "USD", allow_negative=True) if requested is not None else None
    with pytest.raises(RefundError) as info:
        validate_refund(usd(paid), usd(refunded), request)
    assert info.value.reason == reason


def test_refund_in_another_currency_is_refused():
    with pytest.raises(CurrencyMismatch):
        validate_refund(usd("10"), usd("0"), Money.of("5", "EUR"))


@given(
    paid=st.decimals(min_value="0.01", max_value=10_000, places=2),
    data=st.data(),
)
def test_refunds_never_exceed_what_was_paid(paid, data):
    paid_money, refunded = Money(paid, "USD"), usd("0")
    while not refundable(paid_money, refunded).is_zero():
        left = refundable(paid_money, refunded).amount
        ask = data.draw(st.one_of(st.none(), st.decimals(min_value="0.01", max_value=left, places=2)))
        refunded += validate_refund(paid_money, refunded, None if ask is None else Money(ask, "USD"))
        assert refunded <= paid_money
    assert status_after_refund(paid_money, refunded) == T.REFUNDED


# -- transaction statuses -------------------------------------------------------------------------------

LEGAL_TRANSACTION_MOVES = {
    (T.PENDING, T.SUCCEEDED), (T.PENDING, T.FAILED),
    (T.SUCCEEDED, T.PARTIALLY_REFUNDED), (T.SUCCEEDED, T.REFUNDED),
    (T.PARTIALLY_REFUNDED, T.PARTIALLY_REFUNDED), (T.PARTIALLY_REFUNDED, T.REFUNDED),
}


def test_transaction_table_matches_the_specification():
    assert {(a, b) for a, targets in TRANSACTION_TRANSITIONS.items() for b in targets} == LEGAL_TRANSACTION_MOVES
    assert set(TRANSACTION_TRANSITIONS) == set(T)


@pytest.mark.parametrize("current, target", [(a, b) for a in T for b in T])
def test_every_transaction_move(current, target):
    if (current, target) in LEGAL_TRANSACTION_MOVES:
        assert transition_transaction(current, target) == target
    else:
        with pytest.raises(IllegalTransactionTransition):
            transition_transaction(current, target)


def test_status_after_refund():
    assert status_after_refund(usd("10"), usd("0")) == T.SUCCEEDED
    assert status_after_refund(usd("10"), usd("4")) == T.PARTIALLY_REFUNDED
    assert status_after_refund(usd("10"), usd("10")) == T.REFUNDED
    with pytest.raises(ValueError):
        status_after_refund(usd("10"), usd("11"))


# -- tokens (saved payment methods) -----------------------------------------------------------


def visa_card(number=VISA, cvv="123"):
    return CardDetails.parse({"number": number, "exp_month": 12, "exp_year": 2030, "cvv": cvv}, NOW)


def test_token_encodes_brand_last4_and_behaviour_but_never_the_number():
    token = gateway.tokenize(visa_card(), nonce="00ff00ff")
    assert token == "pm_visa_4242_ok_00ff00ff"
    assert VISA not in token and "123" not in token.split("_")[2:]
    amex = gateway.tokenize(CardDetails.parse({"number": "378282246310005", "exp_month": 1, "exp_year": 30, "cvv": "1234"}, NOW))
    assert amex.startswith("pm_amex_0005_ok_")
    assert gateway.tokenize(visa_card()) != gateway.tokenize(visa_card())  # random nonce by default
    with pytest.raises(ValueError):
        gateway.tokenize(visa_card(), nonce="not hex!")


@pytest.mark.parametrize(
    "number, status, decline_code",
    [
        (VISA, GatewayStatus.SUCCEEDED, None),
        ("4000000000000002", GatewayStatus.DECLINED, "card_declined"),
        ("4000000000009995", GatewayStatus.DECLINED, "insufficient_funds"),
        ("4000000000000069", GatewayStatus.DECLINED, "expired_card"),
        ("4000000000000119", GatewayStatus.TIMEOUT, None),
        ("4000000000000341", GatewayStatus.DECLINED, "card_declined"),
    ],
)
def test_charging_a_token_behaves_like_charging_its_card(number, status, decline_code):
    token = gateway.tokenize(visa_card(number))
    by_token = gateway.charge_token(token, usd("9.99"), NOW, idempotency_key="renewal-1")
    by_card = gateway.charge(number, usd("9.99"), NOW, idempotency_key="renewal-1")
    assert (by_token.status, by_token.gateway_reference, by_token.decline_code) == (
        by_card.status, by_card.gateway_reference, by_card.decline_code)
    assert (by_token.status, by_token.decline_code) == (status, decline_code)


def test_card_0341_attaches_but_every_charge_is_declined():
    token = gateway.tokenize(visa_card("4000000000000341"))
    assert "_chargefail_" in token
    for key in ("a", "b", "c"):
        assert gateway.charge_token(token, usd("1"), NOW, idempotency_key=key).status == GatewayStatus.DECLINED


def test_charge_token_same_key_same_reference_and_bad_tokens_decline():
    token = gateway.tokenize(visa_card())
    assert gateway.charge_token(token, usd("5"), NOW, "k") == gateway.charge_token(token, usd("5"), NOW.replace(hour=13), "k")
    assert gateway.charge_token(token, usd("5"), NOW, "k").gateway_reference != gateway.charge_token(token, usd("5"), NOW, "j").gateway_reference
    for bad in ("", "pm_visa_4242_unknown_00ff00ff", "tok_visa", "pm_visa_42_ok_00ff00ff"):
        result = gateway.charge_token(bad, usd("5"), NOW, "k")
        assert (result.status, result.decline_code) == (GatewayStatus.DECLINED, "invalid_payment_method")
    with pytest.raises(ValueError):
        gateway.charge_token(token, usd("0"), NOW)
