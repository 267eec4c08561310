"""Timezone-aware UTC helpers shared by the pure domain.

The domain never reads the clock: every function takes ``now`` (or another
instant) as a parameter, and every instant must be timezone-aware so that
"what time is it" is never a guess about the server's local zone.
"""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

UTC = timezone.utc
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_ONE_SECOND = timedelta(seconds=1)


class NaiveDatetime(ValueError):
    """A datetime without tzinfo was given where an instant is required."""


def require_utc(value: datetime, name: str = "datetime") -> datetime:
    """Return ``value`` as a UTC datetime; refuse naive ones.

    Aware datetimes in other zones are converted (same instant), so calendar
    arithmetic downstream always happens on the UTC calendar.
    """
    if not isinstance(value, datetime):
        raise TypeError(f"{name} must be a datetime, got {type(value).__name__}")
    if value.tzinfo is None or value.utcoffset() is None:
        raise NaiveDatetime(f"{name} must be timezone-aware (UTC), got naive {value.isoformat()}")
    return value.astimezone(UTC)


def unix_seconds(value: datetime) -> int:
    """Whole seconds since the epoch, computed exactly (no float rounding)."""
    return (require_utc(value) - EPOCH) // _ONE_SECOND


def from_unix_seconds(seconds: int) -> datetime:
    return EPOCH + timedelta(seconds=seconds)
