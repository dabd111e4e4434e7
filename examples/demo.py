"""The nbtasks demo: tasks defined in __main__ (as in a notebook), triggered, and their runs.

Run with ``scripts/demo``. It uses a fresh store in a temporary directory unless
NBTASKS_STORE is set.
"""

from __future__ import annotations

import os
import tempfile
import time

import nbtasks
from nbtasks import AbortRun, Retry, context, runs, task
from nbtasks.client.config import store_path


class Reading:
    """A class defined in __main__: instances travel to workers and back by value."""

    def __init__(self, sensor: str, value: float) -> None:
        self.sensor, self.value = sensor, value

    def __repr__(self) -> str:
        return f"Reading({self.sensor!r}, {self.value})"


@task
def square(n: int) -> int:
    return n * n


@task
def calibrate(r: Reading) -> Reading:
    return Reading(r.sensor, round(r.value * 1.01, 3))


@task(retry=Retry(max_attempts=4, min_delay=0.05, max_delay=0.2))
def flaky(p: dict[str, int]) -> str:
    attempt = context().attempt_number
    if attempt < p["succeed_on"]:
        raise ConnectionError(f"the service did not answer attempt {attempt}")
    return f"ok on attempt {attempt}"


@task
def validate(p: dict[str, int]) -> int:
    if p["n"] < 0:
        raise AbortRun("negative input: no point retrying")
    return p["n"]


@task(max_duration="300ms")
def slow(seconds: float) -> None:
    time.sleep(seconds)


@task
def crash(code: int) -> None:
    os._exit(code)


def main() -> None:
    if "NBTASKS_STORE" not in os.environ:
        nbtasks.configure(store=os.path.join(tempfile.mkdtemp(), "demo.duckdb"))

    print("square(7) ->", square.trigger_and_wait(7).unwrap())
    print("calibrate ->", calibrate.trigger_and_wait(Reading("t1", 20.0)).unwrap())

    started = time.perf_counter()
    batch = square.batch_trigger_and_wait(list(range(500)))
    elapsed = time.perf_counter() - started
    print(f"batch of 500: {batch!r} in {elapsed:.2f}s ({500 / elapsed:,.0f} runs/s)")
    print("sum of squares:", sum(batch.unwrap()))

    print("flaky ->", flaky.trigger_and_wait({"succeed_on": 3}))
    print("validate ->", validate.trigger_and_wait({"n": -1}))
    print("slow ->", slow.trigger_and_wait(5))
    print("crash ->", crash.trigger_and_wait(3))
    handle = slow.trigger(30, max_duration=None)
    time.sleep(0.3)
    print("cancel ->", runs.cancel(handle.id))

    print()
    print(f"{'task':<10} {'status':<10} {'attempts':>8} {'duration':>10}  output / error")
    for run in reversed(runs.list(limit=8)):
        duration = f"{run.duration_ms:.1f}ms" if run.duration_ms is not None else "-"
        detail = (
            run.output_preview if run.error is None else f"{run.error.type}: {run.error.message}"
        )
        print(
            f"{run.task_id:<10} {run.status.value:<10} {run.attempt_count:>8} "
            f"{duration:>10}  {detail}"
        )
    for attempt in runs.list(task="flaky", limit=1)[0].attempts:
        error = f" ({attempt.error.type}: {attempt.error.message})" if attempt.error else ""
        print(f"  flaky attempt {attempt.number}: {attempt.status.value}{error}")

    # The runs ran in the store's server, which outlives this script; the same table,
    # from a terminal: nbtasks --store STORE runs list
    store = store_path()
    print(f"\nthe store's server served them; from a terminal: nbtasks --store {store} runs list")
    if "NBTASKS_STORE" not in os.environ:  # a temporary store: stop its server too
        nbtasks.shutdown(stop_server=True)


if __name__ == "__main__":
    main()
