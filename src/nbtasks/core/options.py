"""Validated option values: ``Retry`` and ``Queue``, and coercion from shorthand forms."""

from __future__ import annotations

import math
import random
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta

from nbtasks.core.durations import parse_duration

__all__ = ["Queue", "Retry", "coerce_queue", "coerce_retry"]

_QUEUE_NAME_MAX = 100
_DELAY_HINT = "a duration >= 0: seconds, a timedelta, or a string like '90s', '5m', '1h30m'"


@dataclass(frozen=True, slots=True, init=False)
class Retry:
    """How often a failed run is attempted, and the backoff between attempts.

    ``min_delay``/``max_delay`` accept seconds, a ``timedelta`` or a string like
    ``"5m"``, and are stored as float seconds.
    """

    max_attempts: int
    factor: float
    min_delay: float
    max_delay: float
    randomize: bool

    def __init__(
        self,
        max_attempts: int = 1,
        factor: float = 2.0,
        min_delay: float | str | timedelta = 1.0,
        max_delay: float | str | timedelta = 60.0,
        randomize: bool = True,
    ) -> None:
        if isinstance(max_attempts, bool) or not isinstance(max_attempts, int) or max_attempts < 1:
            raise ValueError(
                f"Retry(max_attempts={max_attempts!r}): max_attempts must be an integer >= 1"
            )
        if (
            isinstance(factor, bool)
            or not isinstance(factor, (int, float))
            or not math.isfinite(factor)
            or factor < 1.0
        ):
            raise ValueError(f"Retry(factor={factor!r}): factor must be a finite number >= 1.0")
        min_seconds = _delay_seconds("min_delay", min_delay)
        max_seconds = _delay_seconds("max_delay", max_delay)
        if min_seconds > max_seconds:
            raise ValueError(
                f"Retry(min_delay={min_delay!r}, max_delay={max_delay!r}): "
                "min_delay must not be greater than max_delay"
            )
        if not isinstance(randomize, bool):
            raise ValueError(f"Retry(randomize={randomize!r}): randomize must be True or False")
        object.__setattr__(self, "max_attempts", max_attempts)
        object.__setattr__(self, "factor", float(factor))
        object.__setattr__(self, "min_delay", min_seconds)
        object.__setattr__(self, "max_delay", max_seconds)
        object.__setattr__(self, "randomize", randomize)

    def delay_before(self, attempt_number: int, rand: Callable[[], float] = random.random) -> float:
        """Seconds to wait before the next attempt, after attempt ``attempt_number`` failed.

        ``min(max_delay, r * min_delay * factor ** (attempt_number - 1))`` where ``r`` is
        ``1 + rand()`` (uniform in [1, 2)) if ``randomize`` else 1.
        """
        if (
            isinstance(attempt_number, bool)
            or not isinstance(attempt_number, int)
            or attempt_number < 1
        ):
            raise ValueError(f"attempt_number={attempt_number!r} must be an integer >= 1")
        r = 1.0 + rand() if self.randomize else 1.0
        if self.min_delay == 0.0:
            return 0.0
        exponent = attempt_number - 1
        if self.factor > 1.0:
            # Past this exponent min_delay * factor**exponent exceeds max_delay: cap
            # before computing, so huge attempt numbers cannot overflow.
            limit = math.log(self.max_delay / self.min_delay) / math.log(self.factor)
            if exponent > limit:
                return self.max_delay
        try:
            growth = self.factor**exponent
        except OverflowError:
            return self.max_delay
        return min(self.max_delay, r * self.min_delay * growth)


@dataclass(frozen=True, slots=True)
class Queue:
    """A named queue; at most ``concurrency_limit`` of its runs execute at once (None: no limit)."""

    name: str
    concurrency_limit: int | None = None

    def __post_init__(self) -> None:
        name: object = self.name
        if not isinstance(name, str) or not name:
            raise ValueError(f"Queue(name={name!r}): name must be a non-empty string")
        if name.strip() != name:
            raise ValueError(f"Queue(name={name!r}): name must not start or end with whitespace")
        if len(name) > _QUEUE_NAME_MAX:
            raise ValueError(
                f"Queue(name={name!r}): name must be at most {_QUEUE_NAME_MAX} characters"
            )
        limit: object = self.concurrency_limit
        if limit is not None and (
            isinstance(limit, bool) or not isinstance(limit, int) or limit < 1
        ):
            raise ValueError(
                f"Queue(concurrency_limit={limit!r}): "
                "concurrency_limit must be None (no limit) or an integer >= 1"
            )


def coerce_retry(value: object) -> Retry | None:
    """``None``, a ``Retry``, or an int meaning ``Retry(max_attempts=value)``."""
    if value is None or isinstance(value, Retry):
        return value
    if isinstance(value, int) and not isinstance(value, bool):
        try:
            return Retry(max_attempts=value)
        except ValueError as exc:
            raise ValueError(f"retry={value!r}: {exc}") from None
    raise ValueError(
        f"retry={value!r} is not valid: use None, a number of attempts (an integer >= 1) "
        "or a Retry(...)"
    )


def check_resources(value: object) -> dict[str, float] | None:
    """``resources=``: abstract resources an attempt needs of its worker, as Dask worker
    resources (``{"GPU": 1}``): names to positive amounts."""
    if value is None:
        return None
    if (
        not isinstance(value, dict)
        or not value
        or not all(isinstance(k, str) and 0 < len(k) <= 128 for k in value)
        or not all(
            isinstance(v, (int, float)) and not isinstance(v, bool) and 0 < v < float("inf")
            for v in value.values()
        )
    ):
        raise ValueError(
            f"resources={value!r} is not valid: use a dict of resource names to positive "
            'amounts, e.g. {"GPU": 1}'
        )
    return {k: float(v) for k, v in sorted(value.items())}


def coerce_queue(value: object) -> Queue | None:
    """``None``, a ``Queue``, or a str meaning ``Queue(name=value)``."""
    if value is None or isinstance(value, Queue):
        return value
    if isinstance(value, str):
        try:
            return Queue(value)
        except ValueError as exc:
            raise ValueError(f"queue={value!r}: {exc}") from None
    raise ValueError(
        f"queue={value!r} is not valid: use None, a queue name (a str) or a Queue(...)"
    )


def _delay_seconds(option: str, value: object) -> float:
    try:
        # no maximum: a backoff is only ever a timer, never added to a date
        seconds = parse_duration(option, value, allow_none=False, maximum=None)
    except ValueError:
        raise ValueError(f"Retry({option}={value!r}): {option} must be {_DELAY_HINT}") from None
    assert seconds is not None  # allow_none=False
    return seconds
