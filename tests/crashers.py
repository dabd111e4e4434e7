"""Tasks that end badly, in one place: exits, signals, memory hogs, hangs, process trees."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from nbtasks import AbortRun, task


@task
def exit_with(code: int) -> None:
    """The worker process exits with this code, without a result."""
    sys.stdout.write("about to exit\n")
    sys.stdout.flush()
    os._exit(code)


@task
def kill_self(sig: int) -> None:
    """The worker process sends itself a signal (e.g. SIGKILL, SIGSEGV)."""
    os.kill(os.getpid(), sig)
    time.sleep(10)


@task(memory_limit="200MiB")
def hog_memory(mib_per_step: int) -> int:
    """Allocates (and touches) memory until the memory limit kills the worker."""
    hoard = []
    for _ in range(10_000):
        hoard.append(b"x" * (mib_per_step << 20))
        time.sleep(0.005)
    return len(hoard)


@task
def sleep_for(seconds: float) -> float:
    time.sleep(seconds)
    return seconds


@task
def spawn_child_and_sleep(pid_file: str) -> None:
    """Starts a grandchild process (a ``sleep``), records its pid, then hangs."""
    child = subprocess.Popen(["sleep", "300"])
    Path(pid_file).write_text(str(child.pid))
    time.sleep(300)


@task
def ignore_sigterm(pid_file: str) -> None:
    """Hangs with SIGTERM ignored: only SIGKILL ends it."""
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    Path(pid_file).write_text(str(os.getpid()))
    time.sleep(300)


@task
def abort(message: str) -> None:
    raise AbortRun(message)
