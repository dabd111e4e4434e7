"""Ordinary tasks used by the tests, defined in an importable module."""

from __future__ import annotations

import os
import sys
import time

from nbtasks import Retry, context, task


class CustomError(Exception):
    """An exception type the kernel can rebuild from the worker."""

    def __init__(self, code: int) -> None:
        super().__init__(f"custom failure {code}")
        self.code = code


@task
def add(p: dict[str, int]) -> int:
    return p["a"] + p["b"]


@task
def echo(p: object) -> object:
    return p


@task
def chatty(p: str) -> str:
    print(f"out: {p}")
    print(f"err: {p}", file=sys.stderr)
    return p


@task
def fail(code: int) -> None:
    raise CustomError(code)


@task(retry=Retry(max_attempts=3, min_delay=0.01, max_delay=0.02, randomize=False))
def succeed_on_third(_: object) -> int:
    n = context().attempt_number
    if n < 3:
        raise RuntimeError(f"attempt {n} fails")
    return n


@task(retry=Retry(max_attempts=3, min_delay=0.01, max_delay=0.02))
def always_fail(_: object) -> None:
    raise RuntimeError("always")


@task
def attempt_info(_: object) -> dict[str, object]:
    ctx = context()
    return {"run_id": ctx.run_id, "task_id": ctx.task_id, "attempt": ctx.attempt_number,
            "version": ctx.version, "tags": list(ctx.tags)}  # fmt: skip


@task
def size_of(p: bytes) -> int:
    return len(p)


@task
def forward(n: int) -> int:
    """Triggers a child with an ``n``-byte payload from inside a task."""
    return size_of.trigger_and_wait(bytes(n)).unwrap()


@task
def fail_some(i: int) -> int:
    """Fails for the items whose number ends in 7 (2 in every 20)."""
    if i % 10 == 7:
        raise ValueError(f"item {i}")
    return i


@task
def spawn_sleeper(pid_path: str) -> None:
    """Start a process of its own that sleeps, note its pid in ``pid_path``, and sleep."""
    import subprocess

    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(300)"])
    tmp = pid_path + ".tmp"
    with open(tmp, "w") as f:
        f.write(str(child.pid))
    os.replace(tmp, pid_path)
    time.sleep(300)


@task
def nap(seconds: float) -> float:
    """Sleeps: a run that stays EXECUTING until it is canceled or interrupted."""
    time.sleep(seconds)
    return seconds


@task
def mark(p: dict[str, object]) -> str:
    """Note this run's id in a file as its body begins (one appending write), then nap."""
    run_id = context().run_id
    fd = os.open(str(p["path"]), os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    try:
        os.write(fd, f"{run_id}\n".encode())
    finally:
        os.close(fd)
    time.sleep(float(p["nap"]))  # type: ignore[arg-type]
    return run_id


@task
def worker_pid(_: object) -> int:
    return os.getpid()
