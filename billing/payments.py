"""Cards, the mock gateway, refunds and transaction statuses.

Card numbers and CVVs are secrets: they live only in ``SecretStr`` fields that
are excluded from dumps and hidden from repr and validation errors, and only
brand, last4 and expiry are ever meant to be stored.
"""

from __future__ import annotations

import calendar
import hashlib
import re
import secrets
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from contextlib import contextmanager
from typing import Annotated, Any, Iterator, Optional

from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationInfo, computed_field, field_validator, model_validator
from pydantic_core import PydanticCustomError

from billing.money import CurrencyMismatch, Money
from billing.utc import UTC, require_utc

# -- card rules --------------------------------------------------------------------


class CardBrand(StrEnum):
    VISA = "visa"
    MASTERCARD = "mastercard"
    AMEX = "amex"
    DISCOVER = "discover"
    UNKNOWN = "unknown"


class CardError(ValueError):
    """A card field is invalid. ``code`` follows gateway vocabulary (incorrect_number, ...)."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)  # never include the card number or CVV in messages
        self.code = code


_SEPARATORS = re.compile(r"[ -]")
_BRAND_LENGTHS = {
    CardBrand.VISA: {13, 16, 19},
    CardBrand.MASTERCARD: {16},
    CardBrand.AMEX: {15},
    CardBrand.DISCOVER: {16, 17, 18, 19},
}


def luhn_valid(number: str) -> bool:
    """Mod-10 checksum: catches every single-digit typo and most transpositions."""
    if not number.isascii() or not number.isdigit():
        return False
    total = 0
    for position, char in enumerate(reversed(number)):
        digit = int(char)
        if position % 2 == 1:
            digit = digit * 2 - 9 if digit > 4 else digit * 2
        total += digit
    return total % 10 == 0


def detect_brand(number: str) -> CardBrand:
    """Brand from the issuer prefix (IIN ranges)."""
    if number.startswith(("34", "37")):
        return CardBrand.AMEX
    if number.startswith("4"):
        return CardBrand.VISA
    if 51 <= _prefix(number, 2) <= 55 or 2221 <= _prefix(number, 4) <= 2720:
        return CardBrand.MASTERCARD
    if (
        number.startswith(("6011", "65"))
        or 644 <= _prefix(number, 3) <= 649
        or 622126 <= _prefix(number, 6) <= 622925
    ):
        return CardBrand.DISCOVER
    return CardBrand.UNKNOWN


def _prefix(number: str, digits: int) -> int:
    head = number[:digits]
    return int(head) if len(head) == digits and head.isdigit() else -1


def normalize_card_number(raw: str) -> str:
    """Digits only (spaces and dashes allowed as separators), 12-19 long, Luhn-valid,
    and the right length for a recognised brand."""
    if not isinstance(raw, str):
        raise CardError("incorrect_number", "card number must be a string")
    number = _SEPARATORS.sub("", raw)
    if not (number.isascii() and number.isdigit() and 12 <= len(number) <= 19):
        raise CardError("incorrect_number", "card number must be 12 to 19 digits")
    brand = detect_brand(number)
    if brand in _BRAND_LENGTHS and len(number) not in _BRAND_LENGTHS[brand]:
        raise CardError("incorrect_number", f"wrong length for a {brand.value} card")
    if not luhn_valid(number):
        raise CardError("incorrect_number", "card number failed the checksum")
    return number


def last4(number: str) -> str:
    return number[-4:]


def validate_cvv(cvv: str, brand: CardBrand) -> str:
    """4 digits for Amex (front of the card), 3 for everyone else."""
    expected = 4 if brand == CardBrand.AMEX else 3
    if not isinstance(cvv, str) or not (cvv.isascii() and cvv.isdigit() and len(cvv) == expected):
        raise CardError("incorrect_cvc", f"CVV must be {expected} digits")
    return cvv


def normalize_expiry_year(year: int) -> int:
    """Accept 4-digit years and the 2-digit form printed on cards (30 -> 2030)."""
    if isinstance(year, bool) or not isinstance(year, int):
        raise CardError("invalid_expiry_year", "expiry year must be an int")
    if 0 <= year <= 99:
        year += 2000
    if not 2000 <= year <= 2099:
        raise CardError("invalid_expiry_year", "expiry year out of range")
    return year


def check_expiry(month: int, year: int, now: datetime) -> None:
    """A card is valid through the last instant of its expiry month (UTC)."""
    now = require_utc(now, "now")
    if isinstance(month, bool) or not isinstance(month, int) or not 1 <= month <= 12:
        raise CardError("invalid_expiry_month", "expiry month must be 1-12")
    year = normalize_expiry_year(year)
    last_day = calendar.monthrange(year, month)[1]
    if now > datetime(year, month, last_day, 23, 59, 59, 999999, tzinfo=UTC):
        raise CardError("expired_card", "card has expired")


def _masked(value: Any) -> SecretStr:
    return value if isinstance(value, SecretStr) else SecretStr(value)


@contextmanager
def _as_field_error() -> Iterator[None]:
    """Report a CardError to pydantic with its code as the error type (e.g. ``expired_card``)."""
    try:
        yield
    except CardError as exc:
        raise PydanticCustomError(exc.code, str(exc)) from None


class CardDetails(BaseModel):
    """A card as submitted. Build it with ``CardDetails.parse(data, now)``.

    ``model_dump()`` yields only ``exp_month, exp_year, brand, last4``: safe to
    store. The full number is reachable only via ``number.get_secret_value()``
    for the gateway call.
    """

    model_config = ConfigDict(frozen=True, extra="forbid", hide_input_in_errors=True)

    number: SecretStr = Field(exclude=True, repr=False)
    exp_month: Annotated[int, Field(strict=True, ge=1, le=12)]
    exp_year: Annotated[int, Field(strict=True)]
    cvv: SecretStr = Field(exclude=True, repr=False)

    @classmethod
    def parse(cls, data: dict[str, Any], now: datetime) -> CardDetails:
        return cls.model_validate(data, context={"now": require_utc(now, "now")})

    @model_validator(mode="before")
    @classmethod
    def _hide_secrets(cls, data: Any) -> Any:
        # Wrap the secrets before anything else sees them, so even
        # ValidationError.errors()[i]["input"] shows '**********'.
        if isinstance(data, dict):
            data = {k: _masked(v) if k in ("number", "cvv") else v for k, v in data.items()}
        return data

    # Field validators run in declaration order, so later fields can look at
    # earlier ones via info.data; errors stay attached to the right field.

    @field_validator("number", mode="before")
    @classmethod
    def _number(cls, value: Any) -> str:
        raw = value.get_secret_value() if isinstance(value, SecretStr) else value
        with _as_field_error():
            return normalize_card_number(raw)

    @field_validator("exp_year")
    @classmethod
    def _expiry(cls, year: int, info: ValidationInfo) -> int:
        now = (info.context or {}).get("now")
        if now is None:  # expiry is relative to a moment: the caller must say which
            raise ValueError("validate with context={'now': ...}; use CardDetails.parse")
        with _as_field_error():
            year = normalize_expiry_year(year)
            if "exp_month" in info.data:
                check_expiry(info.data["exp_month"], year, now)
        return year

    @field_validator("cvv", mode="before")
    @classmethod
    def _cvv(cls, value: Any, info: ValidationInfo) -> str:
        raw = value.get_secret_value() if isinstance(value, SecretStr) else value
        number = info.data.get("number")  # absent if the number itself was invalid
        brand = detect_brand(number.get_secret_value()) if number is not None else None
        with _as_field_error():
            if not isinstance(raw, str) or not (raw.isascii() and raw.isdigit() and len(raw) in (3, 4)):
                raise CardError("incorrect_cvc", "CVV must be 3 or 4 digits")
            if brand is not None:
                validate_cvv(raw, brand)
        return raw

    @computed_field  # type: ignore[prop-decorator]
    @property
    def brand(self) -> CardBrand:
        return detect_brand(self.number.get_secret_value())

    @computed_field  # type: ignore[prop-decorator]
    @property
    def last4(self) -> str:
        return last4(self.number.get_secret_value())


# -- mock gateway --------------------------------------------------------------------


class GatewayStatus(StrEnum):
    SUCCEEDED = "succeeded"
    DECLINED = "declined"
    TIMEOUT = "gateway_timeout"  # outcome unknown: retry with the same idempotency key


@dataclass(frozen=True)
class GatewayResult:
    status: GatewayStatus
    gateway_reference: Optional[str]  # None when the gateway never answered
    decline_code: Optional[str]
    message: str

    @property
    def retryable(self) -> bool:
        return self.status == GatewayStatus.TIMEOUT


# Stripe's documented test numbers. Any other Luhn-valid number succeeds.
TEST_CARDS: dict[str, tuple[GatewayStatus, Optional[str], str]] = {
    "4242424242424242": (GatewayStatus.SUCCEEDED, None, "approved (visa)"),
    "5555555555554444": (GatewayStatus.SUCCEEDED, None, "approved (mastercard)"),
    "378282246310005": (GatewayStatus.SUCCEEDED, None, "approved (amex)"),
    "4000000000000002": (GatewayStatus.DECLINED, "card_declined", "the card was declined"),
    "4000000000009995": (GatewayStatus.DECLINED, "insufficient_funds", "the card has insufficient funds"),
    "4000000000000069": (GatewayStatus.DECLINED, "expired_card", "the card has expired"),
    "4000000000000119": (GatewayStatus.TIMEOUT, None, "the gateway did not answer in time"),
    # Attaches fine (tokenize succeeds), every charge is declined: lets dunning be tested.
    "4000000000000341": (GatewayStatus.DECLINED, "card_declined", "the card was declined"),
}

# A token carries the card's test behaviour (never its number), like Stripe's pm_card_* tokens.
_BEHAVIOURS: dict[str, tuple[GatewayStatus, Optional[str], str]] = {
    "ok": (GatewayStatus.SUCCEEDED, None, "approved"),
    "declined": TEST_CARDS["4000000000000002"],
    "insufficient": TEST_CARDS["4000000000009995"],
    "expired": TEST_CARDS["4000000000000069"],
    "timeout": TEST_CARDS["4000000000000119"],
    "chargefail": TEST_CARDS["4000000000000341"],
}
_CARD_BEHAVIOUR = {
    "4000000000000002": "declined",
    "4000000000009995": "insufficient",
    "4000000000000069": "expired",
    "4000000000000119": "timeout",
    "4000000000000341": "chargefail",
}
_TOKEN = re.compile(r"^pm_(?P<brand>[a-z]+)_(?P<last4>[0-9]{4})_(?P<behaviour>[a-z]+)_(?P<nonce>[0-9a-f]{8,64})$")


def _reference(prefix: str, *parts: str) -> str:
    digest = hashlib.sha256("|".join(parts).encode()).hexdigest()[:24]
    return f"{prefix}_{digest}"


class MockGateway:
    """A deterministic stand-in for a card processor: same inputs, same answer.

    With an idempotency key, the reference depends on the key alone, so a
    retried charge maps to the same gateway charge instead of a second one.
    """

    def charge(
        self, card_number: str, amount: Money, now: datetime, idempotency_key: Optional[str] = None
    ) -> GatewayResult:
        now = require_utc(now, "now")
        if not amount.is_positive():
            raise ValueError("charge amount must be positive")
        number = _SEPARATORS.sub("", card_number) if isinstance(card_number, str) else ""
        if idempotency_key is not None:
            reference = _reference("mock_ch", "charge", idempotency_key)
        else:  # no key: derive from the request (last4 only, never the full number)
            reference = _reference("mock_ch", number[-4:], str(amount), now.isoformat())
        try:
            normalize_card_number(number)
        except CardError as exc:
            return GatewayResult(GatewayStatus.DECLINED, reference, exc.code, str(exc))
        status, decline_code, message = TEST_CARDS.get(number, (GatewayStatus.SUCCEEDED, None, "approved"))
        if status == GatewayStatus.TIMEOUT:
            reference = None
        return GatewayResult(status, reference, decline_code, message)

    def tokenize(self, card: CardDetails, nonce: Optional[str] = None) -> str:
        """A reusable token for a validated card (Stripe's SetupIntent): ``pm_<brand>_<last4>_<behaviour>_<nonce>``.

        The token holds brand, last4 and the test behaviour only, so it is safe to store.
        Pass ``nonce`` (hex) for a deterministic token.
        """
        number = card.number.get_secret_value()
        nonce = nonce if nonce is not None else secrets.token_hex(8)
        if not re.fullmatch(r"[0-9a-f]{8,64}", nonce):
            raise ValueError("nonce must be 8-64 lowercase hex characters")
        return f"pm_{card.brand.value}_{card.last4}_{_CARD_BEHAVIOUR.get(number, 'ok')}_{nonce}"

    def charge_token(
        self, token: str, amount: Money, now: datetime, idempotency_key: Optional[str] = None
    ) -> GatewayResult:
        """Charge a saved payment method. With a key, the reference depends on the key alone, as in ``charge``."""
        now = require_utc(now, "now")
        if not amount.is_positive():
            raise ValueError("charge amount must be positive")
        if idempotency_key is not None:
            reference = _reference("mock_ch", "charge", idempotency_key)
        else:
            reference = _reference("mock_ch", token, str(amount), now.isoformat())
        match = _TOKEN.match(token) if isinstance(token, str) else None
        if match is None or match["behaviour"] not in _BEHAVIOURS:
            return GatewayResult(GatewayStatus.DECLINED, reference, "invalid_payment_method", "unknown payment method token")
        status, decline_code, message = _BEHAVIOURS[match["behaviour"]]
        if status == GatewayStatus.TIMEOUT:
            reference = None
        return GatewayResult(status, reference, decline_code, message)

    def refund(
        self, gateway_reference: str, amount: Money, now: datetime, idempotency_key: Optional[str] = None
    ) -> GatewayResult:
        now = require_utc(now, "now")
        if not amount.is_positive():
            raise ValueError("refund amount must be positive")
        key = idempotency_key if idempotency_key is not None else f"{gateway_reference}|{amount}|{now.isoformat()}"
        return GatewayResult(GatewayStatus.SUCCEEDED, _reference("mock_re", "refund", key), None, "refunded")


# -- transactions and refunds --------------------------------------------------------


class TransactionStatus(StrEnum):
    PENDING = "pending"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    REFUNDED = "refunded"
    PARTIALLY_REFUNDED = "partially_refunded"


T = TransactionStatus  # short alias for the table below

# current -> statuses it may move to. FAILED and REFUNDED are terminal.
TRANSACTION_TRANSITIONS: dict[TransactionStatus, frozenset[TransactionStatus]] = {
    T.PENDING: frozenset({T.SUCCEEDED, T.FAILED}),
    T.SUCCEEDED: frozenset({T.PARTIALLY_REFUNDED, T.REFUNDED}),
    T.PARTIALLY_REFUNDED: frozenset({T.PARTIALLY_REFUNDED, T.REFUNDED}),
    T.FAILED: frozenset(),
    T.REFUNDED: frozenset(),
}


class IllegalTransactionTransition(Exception):
    """The transaction cannot move to that status (the HTTP layer answers 409)."""

    def __init__(self, current: TransactionStatus, target: TransactionStatus) -> None:
        super().__init__(f"transaction cannot go from {current.value!r} to {target.value!r}")
        self.current = current
        self.target = target


def transition_transaction(current: TransactionStatus, target: TransactionStatus) -> TransactionStatus:
    current, target = TransactionStatus(current), TransactionStatus(target)
    if target not in TRANSACTION_TRANSITIONS[current]:
        raise IllegalTransactionTransition(current, target)
    return target


def status_for_gateway_result(result: GatewayResult) -> TransactionStatus:
    """A timeout leaves the transaction pending: we do not know whether money moved."""
    return {
        GatewayStatus.SUCCEEDED: T.SUCCEEDED,
        GatewayStatus.DECLINED: T.FAILED,
        GatewayStatus.TIMEOUT: T.PENDING,
    }[result.status]


class RefundError(ValueError):
    """The refund request is not acceptable. ``reason``: nothing_to_refund | not_positive | exceeds_refundable."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


def refundable(paid: Money, already_refunded: Money) -> Money:
    """What is left to refund on a payment."""
    if paid.currency != already_refunded.currency:
        raise CurrencyMismatch(paid.currency, already_refunded.currency)
    if paid.is_negative() or already_refunded.is_negative():
        raise ValueError("paid and refunded amounts must not be negative")
    if already_refunded > paid:
        raise ValueError("already refunded more than was paid")
    return paid - already_refunded


def validate_refund(paid: Money, already_refunded: Money, requested: Optional[Money] = None) -> Money:
    """The amount to refund: ``requested``, or everything left when it is None."""
    remaining = refundable(paid, already_refunded)
    if remaining.is_zero():
        raise RefundError("nothing_to_refund", "the payment is already fully refunded")
    if requested is None:
        return remaining
    if requested.currency != paid.currency:
        raise CurrencyMismatch(paid.currency, requested.currency)
    if not requested.is_positive():
        raise RefundError("not_positive", "refund amount must be positive")
    if requested > remaining:
        raise RefundError("exceeds_refundable", f"at most {remaining} can be refunded")
    return requested


def status_after_refund(paid: Money, refunded_total: Money) -> TransactionStatus:
    """Status once ``refunded_total`` (all refunds so far, including the new one) is refunded."""
    left = refundable(paid, refunded_total)
    if refunded_total.is_zero():
        return T.SUCCEEDED
    return T.REFUNDED if left.is_zero() else T.PARTIALLY_REFUNDED
