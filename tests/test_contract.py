"""The executor contract: what every executor must give a run, written once and run against
each executor in ``EXECUTORS`` (huey's storage-tests pattern). Only the public API is
used; what depends on a process model (a pid, an exit code, a signal) is marked with
``@pytest.mark.needs(capability)`` and skipped for executors without it.

To run the suite on a new executor, add it to ``EXECUTORS`` with its capabilities.
"""

from __future__ import annotations

import functools
import os
import signal
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

import nbtasks
from nbtasks import AbortRun, AttemptStatus, Queue, Retry, RunStatus, context, metadata, task
from nbtasks.client import config

from conftest import wait_for

# name -> (what configure(executor=...) takes, given the fixture request; the capabilities
# of its attempts). The Dask executor runs on a LocalCluster(processes=True) of two
# single-threaded workers, started once per test session (conftest.dask_cluster).
EXECUTORS: dict[str, tuple[Callable[[pytest.FixtureRequest], Any], frozenset[str]]] = {
    "local": (lambda request: "local", frozenset({"pid", "exit_code", "signal"})),
    "dask": (
        lambda request: nbtasks.DaskExecutor(request.getfixturevalue("dask_cluster")),
        frozenset({"pid", "exit_code", "signal"}),  # of the process on the Dask worker
    ),
}


@pytest.fixture(params=sorted(EXECUTORS))
def executor(request: pytest.FixtureRequest, store_path: str) -> Iterator[str]:
    """nbtasks on a fresh store and two workers of this executor."""
    choice, capabilities = EXECUTORS[request.param]
    for mark in request.node.iter_markers("needs"):
        missing = set(mark.args) - capabilities
        if missing:  # every executor here reports all three: a new one must say how
            pytest.fail(f"the {request.param} executor does not report {sorted(missing)}: "
                        "give its tests of a process model another way")  # fmt: skip
    nbtasks.configure(store=store_path, workers=2, executor=choice(request))
    yield request.param
    nbtasks.shutdown()
    nbtasks.configure(executor="local")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def _statuses_of(run_id: str) -> list[str]:
    """Every status the run passed through, from its recorded events."""
    rows = nbtasks.runs.sql(
        'SELECT status FROM run_events WHERE run_id = ? ORDER BY "at"', [run_id]
    ).fetchall()
    return [status for (status,) in rows]


# -- tasks -----------------------------------------------------------------------------


@task
def double(x: int) -> int:
    return 2 * x


@task
def raise_value_error(message: str) -> None:
    raise ValueError(message)


@task(retry=Retry(max_attempts=3, min_delay=0.05, factor=2.0, randomize=False))
def third_time_lucky(_: object) -> int:
    if context().attempt_number < 3:
        raise ConnectionError(f"attempt {context().attempt_number}")
    return context().attempt_number


@task(retry=Retry(max_attempts=3, min_delay=0.01))
def give_up(_: object) -> None:
    raise AbortRun("not worth retrying")


@task
def write_then_hang(path: str) -> None:
    """Writes its pid, then keeps appending to ``path`` until it is stopped."""
    Path(path + ".pid").write_text(str(os.getpid()))
    while True:
        with open(path, "a") as f:
            f.write(".")
        time.sleep(0.01)


@task
def exit_with(code: int) -> None:
    os._exit(code)


@task
def kill_self(_: object) -> None:
    os.kill(os.getpid(), signal.SIGKILL)


@task(memory_limit="150MiB")
def hog(_: object) -> None:
    hoard = []
    while True:
        hoard.append(b"x" * (16 << 20))
        time.sleep(0.002)


@task
def child(x: int) -> int:
    return x + 1


@task
def parent(n: int) -> int:
    return sum(child.batch_trigger_and_wait(list(range(n))).unwrap())


@task
def nest(depth: int) -> int:
    """Each level waits on the next: deeper than the worker count, never a deadlock."""
    return 0 if depth == 0 else 1 + nest.trigger_and_wait(depth - 1).unwrap()


@task
def talk(lines: int) -> str:
    for i in range(lines):
        print(f"line {i}", flush=True)
        metadata.set("progress", (i + 1) / lines)
        time.sleep(0.05)
    display(_Html())  # type: ignore[name-defined]  # noqa: F821  (the worker's display)
    return "done"


class _Html:
    def _repr_html_(self) -> str:
        return "<b>hi</b>"


@task(queue=Queue("contract-one-at-a-time", concurrency_limit=1))
def one_at_a_time(path: str) -> None:
    with open(path, "a") as f:
        f.write(f"start {time.monotonic()}\n")
    time.sleep(0.05)
    with open(path, "a") as f:
        f.write(f"end {time.monotonic()}\n")


# -- the contract ------------------------------------------------------------------------


def test_a_run_completes_with_its_output(executor: str) -> None:
    result = double.trigger_and_wait(21)
    assert (result.status, result.output) == (RunStatus.COMPLETED, 42)
    (attempt,) = result.run.attempts
    assert attempt.status is AttemptStatus.COMPLETED


def test_a_failure_keeps_its_type_and_message(executor: str) -> None:
    result = raise_value_error.trigger_and_wait("bad input")
    assert result.status is RunStatus.FAILED
    with pytest.raises(ValueError, match="bad input"):
        result.unwrap()


def test_retries_back_off_then_complete(executor: str) -> None:
    result = third_time_lucky.trigger_and_wait(None)
    assert (result.status, result.output) == (RunStatus.COMPLETED, 3)
    attempts = result.run.attempts
    assert [a.status for a in attempts] == [AttemptStatus.FAILED] * 2 + [AttemptStatus.COMPLETED]
    assert (attempts[2].started_at - attempts[1].finished_at).total_seconds() >= 0.1
    assert RunStatus.REATTEMPTING.value in _statuses_of(result.run.id)


def test_abort_run_fails_without_retrying(executor: str) -> None:
    result = give_up.trigger_and_wait(None)
    assert result.status is RunStatus.FAILED
    assert len(result.run.attempts) == 1


def _watch_body(tmp_path: Path, trigger: Callable[[str], Any]) -> tuple[Any, Path, int]:
    path = tmp_path / "body.log"
    handle = trigger(str(path))
    wait_for(lambda: Path(str(path) + ".pid").exists() and path.exists(), "the body to run")
    return handle, path, int(Path(str(path) + ".pid").read_text())


def _stopped(path: Path) -> bool:
    size = path.stat().st_size
    time.sleep(0.2)
    return path.stat().st_size == size


def test_cancel_stops_the_running_body(executor: str, tmp_path: Path) -> None:
    handle, path, _ = _watch_body(tmp_path, write_then_hang.trigger)
    assert handle.cancel().status is RunStatus.CANCELED
    assert wait_for(lambda: _stopped(path), "the canceled body to stop", 10)
    assert double.trigger_and_wait(1).output == 2  # the executor goes on


def test_max_duration_times_out_and_stops_the_body(executor: str, tmp_path: Path) -> None:
    handle, path, _ = _watch_body(tmp_path, lambda p: write_then_hang.trigger(p, max_duration=1.0))
    result = handle.wait(timeout=30)
    assert result.status is RunStatus.TIMED_OUT
    assert result.run.attempts[-1].status is AttemptStatus.TIMED_OUT
    assert wait_for(lambda: _stopped(path), "the timed-out body to stop", 10)


@pytest.mark.needs("pid")
def test_cancel_ends_the_attempts_process(executor: str, tmp_path: Path) -> None:
    handle, _, pid = _watch_body(tmp_path, write_then_hang.trigger)
    run = handle.cancel()
    assert run.attempts[-1].pid == pid
    assert wait_for(lambda: not _alive(pid), "the attempt's process to end", 10)


def test_a_dying_process_is_crashed(executor: str) -> None:
    result = exit_with.trigger_and_wait(3)
    assert result.status is RunStatus.CRASHED
    assert result.run.attempts[-1].status is AttemptStatus.CRASHED
    assert double.trigger_and_wait(2).output == 4  # the next runs are fine


@pytest.mark.needs("exit_code")
def test_a_crash_records_the_exit_code(executor: str) -> None:
    assert exit_with.trigger_and_wait(3).run.attempts[-1].exit_code == 3


@pytest.mark.needs("signal")
def test_a_crash_records_the_signal(executor: str) -> None:
    assert kill_self.trigger_and_wait(None).run.attempts[-1].signal == signal.SIGKILL


def test_memory_limit_crashes_out_of_memory(executor: str) -> None:
    result = hog.trigger_and_wait(None)
    assert result.status is RunStatus.CRASHED
    (attempt,) = result.run.attempts
    assert attempt.oom is True
    assert "memory_limit='150MiB'" in str(attempt.error)


def test_nested_batch_freezes_the_parent(executor: str) -> None:
    result = parent.trigger_and_wait(5)
    assert result.output == sum(range(1, 6))
    assert RunStatus.FROZEN.value in _statuses_of(result.run.id)


def test_a_task_shipped_by_value_triggers_and_waits_from_its_worker(executor: str) -> None:
    """A task defined where the workers cannot import it (a notebook cell; here a
    function's locals) travels by value, and can still trigger runs from its worker."""

    @task(id="by_value_child")
    def by_value_child(x: int) -> int:
        return 2 * x

    @task(id="by_value_parent")
    def by_value_parent(n: int) -> int:
        return sum(by_value_child.batch_trigger_and_wait(list(range(n))).outputs)

    assert "<locals>" in by_value_parent.__qualname__
    assert by_value_parent.trigger_and_wait(4).output == 2 * sum(range(4))


def test_nesting_deeper_than_the_workers_never_deadlocks(executor: str) -> None:
    assert nest.trigger_and_wait(5).output == 5


def test_logs_metadata_and_displays_reach_subscribers(executor: str) -> None:
    handle = talk.trigger(10)
    seen_log = seen_progress = False
    for snapshot in nbtasks.runs.subscribe(handle.id):
        if snapshot.status is RunStatus.EXECUTING and snapshot.attempts:
            seen_log |= "line 0" in snapshot.attempts[-1].stdout
            seen_progress |= 0 < snapshot.metadata.get("progress", 0) < 1
    assert seen_log and seen_progress, "live logs and metadata while the attempt ran"
    run = handle.wait().run
    assert run.metadata["progress"] == 1
    assert "line 9" in run.attempts[-1].stdout
    assert run.attempts[-1].displays[0]["text/html"] == "<b>hi</b>"


def test_a_queue_limit_holds(executor: str, tmp_path: Path) -> None:
    path = tmp_path / "queue.log"
    one_at_a_time.batch_trigger_and_wait([str(path)] * 6)
    running = most = 0
    for line in path.read_text().splitlines():
        running += 1 if line.startswith("start") else -1
        most = max(most, running)
    assert most == 1


def test_idempotency_and_delay_are_the_engines(executor: str) -> None:
    first = double.trigger(5, idempotency_key="contract")
    again = double.trigger(5, idempotency_key="contract")
    assert again.id == first.id and again.is_cached
    delayed = double.trigger(6, delay="0.3s")
    assert nbtasks.runs.retrieve(delayed.id).status is RunStatus.DELAYED
    assert delayed.wait(timeout=30).output == 12


def _local_executor_noting_pid(notes: str) -> Any:
    """An executor factory (sent to the store's server) that notes the pid it runs in."""
    from nbtasks.executor.local.pool import LocalExecutor

    with open(notes, "a") as f:
        f.write(f"{os.getpid()}\n")
    return LocalExecutor()


def test_configure_takes_a_factory_of_executors(store_path: str, tmp_path: Path) -> None:
    """``configure(executor=...)`` with a callable: it goes to the store's server, and each
    server gets a new executor from it."""
    notes = tmp_path / "made"
    factory = functools.partial(_local_executor_noting_pid, str(notes))
    nbtasks.configure(store=store_path, workers=1, executor=factory)
    try:
        assert double.trigger_and_wait(4).output == 8
        config.shutdown(stop_server=True)
        assert double.trigger_and_wait(5).output == 10
        pids = [int(line) for line in notes.read_text().split()]
        assert len(pids) == 2 and len(set(pids)) == 2 and os.getpid() not in pids
    finally:
        config.shutdown(stop_server=True)
        nbtasks.configure(executor="local")
