"""Dispatch on the real pool: each attempt runs once, kills and memory limits hit only their
target, and nothing an attempt starts escapes its end (invariants I1-I3, I5 of
``engine/dispatch.py`` and ``executor/local/pool.py``)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from collections import Counter
from pathlib import Path

import psutil
import pytest

import nbtasks
from nbtasks import RunStatus, task
from nbtasks.service.client import server_pid

import crashers
from conftest import wait_for


def _alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def _pid_from(path: Path) -> int:
    return int(wait_for(lambda: path.exists() and path.read_text(), f"a pid in {path}", 20))


def _workers() -> set[int]:
    """The worker processes of the server that runs in this process (``served``)."""
    me = psutil.Process()
    return {
        p.pid for p in me.children() if "nbtasks.executor.local.worker" in " ".join(p.cmdline())
    }


@task
def log_run(path: str) -> int:
    """Appends this run's id and the worker's pid to ``path`` (one write, O_APPEND)."""
    line = f"{nbtasks.context().run_id} {os.getpid()}\n".encode()
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT)
    try:
        os.write(fd, line)
    finally:
        os.close(fd)
    return os.getpid()


def _max_overlap(runs: list[nbtasks.Run]) -> int:
    edges = []
    for run in runs:
        for a in run.attempts:
            assert a.finished_at is not None
            edges += [(a.started_at, 1), (a.finished_at, -1)]
    most = now = 0
    for _, step in sorted(edges, key=lambda e: (e[0], e[1])):
        now += step
        most = max(most, now)
    return most


def test_thousands_of_quick_runs_each_execute_once_on_the_same_two_workers(
    served: object, tmp_path: Path
) -> None:
    """I1 and I2 under send-ahead and take-back: a side-effect log shows every run's body
    exactly once, and no worker was killed and replaced."""
    log = tmp_path / "bodies.log"
    assert log_run.trigger_and_wait(str(log)).ok
    workers = _workers()
    assert len(workers) == 2
    handles = [log_run.trigger(str(log)) for _ in range(3000)]
    for h in handles:
        assert h.wait(timeout=60).ok
    batch = log_run.batch_trigger_and_wait([str(log)] * 5000)
    assert all(r.ok for r in batch)
    lines = log.read_text().split()
    ids = Counter(lines[0::2])
    assert len(ids) == 1 + 3000 + 5000
    assert [i for i, n in ids.items() if n > 1] == [], "a run's body executed twice"
    assert set(map(int, lines[1::2])) == workers, "a worker was replaced while running no-ops"
    assert _workers() == workers
    runs = [nbtasks.runs.retrieve(h.id) for h in handles[:500]]
    assert all(len(r.attempts) == 1 for r in runs)


def test_runs_never_overlap_beyond_the_worker_count(nb: object, tmp_path: Path) -> None:
    log = tmp_path / "bodies.log"
    batch = log_run.batch_trigger_and_wait([str(log)] * 2000)
    runs = [nbtasks.runs.retrieve(r.run.id) for r in batch]
    assert _max_overlap(runs) <= 2


@task(memory_limit="300MiB")
def spike(mib: int) -> int:
    """Passes its memory limit for a moment, and returns at once."""
    block = b"x" * (mib << 20)
    return len(block)


@task
def innocent(_: object) -> int:
    time.sleep(0.03)
    return 1


def test_a_memory_kill_never_hits_the_next_attempt_on_the_worker(store_path: str) -> None:
    """I3: a run that passes its memory limit just before it returns is killed for it or
    completes; the innocent run that follows on the same worker (sent ahead to it) never
    pays for it."""
    nbtasks.configure(store=store_path, workers=1)
    for _ in range(20):
        first = spike.trigger(400)
        second = innocent.trigger(None)
        result = second.wait(timeout=30)
        assert result.status is RunStatus.COMPLETED, result.run.attempts[-1]
        spiked = first.wait(timeout=30)
        if spiked.status is not RunStatus.COMPLETED:
            assert spiked.status is RunStatus.CRASHED and spiked.run.attempts[-1].oom


def test_a_cancel_that_comes_after_the_attempt_ended_hits_nothing_else(
    store_path: str, tmp_path: Path
) -> None:
    """I3: canceling a run whose body just ended while the next run starts on that worker
    leaves the next run alone."""
    nbtasks.configure(store=store_path, workers=1)
    log = tmp_path / "bodies.log"
    for _ in range(30):
        first = log_run.trigger(str(log))
        second = innocent.trigger(None)
        first.wait(timeout=30)
        nbtasks.runs.cancel(first.id)  # already final: changes nothing
        assert second.wait(timeout=30).status is RunStatus.COMPLETED


@pytest.mark.parametrize("hog", ["gil", "one_block"])
def test_memory_limit_catches_allocations_that_hold_the_gil(nb: object, hog: str) -> None:
    if hog == "gil":
        result = crashers.hog_gil.trigger_and_wait(100)
    else:
        result = crashers.hog_one_block.trigger_and_wait(3)
    assert result.status is RunStatus.CRASHED
    (attempt,) = result.run.attempts
    assert attempt.oom is True
    assert "memory_limit='300MiB'" in str(attempt.error)
    assert "209715200" not in str(attempt.error)


def test_memory_in_a_child_in_its_own_session_counts(nb: object, tmp_path: Path) -> None:
    pid_file = tmp_path / "child.pid"
    handle = crashers.hog_in_child.trigger(str(pid_file))
    child = _pid_from(pid_file)
    result = handle.wait(timeout=60)
    assert result.status is RunStatus.CRASHED
    assert result.run.attempts[-1].oom is True
    assert "memory_limit='200MiB'" in str(result.run.attempts[-1].error)
    assert wait_for(lambda: not _alive(child), "the hog child to be gone", 10)


ESCAPES = ["escape_new_session", "escape_double_fork"]


@pytest.mark.parametrize("escape", ESCAPES)
def test_cancel_kills_descendants_that_left_the_group(
    nb: object, tmp_path: Path, escape: str
) -> None:
    pid_file = tmp_path / "escaped.pid"
    handle = getattr(crashers, escape).trigger(str(pid_file))
    pid = _pid_from(pid_file)
    assert _alive(pid)
    assert handle.cancel().status is RunStatus.CANCELED
    assert wait_for(lambda: not _alive(pid), f"{escape}'s process to be killed", 10)


@pytest.mark.parametrize("escape", ESCAPES)
def test_timeout_kills_descendants_that_left_the_group(
    nb: object, tmp_path: Path, escape: str
) -> None:
    pid_file = tmp_path / "escaped.pid"
    handle = getattr(crashers, escape).trigger(str(pid_file), max_duration=2)
    pid = _pid_from(pid_file)
    assert handle.wait(timeout=30).status is RunStatus.TIMED_OUT
    assert wait_for(lambda: not _alive(pid), f"{escape}'s process to be killed", 10)


@task
def escape_then_crash(pid_file: str) -> None:
    child = subprocess.Popen(["sleep", "300"], start_new_session=True)
    Path(pid_file).write_text(str(child.pid))
    os._exit(3)


def test_a_crash_kills_descendants_that_left_the_group(nb: object, tmp_path: Path) -> None:
    pid_file = tmp_path / "escaped.pid"
    result = escape_then_crash.trigger_and_wait(str(pid_file))
    assert result.status is RunStatus.CRASHED
    pid = int(pid_file.read_text())
    assert wait_for(lambda: not _alive(pid), "the crashed attempt's process to be killed", 10)


@task
def escape_and_return(pid_file: str) -> int:
    child = subprocess.Popen(["sleep", "300"], start_new_session=True)
    Path(pid_file).write_text(str(child.pid))
    return child.pid


def test_an_attempt_ends_with_its_processes(nb: object, tmp_path: Path) -> None:
    """What an attempt leaves running is killed when it ends, so it can never be hit by a
    kill meant for the next attempt on that worker (I3), nor outlive the attempt."""
    pid = escape_and_return.trigger_and_wait(str(tmp_path / "p")).unwrap()
    assert wait_for(lambda: not _alive(pid), "the leftover process to be killed", 10)


@pytest.mark.parametrize("escape", ESCAPES)
def test_server_death_kills_descendants_that_left_the_group(tmp_path: Path, escape: str) -> None:
    """A kernel SIGKILLed leaves its run running; its store's server SIGKILLed takes the
    run's process tree with it, even the processes that left the worker's group."""
    pid_file = tmp_path / "escaped.pid"
    store = str(tmp_path / "s.duckdb")
    script = tmp_path / "kernel.py"
    script.write_text(
        textwrap.dedent(f"""
        import sys, time
        sys.path.insert(0, {str(Path(__file__).parent)!r})
        import nbtasks, crashers
        nbtasks.configure(store={store!r}, workers=1)
        crashers.{escape}.trigger({str(pid_file)!r})
        time.sleep(300)
    """)
    )
    kernel = subprocess.Popen([sys.executable, str(script)], cwd=tmp_path)
    try:
        pid = _pid_from(pid_file)
        assert _alive(pid)
    finally:
        kernel.send_signal(signal.SIGKILL)
        kernel.wait()
    server = psutil.Process(server_pid(store))
    assert _alive(pid)  # the run goes on without its kernel
    server.send_signal(signal.SIGKILL)
    assert wait_for(lambda: not _alive(pid), "the escaped process to die with the server", 15)


def test_a_sent_ahead_run_canceled_is_never_executed(nb: object, tmp_path: Path) -> None:
    """Runs sent ahead to busy workers and canceled before they start never run a body."""
    log = tmp_path / "bodies.log"
    for _ in range(5):
        handles = [log_run.trigger(str(log)) for _ in range(200)]
        canceled = {h.id for h in handles[50::3]}
        for run_id in canceled:
            nbtasks.runs.cancel(run_id)
        statuses = {h.id: h.wait(timeout=30).status for h in handles}
        ran = Counter(log.read_text().split()[0::2])
        for run_id, status in statuses.items():
            assert ran[run_id] <= 1
            if status is RunStatus.CANCELED and run_id in canceled:
                continue
            assert status is RunStatus.COMPLETED and ran[run_id] == 1
