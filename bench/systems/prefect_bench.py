"""Prefect 3: tasks ``.submit``-ted in a flow, on a local ephemeral server.

The flow uses ``ProcessPoolTaskRunner(max_workers=workers)`` where Prefect has it (3.4+),
else the default ``ThreadPoolTaskRunner`` (also chosen by the option ``{"runner": "threads"}``).
``bench/run.py`` starts this process with
``PREFECT_HOME`` in a temp dir, ``PREFECT_API_URL`` unset (so Prefect starts a temporary
local server), ``PREFECT_LOGGING_LEVEL=WARNING`` (no log line per task run) and telemetry
off (``PREFECT_SERVER_ANALYTICS_ENABLED=false``: this machine reaches no outside host).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from bench.systems.common import Session, main

# W4: ``python -c`` this (``$workers``, ``$runner`` filled in): import to first result,
# the temporary server's start included.
COLD_START = """
from prefect import flow, task, task_runners
@task
def noop(x):
    return x
runner = getattr(task_runners, "$runner", task_runners.ThreadPoolTaskRunner)
@flow(task_runner=runner(max_workers=$workers))
def cold():
    return noop.submit(1).result()
if __name__ == "__main__":
    print("RESULT", cold(), flush=True)
"""


def noop(x: Any) -> Any:
    return x


def nap(seconds: float) -> float:
    time.sleep(seconds)
    return seconds


def cold_start_values(options: dict[str, Any]) -> dict[str, str]:
    threads = options.get("runner") == "threads"
    return {"runner": "ThreadPoolTaskRunner" if threads else "ProcessPoolTaskRunner"}


class PrefectSession(Session):
    def __init__(self, workers: int, runner: str) -> None:
        super().__init__(workers)
        import prefect

        self.tasks = {
            "noop": prefect.task(noop, name="noop"),
            "nap": prefect.task(nap, name="nap"),
        }
        from prefect import task_runners

        pool = getattr(task_runners, "ProcessPoolTaskRunner", None)
        if pool is None or runner == "threads":
            pool = task_runners.ThreadPoolTaskRunner
        self.runner: Any = pool(max_workers=workers)
        self.notes["task_runner"] = f"{type(self.runner).__name__}(max_workers={workers})"
        self.notes["server"] = "ephemeral (PREFECT_API_URL unset)"

    def map(self, fn: str, items: list[Any]) -> list[Any]:
        futures = [self.tasks[fn].submit(item) for item in items]
        return [f.result() for f in futures]

    def call(self, fn: str, item: Any) -> Any:
        return self.tasks[fn].submit(item).result()

    def run(self, body: Callable[[], dict[str, Any]]) -> dict[str, Any]:
        """The workload (warm-up included) runs inside one flow run."""
        from prefect import flow

        bench_flow = flow(body, name="nbtasks-bench", task_runner=self.runner, log_prints=False)
        result: dict[str, Any] = bench_flow()
        return result


@contextmanager
def open_session(workers: int, options: dict[str, Any]) -> Iterator[Session]:
    yield PrefectSession(workers, str(options.get("runner", "processes")))


if __name__ == "__main__":
    main(open_session)
