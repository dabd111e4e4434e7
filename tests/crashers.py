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


# -- processes that leave the worker's process group, and memory hogs the watcher thread
#    cannot see in time (for the process-tree end-to-end tests) ------------------------------


def _write_pid(pid_file: str, pid: int) -> None:
    """Write atomically, so a reader polling the file never sees it half written."""
    Path(pid_file + ".tmp").write_text(str(pid))
    os.replace(pid_file + ".tmp", pid_file)


@task
def escape_new_session(pid_file: str) -> None:
    """Starts a ``sleep`` in a new session (out of the worker's process group), records its
    pid, then hangs."""
    child = subprocess.Popen(["sleep", "300"], start_new_session=True)
    _write_pid(pid_file, child.pid)
    time.sleep(300)


@task
def escape_double_fork(pid_file: str) -> None:
    """Daemon-style double fork: a child calls ``setsid()``, forks a grandchild that execs
    ``sleep 300`` and exits, orphaning it. Records the grandchild's pid, then hangs."""
    r, w = os.pipe()
    middle = os.fork()
    if middle == 0:
        try:
            os.close(r)
            os.setsid()
            grandchild = os.fork()
            if grandchild == 0:
                os.execvp("sleep", ["sleep", "300"])
            os.write(w, str(grandchild).encode())
        finally:
            os._exit(0)
    os.close(w)
    grandchild = int(os.read(r, 64))
    os.close(r)
    os.waitpid(middle, 0)
    _write_pid(pid_file, grandchild)
    time.sleep(300)


@task(memory_limit="300MiB")
def hog_gil(mib: int) -> int:
    """Allocates 30 blocks of ``mib`` MiB (call it with 100) in one list comprehension:
    each ``b"x" * n`` holds the GIL while it fills its block, so a watching thread barely
    runs in between."""
    hoard = [b"x" * (mib << 20) for _ in range(30)]
    return len(hoard)


@task(memory_limit="300MiB")
def hog_one_block(gib: int) -> int:
    """One allocation of ``gib`` GiB (call it with 3), filled while holding the GIL."""
    return len(b"x" * (gib << 30))


_HOG_CHILD = """\
import resource, sys, time
# Lift a soft RLIMIT_DATA inherited from the worker: this child must be stopped by the
# tree's memory accounting, not by its own MemoryError.
_, hard = resource.getrlimit(resource.RLIMIT_DATA)
resource.setrlimit(resource.RLIMIT_DATA, (hard, hard))
hoard = [b"x" * (50 << 20) for _ in range(12)]  # 600 MiB, written to, so resident
time.sleep(300)
"""


@task(memory_limit="200MiB")
def hog_in_child(pid_file: str) -> None:
    """Starts a child in its own session that allocates (and touches) 600 MiB and sleeps;
    records the child's pid, then hangs. Only the tree's memory passes the limit."""
    child = subprocess.Popen([sys.executable, "-c", _HOG_CHILD], start_new_session=True)
    _write_pid(pid_file, child.pid)
    time.sleep(300)
