"""Unit tests for nbtasks.core.durations and nbtasks.core.options."""

from __future__ import annotations

import dataclasses
import math
import re
import time
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from fractions import Fraction

import pytest

from nbtasks.core.durations import format_duration, parse_delay, parse_duration, parse_memory
from nbtasks.core.options import Queue, Retry, coerce_queue, coerce_retry

NOW = datetime(2030, 6, 1, 12, 0, 0, tzinfo=timezone.utc)


def _msg(text: str) -> str:
    return re.escape(text)


# --------------------------------------------------------------------------- parse_duration


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (0, 0.0),
        (5, 5.0),
        (2.5, 2.5),
        (Fraction(1, 4), 0.25),
        (timedelta(minutes=2), 120.0),
        (timedelta(0), 0.0),
        ("10", 10.0),
        ("1.5", 1.5),
        (".5", 0.5),
        ("0", 0.0),
        ("90s", 90.0),
        ("5m", 300.0),
        ("1h30m", 5400.0),
        ("1h 30m", 5400.0),
        ("2d", 172800.0),
        ("1.5h", 5400.0),
        ("250ms", 0.25),
        ("1m30s", 90.0),
        ("1s500ms", 1.5),
        ("1d 2h 3m 4s 5ms", 93784.005),
        ("  5 m  ", 300.0),
        ("1H30M", 5400.0),
        ("-0", 0.0),
    ],
)
def test_parse_duration_accepts(value: object, expected: float) -> None:
    result = parse_duration("max_duration", value)
    assert isinstance(result, float)
    assert result == pytest.approx(expected)


def test_parse_duration_none() -> None:
    assert parse_duration("max_duration", None) is None
    with pytest.raises(ValueError, match=_msg("max_duration=None is not a valid duration")):
        parse_duration("max_duration", None, allow_none=False)


@pytest.mark.parametrize(
    "value",
    [
        "5x",
        "",
        "   ",
        "m",
        "1h30",
        "30m1h",
        "5m5m",
        "1..5s",
        "1e3s",
        "inf",
        "nan",
        "5 minutes",
        "1hh",
        "9" * 400,
        True,
        False,
        float("nan"),
        float("inf"),
        10**400,
        [5],
        datetime(2030, 1, 1),
        b"5s",
    ],
)
def test_parse_duration_rejects(value: object) -> None:
    expected = (
        f"max_duration={value!r} is not a valid duration: use seconds, a timedelta, "
        "or a string like '90s', '5m', '1h30m', '2d'"
    )
    with pytest.raises(ValueError, match=f"^{_msg(expected)}$"):
        parse_duration("max_duration", value)


@pytest.mark.parametrize("value", [-1, -0.5, timedelta(seconds=-1), "-5m", "-10", "- 1h"])
def test_parse_duration_rejects_negative(value: object) -> None:
    with pytest.raises(ValueError, match=f"^{_msg(f'timeout={value!r} must not be negative')}$"):
        parse_duration("timeout", value)


# --------------------------------------------------------------------------- parse_delay


def test_parse_delay_none() -> None:
    assert parse_delay("delay", None, NOW) is None


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (0, NOW),
        (30, NOW + timedelta(seconds=30)),
        (1.5, NOW + timedelta(seconds=1.5)),
        (timedelta(hours=2), NOW + timedelta(hours=2)),
        ("5m", NOW + timedelta(minutes=5)),
        ("1h30m", NOW + timedelta(hours=1, minutes=30)),
        ("2d", NOW + timedelta(days=2)),
    ],
)
def test_parse_delay_durations(value: object, expected: datetime) -> None:
    result = parse_delay("delay", value, NOW)
    assert result == expected
    assert result is not None and result.utcoffset() == timedelta(0)


def test_parse_delay_future_aware_utc_datetime() -> None:
    when = NOW + timedelta(hours=1)
    assert parse_delay("start_at", when, NOW) == when


def test_parse_delay_aware_non_utc_datetime_is_converted() -> None:
    plus_two = timezone(timedelta(hours=2))
    when = datetime(2030, 6, 1, 15, 0, 0, tzinfo=plus_two)  # 13:00 UTC
    result = parse_delay("start_at", when, NOW)
    assert result == datetime(2030, 6, 1, 13, 0, 0, tzinfo=timezone.utc)
    assert result is not None
    assert result.tzinfo is timezone.utc
    assert (result.hour, result.minute) == (13, 0)


@pytest.mark.parametrize(
    "when",
    [
        NOW - timedelta(seconds=1),
        NOW - timedelta(days=365),
        datetime(2000, 1, 1, tzinfo=timezone(timedelta(hours=-7))),
        datetime(2000, 1, 1),  # naive, long past in any time zone
        NOW,
    ],
)
def test_parse_delay_past_datetime_gives_now(when: datetime) -> None:
    result = parse_delay("start_at", when, NOW)
    assert result == NOW
    assert result is not None and result.tzinfo is timezone.utc


@pytest.fixture
def eastern_local_time(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Make local time a fixed UTC-5 (POSIX TZ string: no tz database needed)."""
    monkeypatch.setenv("TZ", "EST+05")
    time.tzset()
    yield
    monkeypatch.undo()
    time.tzset()


@pytest.mark.skipif(not hasattr(time, "tzset"), reason="time.tzset exists on POSIX only")
def test_parse_delay_naive_datetime_is_local_time(eastern_local_time: None) -> None:
    naive = datetime(2030, 6, 1, 12, 0, 0)  # 12:00 at UTC-5 is 17:00 UTC
    result = parse_delay("start_at", naive, NOW)
    assert result == datetime(2030, 6, 1, 17, 0, 0, tzinfo=timezone.utc)
    assert result is not None and result.tzinfo is timezone.utc
    # 08:00 local is 13:00 UTC: one hour after NOW, not four hours before it.
    assert parse_delay("start_at", datetime(2030, 6, 1, 8, 0, 0), NOW) == NOW + timedelta(hours=1)


def test_parse_delay_non_utc_now_is_normalised() -> None:
    now = NOW.astimezone(timezone(timedelta(hours=3)))
    result = parse_delay("delay", 60, now)
    assert result == NOW + timedelta(minutes=1)
    assert result is not None and result.tzinfo is timezone.utc


def test_parse_delay_rejects_naive_now() -> None:
    with pytest.raises(ValueError, match="must be a timezone-aware datetime"):
        parse_delay("delay", 5, datetime(2030, 1, 1))


@pytest.mark.parametrize("value", ["5x", "soon", "", True, [1], b"5m", timedelta])
def test_parse_delay_rejects_invalid(value: object) -> None:
    expected = (
        f"delay={value!r} is not a valid delay: use a datetime, seconds, a timedelta, "
        "or a string like '90s', '5m', '1h30m', '2d'"
    )
    with pytest.raises(ValueError, match=f"^{_msg(expected)}$"):
        parse_delay("delay", value, NOW)


@pytest.mark.parametrize("value", [-5, "-5m", timedelta(seconds=-1)])
def test_parse_delay_rejects_negative(value: object) -> None:
    with pytest.raises(ValueError, match=f"^{_msg(f'delay={value!r} must not be negative')}$"):
        parse_delay("delay", value, NOW)


def test_parse_delay_rejects_overflow() -> None:
    with pytest.raises(ValueError, match=_msg("delay=1e+20 is too far in the future")):
        parse_delay("delay", 1e20, NOW)


# --------------------------------------------------------------------------- parse_memory


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (1, 1),
        (4096, 4096),
        (2e9, 2_000_000_000),
        ("1024", 1024),
        ("100b", 100),
        ("64k", 64 * 1024),
        ("64K", 64 * 1024),
        ("1KiB", 1024),
        ("1kb", 1000),
        ("512MiB", 512 * 1024**2),
        ("512mib", 512 * 1024**2),
        ("100MB", 100_000_000),
        ("2m", 2 * 1024**2),
        ("1GiB", 1024**3),
        ("1.5GB", 1_500_000_000),
        ("1.5GiB", 1536 * 1024**2),
        ("2g", 2 * 1024**3),
        ("2G", 2 * 1024**3),
        ("1TiB", 1024**4),
        ("3TB", 3 * 1000**4),
        ("1t", 1024**4),
        (" 256 MiB ", 256 * 1024**2),
        ("0.3k", 307),  # fractional bytes round down
        ("0.57kb", 570),  # exact decimal arithmetic, no float rounding
    ],
)
def test_parse_memory_accepts(value: object, expected: int) -> None:
    result = parse_memory("max_memory", value)
    assert result == expected
    assert type(result) is int


def test_parse_memory_none() -> None:
    assert parse_memory("max_memory", None) is None


@pytest.mark.parametrize(
    "value",
    ["", "lots", "5x", "GiB", "1 2GB", "1e9", "1PB", "1mbs", True, 1.5, math.inf, [1], b"1k"],
)
def test_parse_memory_rejects_invalid(value: object) -> None:
    expected = (
        f"max_memory={value!r} is not a valid memory size: use a number of bytes "
        "or a string like '512MiB', '1GiB', '100MB', '64k'"
    )
    with pytest.raises(ValueError, match=f"^{_msg(expected)}$"):
        parse_memory("max_memory", value)


@pytest.mark.parametrize("value", [0, -1, 0.0, "0", "0MiB", "-1GiB", "0.0001k"])
def test_parse_memory_rejects_non_positive(value: object) -> None:
    expected = f"max_memory={value!r} must be greater than zero bytes"
    with pytest.raises(ValueError, match=f"^{_msg(expected)}$"):
        parse_memory("max_memory", value)


# --------------------------------------------------------------------------- format_duration


@pytest.mark.parametrize(
    ("seconds", "expected"),
    [
        (0.0, "0ms"),
        (0.0123, "12ms"),
        (0.25, "250ms"),
        (0.9996, "1.00s"),
        (1, "1.00s"),
        (1.5, "1.50s"),
        (59.5, "59.50s"),
        (59.999, "1m0s"),
        (60, "1m0s"),
        (90, "1m30s"),
        (3600, "1h0m0s"),
        (3725, "1h2m5s"),
        (90061, "1d1h1m1s"),
        (-90, "-1m30s"),
        (math.inf, "inf"),
        (math.nan, "nan"),
    ],
)
def test_format_duration(seconds: float, expected: str) -> None:
    assert format_duration(seconds) == expected


def test_format_duration_round_trips_through_parse_duration() -> None:
    for seconds in (0.012, 1.5, 90, 3725, 90061):
        assert parse_duration("d", format_duration(seconds)) == pytest.approx(seconds)


# --------------------------------------------------------------------------- Retry


def test_retry_defaults() -> None:
    retry = Retry()
    assert (retry.max_attempts, retry.factor, retry.min_delay, retry.max_delay) == (
        1,
        2.0,
        1.0,
        60.0,
    )
    assert retry.randomize is True


def test_retry_parses_delays_and_stores_float_seconds() -> None:
    retry = Retry(max_attempts=5, factor=3, min_delay="500ms", max_delay=timedelta(minutes=2))
    assert retry.max_attempts == 5
    assert retry.factor == 3.0 and isinstance(retry.factor, float)
    assert retry.min_delay == 0.5 and isinstance(retry.min_delay, float)
    assert retry.max_delay == 120.0 and isinstance(retry.max_delay, float)
    assert Retry(min_delay=2, max_delay="1h").max_delay == 3600.0
    assert Retry(min_delay=0, max_delay=0).max_delay == 0.0


def test_retry_is_frozen_hashable_and_comparable() -> None:
    retry = Retry(max_attempts=3)
    with pytest.raises(dataclasses.FrozenInstanceError):
        retry.max_attempts = 4  # type: ignore[misc]
    assert retry == Retry(max_attempts=3, min_delay="1s", max_delay="1m")
    assert hash(retry) == hash(Retry(max_attempts=3))
    assert retry != Retry(max_attempts=4)
    assert dataclasses.replace(retry, max_attempts=4).max_attempts == 4
    assert "max_attempts=3" in repr(retry)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"max_attempts": 0}, "Retry(max_attempts=0): max_attempts must be an integer >= 1"),
        ({"max_attempts": -3}, "Retry(max_attempts=-3): max_attempts must be an integer >= 1"),
        ({"max_attempts": True}, "Retry(max_attempts=True): max_attempts must be an integer >= 1"),
        ({"max_attempts": 2.0}, "Retry(max_attempts=2.0): max_attempts must be an integer >= 1"),
        ({"max_attempts": "3"}, "Retry(max_attempts='3'): max_attempts must be an integer >= 1"),
        ({"factor": 0.5}, "Retry(factor=0.5): factor must be a finite number >= 1.0"),
        ({"factor": True}, "Retry(factor=True): factor must be a finite number >= 1.0"),
        ({"factor": math.inf}, "Retry(factor=inf): factor must be a finite number >= 1.0"),
        ({"factor": math.nan}, "Retry(factor=nan): factor must be a finite number >= 1.0"),
        ({"factor": "2"}, "Retry(factor='2'): factor must be a finite number >= 1.0"),
        ({"min_delay": "5x"}, "Retry(min_delay='5x'): min_delay must be a duration >= 0"),
        ({"min_delay": -1}, "Retry(min_delay=-1): min_delay must be a duration >= 0"),
        ({"min_delay": None}, "Retry(min_delay=None): min_delay must be a duration >= 0"),
        ({"max_delay": "soon"}, "Retry(max_delay='soon'): max_delay must be a duration >= 0"),
        (
            {"max_delay": timedelta(seconds=-5)},
            "Retry(max_delay=datetime.timedelta(days=-1, seconds=86395)): "
            "max_delay must be a duration >= 0",
        ),
        (
            {"min_delay": "2m", "max_delay": 60},
            "Retry(min_delay='2m', max_delay=60): min_delay must not be greater than max_delay",
        ),
        ({"randomize": 1}, "Retry(randomize=1): randomize must be True or False"),
        ({"randomize": None}, "Retry(randomize=None): randomize must be True or False"),
    ],
)
def test_retry_rejects(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=f"^{_msg(message)}"):
        Retry(**kwargs)  # type: ignore[arg-type]


def test_retry_delay_before_without_randomness() -> None:
    retry = Retry(max_attempts=10, factor=2.0, min_delay=1.0, max_delay=60.0, randomize=False)
    delays = [retry.delay_before(n, rand=lambda: 0.99) for n in range(1, 9)]
    assert delays == [1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 60.0, 60.0]


def test_retry_delay_before_with_fixed_rand() -> None:
    retry = Retry(max_attempts=10, factor=3.0, min_delay=2.0, max_delay=1000.0)
    # r = 1 + rand(): rand()=0.0 gives the bare backoff, rand()=0.5 multiplies it by 1.5.
    assert retry.delay_before(1, rand=lambda: 0.0) == 2.0
    assert retry.delay_before(2, rand=lambda: 0.0) == 6.0
    assert retry.delay_before(3, rand=lambda: 0.0) == 18.0
    assert retry.delay_before(1, rand=lambda: 0.5) == 3.0
    assert retry.delay_before(2, rand=lambda: 0.5) == 9.0
    assert retry.delay_before(3, rand=lambda: 0.5) == 27.0
    # 2 * 3**5 * 1.5 = 729, 2 * 3**6 = 1458 > 1000: capped.
    assert retry.delay_before(6, rand=lambda: 0.5) == 729.0
    assert retry.delay_before(7, rand=lambda: 0.0) == 1000.0


def test_retry_delay_before_randomized_is_capped_by_max_delay() -> None:
    retry = Retry(max_attempts=5, factor=2.0, min_delay=10.0, max_delay=15.0)
    assert retry.delay_before(1, rand=lambda: 0.0) == 10.0
    assert retry.delay_before(1, rand=lambda: 0.4) == 14.0
    assert retry.delay_before(1, rand=lambda: 0.9) == 15.0  # 19 capped to 15
    assert retry.delay_before(2, rand=lambda: 0.0) == 15.0  # 20 capped to 15


def test_retry_delay_before_uses_random_by_default() -> None:
    retry = Retry(max_attempts=3, factor=2.0, min_delay=1.0, max_delay=100.0)
    for _ in range(50):
        delay = retry.delay_before(2)
        assert 2.0 <= delay < 4.0


def test_retry_delay_before_factor_one_is_constant() -> None:
    retry = Retry(factor=1.0, min_delay=5, max_delay=60, randomize=False)
    assert [retry.delay_before(n) for n in (1, 2, 10, 10_000)] == [5.0] * 4


def test_retry_delay_before_zero_min_delay() -> None:
    retry = Retry(min_delay=0, max_delay=60)
    assert retry.delay_before(1, rand=lambda: 0.5) == 0.0
    assert retry.delay_before(10_000, rand=lambda: 0.5) == 0.0


@pytest.mark.parametrize("attempt", [1025, 10_000, 10**30, 10**400])
def test_retry_delay_before_large_attempt_does_not_overflow(attempt: int) -> None:
    retry = Retry(max_attempts=10, factor=2.0, min_delay=1.0, max_delay=300.0)
    assert retry.delay_before(attempt, rand=lambda: 0.5) == 300.0
    huge_factor = Retry(factor=1e300, min_delay=1e-300, max_delay=1e300, randomize=False)
    assert huge_factor.delay_before(attempt) == 1e300


@pytest.mark.parametrize("attempt", [0, -1, True, 1.0])
def test_retry_delay_before_rejects_bad_attempt_number(attempt: object) -> None:
    with pytest.raises(ValueError, match=_msg(f"attempt_number={attempt!r} must be an integer")):
        Retry().delay_before(attempt)  # type: ignore[arg-type]


# --------------------------------------------------------------------------- Queue


def test_queue_accepts() -> None:
    queue = Queue("gpu")
    assert queue.name == "gpu"
    assert queue.concurrency_limit is None
    assert Queue("gpu", concurrency_limit=2).concurrency_limit == 2
    assert Queue("x" * 100).name == "x" * 100
    assert Queue("a b").name == "a b"
    assert Queue("gpu") == Queue("gpu", None)
    assert hash(Queue("gpu", 1)) == hash(Queue("gpu", 1))
    with pytest.raises(dataclasses.FrozenInstanceError):
        queue.name = "cpu"  # type: ignore[misc]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("",), "Queue(name=''): name must be a non-empty string"),
        ((None,), "Queue(name=None): name must be a non-empty string"),
        ((5,), "Queue(name=5): name must be a non-empty string"),
        ((" gpu",), "Queue(name=' gpu'): name must not start or end with whitespace"),
        (("gpu\n",), "Queue(name='gpu\\n'): name must not start or end with whitespace"),
        (("   ",), "Queue(name='   '): name must not start or end with whitespace"),
        (("x" * 101,), f"Queue(name={'x' * 101!r}): name must be at most 100 characters"),
        (("gpu", 0), "Queue(concurrency_limit=0): concurrency_limit must be None"),
        (("gpu", -2), "Queue(concurrency_limit=-2): concurrency_limit must be None"),
        (("gpu", True), "Queue(concurrency_limit=True): concurrency_limit must be None"),
        (("gpu", 1.0), "Queue(concurrency_limit=1.0): concurrency_limit must be None"),
        (("gpu", "2"), "Queue(concurrency_limit='2'): concurrency_limit must be None"),
    ],
)
def test_queue_rejects(args: tuple[object, ...], message: str) -> None:
    with pytest.raises(ValueError, match=f"^{_msg(message)}"):
        Queue(*args)  # type: ignore[arg-type]


# --------------------------------------------------------------------------- coerce_*


def test_coerce_retry_accepts() -> None:
    assert coerce_retry(None) is None
    retry = Retry(max_attempts=4, min_delay="2s")
    assert coerce_retry(retry) is retry
    assert coerce_retry(3) == Retry(max_attempts=3)
    assert coerce_retry(1) == Retry()


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (0, "retry=0: Retry(max_attempts=0): max_attempts must be an integer >= 1"),
        (-1, "retry=-1: Retry(max_attempts=-1): max_attempts must be an integer >= 1"),
        (True, "retry=True is not valid: use None, a number of attempts"),
        (2.0, "retry=2.0 is not valid: use None, a number of attempts"),
        ("3", "retry='3' is not valid: use None, a number of attempts"),
        (Queue("q"), "retry=Queue(name='q', concurrency_limit=None) is not valid"),
    ],
)
def test_coerce_retry_rejects(value: object, message: str) -> None:
    with pytest.raises(ValueError, match=f"^{_msg(message)}"):
        coerce_retry(value)


def test_coerce_queue_accepts() -> None:
    assert coerce_queue(None) is None
    queue = Queue("gpu", concurrency_limit=1)
    assert coerce_queue(queue) is queue
    assert coerce_queue("cpu") == Queue("cpu")


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("", "queue='': Queue(name=''): name must be a non-empty string"),
        (" q", "queue=' q': Queue(name=' q'): name must not start or end with whitespace"),
        (3, "queue=3 is not valid: use None, a queue name (a str) or a Queue(...)"),
        (b"gpu", "queue=b'gpu' is not valid: use None, a queue name"),
        (Retry(), "queue=Retry(max_attempts=1, factor=2.0"),
    ],
)
def test_coerce_queue_rejects(value: object, message: str) -> None:
    with pytest.raises(ValueError, match=f"^{_msg(message)}"):
        coerce_queue(value)
