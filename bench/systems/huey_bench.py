"""Huey: ``SqliteHuey`` with a process consumer of ``workers`` workers.

Options (the system's variant): ``{"tuned": true}`` polls every millisecond, in the consumer
(``-d 0.001 -m 0.01``) and in ``Result.get`` (``backoff=1.0, max_delay=0.001``); otherwise the
defaults (consumer ``-d 0.1 -m 10 -b 1.15``, ``Result.get`` from 50 ms backing off to 1 s).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from bench.systems.common import Session, child_pids, main

TUNED_CONSUMER = ["-d", "0.001", "-m", "0.01"]
TUNED_GET = {"backoff": 1.0, "max_delay": 0.001}

# W4: ``python -c`` this (``$workers``, ``$consumer_args``, ``$get_args`` filled in): import to
# first result, the consumer's start included.
COLD_START = """
import os, signal, subprocess, sys
os.environ["BENCH_HUEY_DB"] = os.path.join("$tmp", "huey.db")
from bench.systems.huey_tasks import noop
cmd = [sys.executable, "-m", "huey.bin.huey_consumer", "bench.systems.huey_tasks.huey",
       "-w", "$workers", "-k", "process", "-q"] + $consumer_args
consumer = subprocess.Popen(cmd, stdout=subprocess.DEVNULL)
print("RESULT", noop(1).get(blocking=True, timeout=60, **$get_args), flush=True)
consumer.send_signal(signal.SIGINT)
consumer.wait()
"""


def cold_start_values(options: dict[str, Any]) -> dict[str, str]:
    tuned = bool(options.get("tuned"))
    return {
        "consumer_args": repr(TUNED_CONSUMER if tuned else []),
        "get_args": repr(TUNED_GET if tuned else {}),
    }


class HueySession(Session):
    def __init__(self, workers: int, consumer: subprocess.Popen[bytes], tuned: bool) -> None:
        super().__init__(workers)
        from bench.systems import huey_tasks

        self.tasks = {"noop": huey_tasks.noop, "nap": huey_tasks.nap}
        self.consumer = consumer
        self.get_options: dict[str, Any] = dict(TUNED_GET) if tuned else {}

    def map(self, fn: str, items: list[Any]) -> list[Any]:
        pending = [self.tasks[fn](item) for item in items]
        return [r.get(blocking=True, timeout=600, **self.get_options) for r in pending]

    def call(self, fn: str, item: Any) -> Any:
        return self.tasks[fn](item).get(blocking=True, timeout=600, **self.get_options)

    def worker_pids(self) -> list[int] | None:
        # The consumer starts its worker processes, then its scheduler process.
        return sorted(child_pids(self.consumer.pid))[: self.workers] or None


@contextmanager
def open_session(workers: int, options: dict[str, Any]) -> Iterator[Session]:
    tuned = bool(options.get("tuned"))
    with tempfile.TemporaryDirectory(prefix="huey-bench-") as tmp:
        os.environ["BENCH_HUEY_DB"] = os.path.join(tmp, "huey.db")
        cmd = [sys.executable, "-m", "huey.bin.huey_consumer", "bench.systems.huey_tasks.huey"]
        cmd += ["-w", str(workers), "-k", "process", "-q"]
        cmd += TUNED_CONSUMER if tuned else []
        consumer = subprocess.Popen(cmd, stdout=subprocess.DEVNULL)
        try:
            session = HueySession(workers, consumer, tuned)
            session.notes["consumer"] = " ".join(cmd[3:])
            session.notes["result_get"] = session.get_options or "defaults"
            yield session
        finally:
            consumer.send_signal(signal.SIGINT)  # graceful stop
            try:
                consumer.wait(10)
            except subprocess.TimeoutExpired:
                consumer.kill()
                consumer.wait()


if __name__ == "__main__":
    main(open_session)
