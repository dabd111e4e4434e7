"""Bad input gets a clear error naming the option and the value, and creates no run."""

from __future__ import annotations

import json
import re
import sqlite3
from datetime import timedelta
from typing import Any

import pytest

import nbtasks
from nbtasks import Retry, Task, metadata, runs, task

import tasks


def _noop(p: object) -> object:
    return p


@pytest.mark.parametrize(
    ("options", "pattern"),
    [
        ({"retry": "3"}, r"retry='3'"),
        ({"retry": Retry(max_attempts=2), "max_duration": "5x"}, r"max_duration='5x'"),
        ({"max_duration": -1}, r"max_duration=-1"),
        ({"memory_limit": "lots"}, r"memory_limit='lots'"),
        ({"memory_limit": 0}, r"memory_limit=0"),
        ({"ttl": "forever"}, r"ttl='forever'"),
        ({"queue": 5}, r"queue=5"),
        ({"id": "has space"}, r"id='has space'"),
        ({"id": ""}, r"id=''"),
    ],
)
def test_bad_task_options_name_the_option_and_value(options: dict, pattern: str) -> None:
    with pytest.raises(ValueError, match=pattern):
        task(**options)
    with pytest.raises(ValueError, match=pattern):
        Task(_noop, **options)


@pytest.mark.parametrize(
    ("options", "pattern"),
    [
        ({"max_attempts": 0}, r"max_attempts=0"),
        ({"max_attempts": True}, r"max_attempts=True"),
        ({"max_duration": "1y"}, r"max_duration='1y'"),
        ({"tags": 5}, r"tags=5"),
        ({"tags": ["ok", ""]}, r"tags=\['ok', ''\]"),
        ({"metadata": ["not", "a", "dict"]}, r"metadata=\['not', 'a', 'dict'\]"),
        ({"metadata": {"when": object()}}, r"metadata="),
        ({"queue": 1.5}, r"queue=1.5"),
        # too long for any date: a clear limit, not an OverflowError from datetime
        ({"idempotency_key_ttl": 1e300}, r"idempotency_key_ttl=1e\+300 is too long: use at most"),
        (
            {"idempotency_key": "k", "idempotency_key_ttl": 1e300},
            r"idempotency_key_ttl=1e\+300 is too long: use at most 3650d \(10 years\)",
        ),
        (
            {"idempotency_key": "k", "idempotency_key_ttl": "99999999d"},
            r"idempotency_key_ttl='99999999d' is too long: use at most 3650d",
        ),
        ({"ttl": "99999999d"}, r"ttl='99999999d' is too long: use at most 3650d"),
        ({"max_duration": 1e300}, r"max_duration=1e\+300 is too long: use at most 3650d"),
        ({"delay": "99999999d"}, r"delay='99999999d' is too far in the future: use at most 3650d"),
        ({"ttl": float("inf")}, r"ttl=inf is not a valid duration"),
        ({"idempotency_key": "k", "idempotency_key_ttl": -1}, r"idempotency_key_ttl=-1 must not"),
        # JSON has no nan or inf: the key holding one is named
        (
            {"metadata": {"x": float("nan")}},
            r"metadata=\{'x': nan\} is not valid: metadata\['x'\] is nan",
        ),
        (
            {"metadata": {"stats": {"rate": [1.0, float("-inf")]}}},
            r"metadata\['stats'\]\['rate'\]\[1\] is -inf; metadata is stored as JSON",
        ),
    ],
)
def test_bad_trigger_options_fail_before_any_run(nb: object, options: dict, pattern: str) -> None:
    with pytest.raises(ValueError, match=pattern):
        tasks.add.trigger({"a": 1, "b": 2}, **options)
    with pytest.raises(ValueError, match=pattern):
        tasks.add.batch_trigger_and_wait([{"a": 1, "b": 2}], **options)
    assert len(runs.list()) == 0


@pytest.mark.parametrize(
    ("options", "pattern"),
    [
        ({"max_duration": "99999999d"}, r"max_duration='99999999d' is too long: use at most 3650d"),
        ({"ttl": 1e300}, r"ttl=1e\+300 is too long: use at most 3650d \(10 years\)"),
    ],
)
def test_task_durations_beyond_the_limit_are_refused(options: dict, pattern: str) -> None:
    with pytest.raises(ValueError, match=pattern):
        task(**options)
    with pytest.raises(ValueError, match=pattern):
        Task(_noop, **options)


def test_limit_is_inclusive_and_list_period_is_checked(nb: object) -> None:
    handle = tasks.add.trigger(
        {"a": 1, "b": 2}, ttl="3650d", idempotency_key="k", idempotency_key_ttl="3650d"
    )
    assert handle.wait(timeout="15s").unwrap() == 3
    with pytest.raises(ValueError, match=r"period='99999999d' is too long: use at most 3650d"):
        runs.list(period="99999999d")
    with pytest.raises(ValueError, match=r"delay='99999999d' is too far in the future"):
        runs.reschedule(handle.id, "99999999d")


@pytest.mark.parametrize(
    ("task_options", "pattern"),
    [
        (
            {"tags": ["x"]},
            r"tags=\['x'\] is a trigger option, not a task option: pass it to \.trigger",
        ),
        ({"metadata": {}}, r"metadata=\{\} is a trigger option, not a task option"),
        ({"colour": "red"}, r"unknown task option colour='red'; the task options are: id, retry"),
    ],
)
def test_unknown_task_option_is_named(task_options: dict, pattern: str) -> None:
    with pytest.raises(TypeError, match=pattern):
        task(**task_options)
    with pytest.raises(TypeError, match=pattern):
        task(_noop, **task_options)


@pytest.mark.parametrize("task_id", ["../../x", "has space", "", 5, None])
def test_trigger_by_id_checks_the_task_id_before_any_run(nb: object, task_id: object) -> None:
    with pytest.raises(
        ValueError, match=rf"task_id={re.escape(repr(task_id))} is not a valid task id"
    ):
        runs.trigger(task_id, 1)  # type: ignore[arg-type]
    assert len(runs.list()) == 0


_NOT_A_RUN_ID = r"run_id=123 is not a run id: a run id is a string like 'run_"


@pytest.mark.parametrize(
    "call",
    [
        runs.retrieve,
        runs.wait,
        runs.cancel,
        runs.replay,
        lambda run_id: runs.reschedule(run_id, "5s"),
        runs.subscribe,
        runs.asubscribe,
    ],
    ids=["retrieve", "wait", "cancel", "replay", "reschedule", "subscribe", "asubscribe"],
)
def test_run_id_that_is_not_a_string_is_named(nb: object, call: Any) -> None:
    with pytest.raises(TypeError, match=_NOT_A_RUN_ID):
        call(123)
    assert len(runs.list()) == 0


def test_a_handle_passed_as_run_id_is_named(nb: object) -> None:
    handle = tasks.add.trigger({"a": 1, "b": 2})
    with pytest.raises(TypeError, match=r"run_id=RunHandle\(task='add'\) is not a run id"):
        runs.wait(handle)  # type: ignore[arg-type]
    assert runs.wait(handle.id, timeout=15).unwrap() == 3


def test_wait_timeout_takes_durations(nb: object) -> None:
    done = tasks.add.trigger({"a": 1, "b": 2})
    assert runs.wait(done.id, timeout="15s").unwrap() == 3
    assert done.wait(timeout=timedelta(seconds=15)).unwrap() == 3
    batch = tasks.add.batch_trigger([{"a": 1, "b": 1}])
    assert batch.wait(timeout="15s").runs[0].unwrap() == 2
    waiting = runs.trigger("not-deployed-yet", None)  # WAITING_FOR_DEPLOY: never final here
    with pytest.raises(TimeoutError):
        runs.wait(waiting.id, timeout="50ms")
    with pytest.raises(TimeoutError):
        waiting.wait(timeout=timedelta(milliseconds=50))


@pytest.mark.parametrize(
    ("timeout", "pattern"),
    [
        ("soon", r"timeout='soon' is not a valid duration: use seconds, a timedelta, or a string"),
        (-1, r"timeout=-1 must not be negative"),
        (float("nan"), r"timeout=nan is not a valid duration"),
        ([5], r"timeout=\[5\] is not a valid duration"),
        ("99999999d", r"timeout='99999999d' is too long: use at most 3650d"),
    ],
)
def test_bad_wait_timeout_is_named(nb: object, timeout: object, pattern: str) -> None:
    handle = tasks.add.trigger({"a": 1, "b": 2})
    with pytest.raises(ValueError, match=pattern):
        runs.wait(handle.id, timeout=timeout)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=pattern):
        handle.wait(timeout=timeout)  # type: ignore[arg-type]


@task(id="bad-input-nonfinite-metadata")
def _nonfinite_metadata(_: object) -> list[str]:
    """Sets good metadata, then tries nan and an overflow to inf; returns the errors."""
    metadata.set("progress", 0.5)
    errors = []
    try:
        metadata.set("progress", float("nan"))
    except ValueError as exc:
        errors.append(str(exc))
    metadata.set("rows", 1e308)
    try:
        metadata.increment("rows", 1e308)
    except ValueError as exc:
        errors.append(str(exc))
    try:
        metadata.append("log", {"rate": float("inf")})
    except ValueError as exc:
        errors.append(str(exc))
    return errors


def test_nonfinite_metadata_inside_a_task_raises_there(nb: object) -> None:
    result = _nonfinite_metadata.trigger_and_wait(None)
    errors = result.unwrap()
    assert len(errors) == 3
    assert errors[0].startswith(
        "metadata.set('progress', nan) is not valid: metadata['progress'] would be nan; "
        "metadata is stored as JSON, which has no nan or inf"
    )
    assert "metadata['rows'] would be inf" in errors[1]
    assert "metadata['log'][0]['rate'] would be inf" in errors[2]
    # what was set before stays, and nothing non-finite was stored
    assert runs.retrieve(result.id).metadata == {"progress": 0.5, "rows": 1e308}
    ((stored,),) = runs.sql("select metadata from runs where id = ?", [result.id]).fetchall()
    assert json.loads(stored) == {"progress": 0.5, "rows": 1e308}


def test_unknown_trigger_option_is_named(nb: object) -> None:
    with pytest.raises(TypeError, match=r"unknown trigger option max_retries=3"):
        tasks.add.trigger({"a": 1, "b": 2}, max_retries=3)
    assert len(runs.list()) == 0


def test_unpicklable_payload_names_the_object_and_creates_no_run(nb: object) -> None:
    with pytest.raises(nbtasks.PayloadError) as info:
        tasks.echo.trigger({"rows": [1, 2], "db": sqlite3.connect(":memory:")})
    message = str(info.value)
    assert "payload['db']" in message and "sqlite3.Connection" in message
    assert isinstance(info.value, TypeError)
    with pytest.raises(nbtasks.PayloadError, match=r"items\[1\]"):
        tasks.echo.batch_trigger([1, (x for x in range(3)), 3])
    assert len(runs.list()) == 0
    # the engine and store are unharmed
    assert tasks.echo.trigger_and_wait("fine").unwrap() == "fine"


def test_unpicklable_output_fails_the_run_with_a_clear_message(nb: object) -> None:
    @task(id="returns-a-connection")
    def returns_connection(_: object) -> object:
        import sqlite3

        return sqlite3.connect(":memory:")

    result = returns_connection.trigger_and_wait(None)
    assert result.status is nbtasks.RunStatus.FAILED
    assert result.error is not None and "dill cannot serialise" in result.error.message


def test_task_function_capturing_an_unpicklable_global_is_named(nb: object) -> None:
    global _DB
    _DB = sqlite3.connect(":memory:")

    def uses_db(_: object) -> object:
        return _DB.execute("select 1").fetchone()

    t = Task(uses_db, id="uses-global-db")
    with pytest.raises(nbtasks.PayloadError, match=r"task 'uses-global-db' global _DB"):
        t.trigger(None)
    assert len(runs.list()) == 0


def test_unknown_run_id_is_named(nb: object) -> None:
    for call in (runs.retrieve, runs.cancel, runs.wait):
        with pytest.raises(nbtasks.UnknownRunError, match="run_nope"):
            call("run_nope")


def test_calling_a_task_runs_it_in_process_without_a_run(nb: object) -> None:
    assert tasks.add({"a": 2, "b": 3}) == 5
    assert len(runs.list()) == 0


_DB: sqlite3.Connection | None = None
