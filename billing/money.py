"""Money: an exact Decimal amount in cents plus an ISO-4217 currency.

Why Decimal and not float: 0.1 + 0.2 != 0.3 in binary floating point, and a
billing system must add up to the cent. Why every amount sits at exactly two
decimal places: amounts are stored in numeric(12,2) columns, so a value that
cannot be stored must not exist in memory either. Computed values (proration)
are carried exactly (Fraction) and rounded once, half-to-even (banker's
rounding, which does not bias sums upwards), through ``Money.rounded``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from decimal import ROUND_HALF_EVEN, Decimal, InvalidOperation
from fractions import Fraction
from typing import Sequence, Union

CENT = Decimal("0.01")
# Largest magnitude a numeric(12,2) column holds.
MAX_AMOUNT = Decimal("9999999999.99")

# ISO-4217 currencies whose minor unit is exactly 2 digits. Zero-decimal
# (JPY, KRW) and three-decimal (BHD, KWD) currencies are refused rather than
# stored with a precision they do not have.
SUPPORTED_CURRENCIES = frozenset(
    {
        "AUD", "BRL", "CAD", "CHF", "CNY", "CZK", "DKK", "EUR", "GBP", "HKD",
        "ILS", "INR", "MXN", "NOK", "NZD", "PLN", "SEK", "SGD", "USD", "ZAR",
    }
)

_AMOUNT_TEXT = re.compile(r"^-?\d{1,10}(?:\.\d{1,2})?$")

Number = Union[Decimal, int, str]
Ratio = Union[Fraction, Decimal, int]


class InvalidAmount(ValueError):
    """The amount is not a finite, storable, cent-precise number (or is negative where it must not be)."""


class InvalidCurrency(ValueError):
    """The currency is not a supported 3-letter ISO-4217 code."""


class CurrencyMismatch(ValueError):
    """Arithmetic or comparison between two different currencies."""

    def __init__(self, left: str, right: str) -> None:
        super().__init__(f"currency mismatch: {left} vs {right}")
        self.left = left
        self.right = right


def quantize(value: Decimal | Fraction | int) -> Decimal:
    """Round an exact value to cents, half-to-even. The one rounding rule of the system."""
    if isinstance(value, bool) or isinstance(value, float):
        raise TypeError("quantize takes Decimal, Fraction or int, never float")
    if isinstance(value, Fraction):
        cents = round(value * 100)  # Fraction.__round__ rounds half to even, exactly
        return Decimal(cents).scaleb(-2)
    if isinstance(value, int):
        return Decimal(value).quantize(CENT)
    if not isinstance(value, Decimal) or not value.is_finite():
        raise InvalidAmount(f"not a finite Decimal: {value!r}")
    try:
        return value.quantize(CENT, rounding=ROUND_HALF_EVEN)
    except InvalidOperation as exc:  # more digits than the Decimal context holds
        raise InvalidAmount(f"amount out of range: {value}") from exc


def parse_amount(value: Number, *, allow_negative: bool = False) -> Decimal:
    """Strictly parse an amount given by a caller: refuse floats, NaN/inf, sub-cent digits.

    Strings must look like ``123`` or ``123.45`` (no exponent, no spaces), so
    "1e3" or "9.999" never sneak in. Sub-cent precision is an error, not
    silently rounded: the caller should say what they mean.
    """
    if isinstance(value, bool) or isinstance(value, float):
        raise TypeError("amounts must be Decimal, int or str, never float or bool")
    if isinstance(value, str):
        text = value.strip()
        if not _AMOUNT_TEXT.match(text):
            raise InvalidAmount(f"malformed amount: {value!r}")
        amount = Decimal(text)
    elif isinstance(value, int):
        amount = Decimal(value)
    elif isinstance(value, Decimal):
        amount = value
    else:
        raise TypeError(f"unsupported amount type: {type(value).__name__}")
    return _checked(amount, allow_negative=allow_negative)


def _checked(amount: Decimal, *, allow_negative: bool) -> Decimal:
    if not amount.is_finite():
        raise InvalidAmount(f"amount must be finite, got {amount}")
    if abs(amount) > MAX_AMOUNT:
        raise InvalidAmount(f"amount exceeds {MAX_AMOUNT}: {amount}")
    try:
        cents = amount.quantize(CENT)
    except InvalidOperation as exc:  # pragma: no cover - guarded by the range check
        raise InvalidAmount(f"amount not representable: {amount}") from exc
    if cents != amount:
        raise InvalidAmount(f"amount has more than 2 decimal places: {amount}")
    if cents < 0 and not allow_negative:
        raise InvalidAmount(f"amount must not be negative: {amount}")
    if cents == 0:
        cents = Decimal("0.00")  # drop the sign of -0.00
    return cents


def normalize_currency(currency: str) -> str:
    if not isinstance(currency, str):
        raise InvalidCurrency(f"currency must be a string, got {type(currency).__name__}")
    code = currency.strip().upper()
    if code not in SUPPORTED_CURRENCIES:
        raise InvalidCurrency(f"unsupported currency: {currency!r}")
    return code


@dataclass(frozen=True, slots=True)
class Money:
    """An amount of one currency. Negative values are allowed (credits, net proration)."""

    amount: Decimal
    currency: str

    def __post_init__(self) -> None:
        # Normalise once so equal values have equal repr/str/hash.
        object.__setattr__(self, "currency", normalize_currency(self.currency))
        object.__setattr__(self, "amount", parse_amount(self.amount, allow_negative=True))

    # -- construction -------------------------------------------------------

    @classmethod
    def of(cls, value: Number, currency: str, *, allow_negative: bool = False) -> Money:
        """Parse a caller-supplied amount, e.g. ``Money.of("9.99", "USD")``. Non-negative by default."""
        return cls(parse_amount(value, allow_negative=allow_negative), currency)

    @classmethod
    def zero(cls, currency: str) -> Money:
        return cls(Decimal("0.00"), currency)

    @classmethod
    def rounded(cls, value: Decimal | Fraction | int, currency: str) -> Money:
        """Build from an exact computed value, rounding half-to-even to cents."""
        return cls(quantize(value), currency)

    # -- arithmetic (same currency only) ------------------------------------

    def _same(self, other: object) -> Money:
        if not isinstance(other, Money):
            raise TypeError(f"expected Money, got {type(other).__name__}")
        if other.currency != self.currency:
            raise CurrencyMismatch(self.currency, other.currency)
        return other

    def __add__(self, other: Money) -> Money:
        return Money(self.amount + self._same(other).amount, self.currency)

    def __sub__(self, other: Money) -> Money:
        return Money(self.amount - self._same(other).amount, self.currency)

    def __neg__(self) -> Money:
        return Money(-self.amount, self.currency)

    def __lt__(self, other: Money) -> bool:
        return self.amount < self._same(other).amount

    def __le__(self, other: Money) -> bool:
        return self.amount <= self._same(other).amount

    def __gt__(self, other: Money) -> bool:
        return self.amount > self._same(other).amount

    def __ge__(self, other: Money) -> bool:
        return self.amount >= self._same(other).amount

    def is_zero(self) -> bool:
        return self.amount == 0

    def is_positive(self) -> bool:
        return self.amount > 0

    def is_negative(self) -> bool:
        return self.amount < 0

    # -- ratios --------------------------------------------------------------

    def scaled(self, ratio: Ratio) -> Money:
        """``self * ratio``, computed exactly and rounded once (half-to-even)."""
        return Money.rounded(Fraction(self.amount) * _fraction(ratio), self.currency)

    def allocate(self, weights: Sequence[Ratio]) -> list[Money]:
        """Split into parts proportional to ``weights`` that sum back to exactly ``self``.

        Largest-remainder method: every part is floored to the cent, then the
        leftover cents go to the parts with the biggest remainders (earlier
        parts win ties), so no cent is created or lost.
        """
        ratios = [_fraction(w) for w in weights]
        if not ratios or any(r < 0 for r in ratios) or sum(ratios) == 0:
            raise ValueError("weights must be non-negative and not all zero")
        total_cents = int(self.amount * 100)
        whole = sum(ratios)
        exact = [total_cents * r / whole for r in ratios]
        parts = [_floor(e) for e in exact]
        leftover = total_cents - sum(parts)
        by_remainder = sorted(range(len(parts)), key=lambda i: (-(exact[i] - parts[i]), i))
        for i in by_remainder[:leftover]:
            parts[i] += 1
        return [Money(Decimal(p).scaleb(-2), self.currency) for p in parts]

    def __str__(self) -> str:
        return f"{self.amount} {self.currency}"


def _floor(value: Fraction) -> int:
    return value.numerator // value.denominator


def _fraction(ratio: Ratio) -> Fraction:
    if isinstance(ratio, bool) or isinstance(ratio, float):
        raise TypeError("ratios must be Fraction, Decimal or int, never float")
    if isinstance(ratio, Decimal) and not ratio.is_finite():
        raise InvalidAmount(f"ratio must be finite, got {ratio}")
    return Fraction(ratio)
