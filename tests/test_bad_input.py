"""Bad input gets a clear error naming the option and the value, and creates no run."""

from __future__ import annotations

import sqlite3

import pytest

import nbtasks
from nbtasks import Retry, Task, runs, task

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
    ],
)
def test_bad_trigger_options_fail_before_any_run(nb: object, options: dict, pattern: str) -> None:
    with pytest.raises(ValueError, match=pattern):
        tasks.add.trigger({"a": 1, "b": 2}, **options)
    with pytest.raises(ValueError, match=pattern):
        tasks.add.batch_trigger_and_wait([{"a": 1, "b": 2}], **options)
    assert len(runs.list()) == 0


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
