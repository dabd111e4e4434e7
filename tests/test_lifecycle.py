"""Every status of the run engine's lifecycle, reached with real workers and a real store."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import psutil
import pytest

import nbtasks
from nbtasks import AttemptStatus, Retry, RunStatus, Task, runs, task
from nbtasks.client import config
from nbtasks.core.status import FINAL, TRANSITIONS, IllegalTransition, check_transition
from test_startup import spied, spy_env

import crashers
import tasks
from conftest import has_status, wait_for


def _pid_from(path: Path) -> int:
    return int(wait_for(lambda: path.exists() and path.read_text(), f"a pid in {path}", 10))


def _gone(pid: int, timeout: float = 5.0) -> bool:
    try:
        psutil.Process(pid).wait(timeout)
    except psutil.NoSuchProcess:
        return True
    except psutil.TimeoutExpired:
        return False
    return True


# -- tasks local to these tests -------------------------------------------------------------

KERNEL_PID = os.getpid()


def _rebuild_in_kernel_only(pid: int) -> object:
    if os.getpid() != pid:
        raise RuntimeError("this object cannot be loaded outside the kernel")
    return Unloadable()


class Unloadable:
    """Pickles fine; unpickling raises anywhere but the kernel process."""

    def __reduce__(self) -> tuple[object, ...]:
        return (_rebuild_in_kernel_only, (os.getpid(),))

    def __call__(self, payload: object) -> object:
        return payload


@task(id="crash-then-retry", retry=Retry(max_attempts=2, min_delay=0.01, randomize=False))
def crash_always(_: object) -> None:
    os._exit(7)


@task(id="abort-with-retries", retry=Retry(max_attempts=3, min_delay=0.01))
def abort_with_retries(_: object) -> None:
    raise nbtasks.AbortRun("stop now")


@task(id="timeout-with-retries", max_duration="200ms", retry=Retry(max_attempts=3, min_delay=0.01))
def timeout_with_retries(_: object) -> None:
    time.sleep(30)


@task(id="oom-with-retries", memory_limit="150MiB", retry=Retry(max_attempts=3, min_delay=0.01))
def oom_with_retries(_: object) -> None:
    hoard = []
    while True:
        hoard.append(b"x" * (16 << 20))
        time.sleep(0.002)


@task(id="slow-backoff", retry=Retry(max_attempts=2, min_delay=60, randomize=False))
def slow_backoff(_: object) -> None:
    raise RuntimeError("first attempt fails; the retry waits a minute")


# -- the transition table ---------------------------------------------------------------


def test_transition_table_covers_every_status_and_final_states_lead_nowhere() -> None:
    assert set(TRANSITIONS) == set(RunStatus)
    for status in FINAL:
        assert TRANSITIONS[status] == frozenset()
    with pytest.raises(IllegalTransition, match="COMPLETED -> EXECUTING"):
        check_transition("run_x", RunStatus.COMPLETED, RunStatus.EXECUTING)


# -- statuses --------------------------------------------------------------------------


def test_completed_run_records_its_attempt(nb: object) -> None:
    result = tasks.chatty.trigger_and_wait("hello")
    assert result.ok and result.status is RunStatus.COMPLETED
    assert result.unwrap() == "hello"
    run = runs.retrieve(result.id)
    (attempt,) = run.attempts
    assert attempt.number == 1 and attempt.status is AttemptStatus.COMPLETED
    assert isinstance(attempt.pid, int) and attempt.pid != os.getpid()
    assert attempt.exit_code is None and attempt.signal is None and attempt.oom is False
    assert attempt.stdout == "out: hello\n" and attempt.stderr == "err: hello\n"
    assert attempt.started_at <= attempt.finished_at


def test_each_attempt_keeps_only_its_own_output(store_path: str) -> None:
    """One worker runs them all in turn: output never leaks into the next attempt."""
    nbtasks.configure(store=store_path, workers=1)
    try:
        loud = tasks.chatty.trigger_and_wait("one")
        quiet = tasks.echo.trigger_and_wait("silent")
        again = tasks.chatty.trigger_and_wait("three")
        outputs = [runs.retrieve(r.id).attempts[0] for r in (loud, quiet, again)]
        assert len({a.pid for a in outputs}) == 1
        assert [(a.stdout, a.stderr) for a in outputs] == [
            ("out: one\n", "err: one\n"), ("", ""), ("out: three\n", "err: three\n"),
        ]  # fmt: skip
    finally:
        nbtasks.shutdown()


def test_payloads_and_outputs_larger_than_a_pipe_travel_whole(nb: object) -> None:
    """Messages span many reads of the pipes both ways, several at once in a batch."""
    blobs = [bytes([i]) * (3 << 20) + b"end" for i in range(3)]
    results = tasks.echo.batch_trigger_and_wait(blobs)
    assert [r.unwrap() for r in results] == blobs


def test_failed_run_keeps_the_error_and_its_type(nb: object) -> None:
    result = tasks.fail.trigger_and_wait(42)
    assert result.status is RunStatus.FAILED and not result.ok
    assert result.error is not None
    assert result.error.type == "tasks.CustomError"
    assert result.error.message == "custom failure 42"
    assert "raise CustomError(code)" in result.error.traceback
    with pytest.raises(tasks.CustomError) as info:
        result.unwrap()
    assert info.value.code == 42


def test_retries_pass_through_reattempting_then_complete(nb: object) -> None:
    # Delayed a little, so that the subscription (a round trip to the server) starts
    # before the first attempt: the server runs a run as soon as it is committed.
    handle = tasks.succeed_on_third.trigger(None, delay=0.3)
    seen = [s.status for s in runs.subscribe(handle.id)]
    assert seen[-1] is RunStatus.COMPLETED
    assert seen.count(RunStatus.REATTEMPTING) == 2
    run = handle.retrieve()
    assert [a.status for a in run.attempts] == [
        AttemptStatus.FAILED,
        AttemptStatus.FAILED,
        AttemptStatus.COMPLETED,
    ]
    assert run.output == 3 and run.attempt_count == 3
    assert run.error is None  # the failed attempts keep their errors; the run has none
    # the backoff (min_delay 10 ms, no randomness) separates the attempts
    first, second = run.attempts[0], run.attempts[1]
    assert first.finished_at is not None
    assert (second.started_at - first.finished_at).total_seconds() >= 0.01


def test_last_allowed_attempt_failing_ends_failed(nb: object) -> None:
    result = tasks.always_fail.trigger_and_wait(None)
    assert result.status is RunStatus.FAILED
    assert result.run.attempt_count == 3


def test_per_trigger_max_attempts_overrides_the_task(nb: object) -> None:
    assert tasks.always_fail.trigger_and_wait(None, max_attempts=1).run.attempt_count == 1
    assert tasks.fail.trigger_and_wait(1, max_attempts=2).run.attempt_count == 2


def test_abort_run_fails_at_once_without_retrying(nb: object) -> None:
    result = abort_with_retries.trigger_and_wait(None)
    assert result.status is RunStatus.FAILED
    assert result.run.attempt_count == 1
    assert result.error is not None and result.error.message == "stop now"


def test_exit_code_crash_is_recorded_with_output(nb: object) -> None:
    result = crashers.exit_with.trigger_and_wait(3)
    assert result.status is RunStatus.CRASHED
    (attempt,) = result.run.attempts
    assert attempt.status is AttemptStatus.CRASHED
    assert attempt.exit_code == 3 and attempt.signal is None and not attempt.oom
    assert "exit code 3" in (result.error.message if result.error else "")


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGSEGV])
def test_signal_crash_is_recorded(nb: object, sig: signal.Signals) -> None:
    result = crashers.kill_self.trigger_and_wait(int(sig))
    assert result.status is RunStatus.CRASHED
    (attempt,) = result.run.attempts
    assert attempt.signal == int(sig) and attempt.exit_code is None
    assert sig.name in (result.error.message if result.error else "")


def test_crash_is_retried_under_the_retry_policy(nb: object) -> None:
    result = crash_always.trigger_and_wait(None)
    assert result.status is RunStatus.CRASHED
    assert [a.exit_code for a in result.run.attempts] == [7, 7]


def test_out_of_memory_crashes_and_is_not_retried(nb: object) -> None:
    result = oom_with_retries.trigger_and_wait(None)
    assert result.status is RunStatus.CRASHED
    (attempt,) = result.run.attempts
    assert attempt.oom is True and attempt.signal == signal.SIGKILL
    assert result.error is not None and result.error.type == "OutOfMemory"


def test_timeout_kills_the_attempt_and_is_not_retried(nb: object) -> None:
    result = timeout_with_retries.trigger_and_wait(None)
    assert result.status is RunStatus.TIMED_OUT
    (attempt,) = result.run.attempts
    assert attempt.status is AttemptStatus.TIMED_OUT
    assert _gone(attempt.pid or -1), "the timed-out worker is still alive"


def test_timeout_kills_the_whole_process_tree(nb: object, tmp_path: Path) -> None:
    pid_file = tmp_path / "grandchild.pid"
    result = crashers.spawn_child_and_sleep.trigger_and_wait(str(pid_file), max_duration=1.0)
    assert result.status is RunStatus.TIMED_OUT
    assert _gone(_pid_from(pid_file)), "the task's child process outlived the timeout"


def test_cancel_executing_run_kills_even_a_process_ignoring_sigterm(
    nb: object, tmp_path: Path
) -> None:
    pid_file = tmp_path / "worker.pid"
    handle = crashers.ignore_sigterm.trigger(str(pid_file))
    pid = _pid_from(pid_file)
    run = handle.cancel()
    assert run.status is RunStatus.CANCELED
    assert run.attempts[-1].status is AttemptStatus.CANCELED
    assert _gone(pid), "the canceled worker survived SIGTERM + SIGKILL"
    assert handle.wait(timeout=5).status is RunStatus.CANCELED
    # the pool replaced the killed worker
    assert tasks.add.trigger_and_wait({"a": 2, "b": 2}).unwrap() == 4


def test_cancel_queued_run_never_starts_it(nb: object) -> None:
    blockers = [crashers.sleep_for.trigger(30) for _ in range(2)]
    for b in blockers:
        wait_for(has_status(b.id, RunStatus.EXECUTING), "a blocker to execute")
    queued = tasks.add.trigger({"a": 1, "b": 1})
    assert queued.retrieve().status is RunStatus.QUEUED
    run = queued.cancel()
    assert run.status is RunStatus.CANCELED and run.attempt_count == 0
    for b in blockers:
        assert b.cancel().status is RunStatus.CANCELED


def test_cancel_during_backoff(nb: object) -> None:
    handle = slow_backoff.trigger(None)
    wait_for(has_status(handle.id, RunStatus.REATTEMPTING), "the failed run to back off")
    run = handle.cancel()
    assert run.status is RunStatus.CANCELED and run.attempt_count == 1


def test_cancel_of_a_final_run_changes_nothing(nb: object) -> None:
    result = tasks.add.trigger_and_wait({"a": 1, "b": 2})
    run = runs.cancel(result.id)
    assert run.status is RunStatus.COMPLETED and run.output == 3


def test_unloadable_payload_is_a_system_failure(nb: object) -> None:
    result = tasks.echo.trigger_and_wait(Unloadable())
    assert result.status is RunStatus.SYSTEM_FAILURE
    assert result.error is not None
    assert "could not load the payload" in result.error.message
    assert "cannot be loaded outside the kernel" in result.error.message
    # the worker survived and serves the next run
    assert tasks.echo.trigger_and_wait(5).unwrap() == 5


def test_unloadable_function_is_a_system_failure(nb: object) -> None:
    unloadable = Task(Unloadable(), id="unloadable-function")
    result = unloadable.trigger_and_wait(1)
    assert result.status is RunStatus.SYSTEM_FAILURE
    assert result.error is not None
    assert "could not load the task function" in result.error.message


def test_workers_that_cannot_start_give_system_failure(
    store_path: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The server's workers cannot start (their Python cannot: see ``test_startup.SPY``,
    which breaks each worker the server launches while ``broken`` exists)."""
    broken = tmp_path / "broken"
    broken.touch()
    for name, value in spy_env(tmp_path).items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("NBTASKS_TEST_BREAK_WORKERS", str(broken))
    nbtasks.configure(store=store_path, workers=2)
    result = tasks.add.trigger_and_wait({"a": 1, "b": 1})
    assert result.status is RunStatus.SYSTEM_FAILURE
    assert result.error is not None and "could not start a worker" in result.error.message
    assert "nonexistent-python-home" in result.error.message  # the worker's own words
    assert spied(tmp_path, "launch")  # (the workers were the server's)
    broken.unlink()
    # once the environment is fixed, the same server's next trigger starts workers again
    server = nbtasks.client.config.get_engine().info["pid"]
    assert tasks.add.trigger_and_wait({"a": 1, "b": 1}).unwrap() == 2
    assert nbtasks.client.config.get_engine().info["pid"] == server


def test_stopping_the_server_interrupts_executing_and_reattempting_runs(store_path: str) -> None:
    nbtasks.configure(store=store_path, workers=2)
    executing = crashers.sleep_for.trigger(30)
    backing_off = slow_backoff.trigger(None)
    wait_for(has_status(executing.id, RunStatus.EXECUTING), "the sleeping run to execute")
    wait_for(has_status(backing_off.id, RunStatus.REATTEMPTING), "the failed run to back off")
    server = config.get_engine().info["pid"]
    nbtasks.shutdown()  # this process disconnects: the server and its runs go on
    assert runs.retrieve(executing.id).status is RunStatus.EXECUTING
    assert runs.retrieve(backing_off.id).status is RunStatus.REATTEMPTING
    assert config.get_engine().info["pid"] == server

    config.shutdown(stop_server=True)  # stops the server, and waits until it is gone
    assert not psutil.pid_exists(server) or psutil.Process(server).status() == "zombie"
    nbtasks.configure(store=store_path, workers=2)
    run = runs.retrieve(executing.id)  # (from a new server)
    assert run.status is RunStatus.INTERRUPTED
    assert run.error is not None and run.error.message == "the nbtasks server stopped"
    assert run.attempts[-1].status is AttemptStatus.INTERRUPTED
    backed_off = runs.retrieve(backing_off.id)
    assert backed_off.status is RunStatus.INTERRUPTED and backed_off.attempt_count == 1
    assert config.get_engine().info["pid"] != server


def test_every_engine_status_is_reachable_in_one_store(nb: object) -> None:
    """A summary: the statuses of this issue, all produced against one store."""
    results = [
        tasks.add.trigger_and_wait({"a": 1, "b": 1}),
        tasks.fail.trigger_and_wait(1),
        crashers.exit_with.trigger_and_wait(2),
        crashers.sleep_for.trigger_and_wait(5, max_duration=0.2),
        tasks.echo.trigger_and_wait(Unloadable()),
    ]
    handle = crashers.sleep_for.trigger(30)
    wait_for(has_status(handle.id, RunStatus.EXECUTING), "the sleeping run to execute")
    handle.cancel()
    statuses = {r.status for r in results} | {handle.retrieve().status}
    assert statuses == {
        RunStatus.COMPLETED,
        RunStatus.FAILED,
        RunStatus.CRASHED,
        RunStatus.TIMED_OUT,
        RunStatus.SYSTEM_FAILURE,
        RunStatus.CANCELED,
    }
    stored = {r.status for r in runs.list(limit=100)}
    assert stored == statuses
