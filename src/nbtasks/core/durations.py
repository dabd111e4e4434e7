"""Parse user-given durations, delays and memory sizes; format durations for display.

Every parse error is a ``ValueError`` naming the option and the value it was given.
"""

from __future__ import annotations

import math
import numbers
import re
from datetime import datetime, timedelta, timezone

__all__ = [
    "MAX_DURATION_S",
    "format_duration",
    "parse_delay",
    "parse_duration",
    "parse_memory",
]

# The longest duration an option takes: far enough for any run's delay, ttl or timeout,
# and near enough that "now + it" stays a representable time.
MAX_DURATION_S = 3650 * 86400.0
_MAX_TEXT = "3650d (10 years)"

_DURATION_HINT = "use seconds, a timedelta, or a string like '90s', '5m', '1h30m', '2d'"
_DELAY_HINT = "use a datetime, seconds, a timedelta, or a string like '90s', '5m', '1h30m', '2d'"
_MEMORY_HINT = "use a number of bytes or a string like '512MiB', '1GiB', '100MB', '64k'"

_NUMBER = r"(?:\d+(?:\.\d+)?|\.\d+)"
_PLAIN_NUMBER = re.compile(_NUMBER)
# Alternation order matters: "ms" must be tried before "m" and "s".
_DURATION_PART = re.compile(rf"\s*({_NUMBER})\s*(ms|s|m|h|d)", re.IGNORECASE)
# Seconds per unit, listed from the largest unit down: parts must come in this order.
_DURATION_UNITS = {"d": 86400.0, "h": 3600.0, "m": 60.0, "s": 1.0, "ms": 0.001}
_UNIT_RANK = {unit: rank for rank, unit in enumerate(_DURATION_UNITS)}

_MEMORY = re.compile(rf"({_NUMBER})\s*([a-z]*)", re.IGNORECASE)
_MEMORY_UNITS = {
    "": 1,
    "b": 1,
    "k": 1024,
    "kib": 1024,
    "kb": 1000,
    "m": 1024**2,
    "mib": 1024**2,
    "mb": 1000**2,
    "g": 1024**3,
    "gib": 1024**3,
    "gb": 1000**3,
    "t": 1024**4,
    "tib": 1024**4,
    "tb": 1000**4,
}


class _Invalid(Exception):
    """The value is not of an accepted form."""


class _Negative(Exception):
    """The value is well-formed but below zero."""


class _TooLong(Exception):
    """The value is well-formed but above the maximum."""


def utcnow() -> datetime:
    """The time now, in UTC (what the store records)."""
    return datetime.now(timezone.utc)


def _duration_string_seconds(text: str) -> float:
    """Seconds in a duration string without a sign; raises ``_Invalid``."""
    if _PLAIN_NUMBER.fullmatch(text):
        return float(text)
    total = 0.0
    pos = 0
    last_rank = -1
    while pos < len(text):
        match = _DURATION_PART.match(text, pos)
        if match is None:
            raise _Invalid
        unit = match.group(2).lower()
        rank = _UNIT_RANK[unit]
        if rank <= last_rank:  # repeated or out-of-order unit, e.g. "5m5m" or "30s1m"
            raise _Invalid
        last_rank = rank
        total += float(match.group(1)) * _DURATION_UNITS[unit]
        pos = match.end()
    if last_rank < 0:
        raise _Invalid
    return total


def _seconds(value: object, maximum: float | None = MAX_DURATION_S) -> float:
    """Seconds in a duration; raises ``_Invalid``, ``_Negative`` or ``_TooLong``."""
    if isinstance(value, bool):
        raise _Invalid
    if isinstance(value, timedelta):
        seconds = value.total_seconds()
    elif isinstance(value, numbers.Real):
        try:
            seconds = float(value)
        except (OverflowError, ValueError, TypeError):
            raise _Invalid from None
    elif isinstance(value, str):
        text = value.strip()
        negative = text.startswith("-")
        seconds = _duration_string_seconds(text[1:].lstrip() if negative else text)
        if negative and seconds != 0:
            seconds = -seconds
    else:
        raise _Invalid
    if math.isnan(seconds) or math.isinf(seconds):
        raise _Invalid
    if seconds < 0:
        raise _Negative
    if maximum is not None and seconds > maximum:
        raise _TooLong
    return seconds


def parse_duration(
    option: str,
    value: object,
    *,
    allow_none: bool = True,
    maximum: float | None = MAX_DURATION_S,
) -> float | None:
    """Seconds in ``value``: ``None``, seconds, a ``timedelta``, or a string like ``"1h30m"``.

    Strings are a plain number of seconds (``"10"``, ``"1.5"``) or one or more
    number-unit parts from the largest unit down (``"2d"``, ``"1h 30m"``, ``"250ms"``),
    with units ``d``, ``h``, ``m``, ``s`` and ``ms``. NaN, infinity, negative values and
    values over ``maximum`` seconds (``None``: no maximum) are refused.
    """
    if value is None:
        if allow_none:
            return None
        raise ValueError(f"{option}=None is not a valid duration: {_DURATION_HINT}")
    try:
        return _seconds(value, maximum)
    except _Invalid:
        raise ValueError(f"{option}={value!r} is not a valid duration: {_DURATION_HINT}") from None
    except _Negative:
        raise ValueError(f"{option}={value!r} must not be negative") from None
    except _TooLong:
        limit = _MAX_TEXT if maximum == MAX_DURATION_S else f"{maximum:g} seconds"
        raise ValueError(f"{option}={value!r} is too long: use at most {limit}") from None


def parse_delay(option: str, value: object, now: datetime) -> datetime | None:
    """When a delayed run may start, in UTC, or ``None`` for no delay.

    ``value`` is ``None``, a ``datetime`` (aware, or naive meaning local time) or a
    duration as accepted by :func:`parse_duration`, counted from ``now``. A time in
    the past gives ``now``. A duration is at most ``MAX_DURATION_S``. ``now`` must be an
    aware datetime.
    """
    if now.tzinfo is None or now.utcoffset() is None:
        raise ValueError(f"parse_delay: now={now!r} must be a timezone-aware datetime")
    now = now.astimezone(timezone.utc)
    if value is None:
        return None
    if isinstance(value, datetime):
        try:
            when = value.astimezone(timezone.utc)
        except (OverflowError, OSError, ValueError):
            raise ValueError(
                f"{option}={value!r} is out of the range of representable times"
            ) from None
        return max(when, now)
    try:
        seconds = _seconds(value)
    except _Invalid:
        raise ValueError(f"{option}={value!r} is not a valid delay: {_DELAY_HINT}") from None
    except _Negative:
        raise ValueError(f"{option}={value!r} must not be negative") from None
    except _TooLong:
        raise ValueError(
            f"{option}={value!r} is too far in the future: use at most {_MAX_TEXT}, or a datetime"
        ) from None
    return now + timedelta(seconds=seconds)


def parse_memory(option: str, value: object) -> int | None:
    """Bytes in ``value``: ``None``, a positive number of bytes, or a string like ``"512MiB"``.

    ``KiB``/``MiB``/``GiB``/``TiB`` and the single letters ``k``/``m``/``g``/``t`` are
    powers of 1024; ``KB``/``MB``/``GB``/``TB`` are powers of 1000. Units are
    case-insensitive; a fractional number of bytes is rounded down.
    """
    if value is None:
        return None
    invalid = f"{option}={value!r} is not a valid memory size: {_MEMORY_HINT}"
    not_positive = f"{option}={value!r} must be greater than zero bytes"
    size: int
    if isinstance(value, bool):
        raise ValueError(invalid)
    if isinstance(value, int):
        size = value
    elif isinstance(value, float):
        if not math.isfinite(value) or not value.is_integer():
            raise ValueError(invalid)
        size = int(value)
    elif isinstance(value, str):
        text = value.strip()
        negative = text.startswith("-")
        match = _MEMORY.fullmatch(text[1:].lstrip() if negative else text)
        if match is None or match.group(2).lower() not in _MEMORY_UNITS:
            raise ValueError(invalid)
        number, unit = match.group(1), _MEMORY_UNITS[match.group(2).lower()]
        if number.isdigit():  # "64MiB": no need of decimal (about 1.5 ms to import)
            size = int(number) * unit
        else:
            from decimal import Decimal  # exact

            size = int(Decimal(number) * unit)
        if negative:
            size = -size
    else:
        raise ValueError(invalid)
    if size <= 0:
        raise ValueError(not_positive)
    return size


def format_duration(seconds: float) -> str:
    """A short display form: ``"12ms"``, ``"1.50s"``, ``"1m30s"``, ``"1h2m5s"``, ``"1d0h0m0s"``."""
    if math.isnan(seconds):
        return "nan"
    if seconds < 0:
        return "-" + format_duration(-seconds)
    if math.isinf(seconds):
        return "inf"
    if seconds < 1:
        millis = round(seconds * 1000)
        if millis < 1000:
            return f"{millis}ms"
    if seconds < 60:
        text = f"{seconds:.2f}"
        if float(text) < 60:
            return f"{text}s"
    total = round(seconds)
    minutes, secs = divmod(total, 60)
    hours, minutes = divmod(minutes, 60)
    days, hours = divmod(hours, 24)
    parts = [(days, "d"), (hours, "h"), (minutes, "m"), (secs, "s")]
    first = next(i for i, (amount, _) in enumerate(parts) if amount)
    return "".join(f"{amount}{unit}" for amount, unit in parts[first:])
