"""The process ``test_faults.py`` kills: a kernel that drives nbtasks through its public API.

    python fault_driver.py SCENARIO STORE REPORT SEED   # drive until killed
    python fault_driver.py verify STORE                 # open the store (recovery), close it

Driving, it appends to REPORT (opened with O_APPEND, one ``write`` per group of lines) a
line ``go`` once the store is open and the workers are warm, then ``ack <run id>`` for each
run a trigger returned (only after it returned: the run is acknowledged durable), and
``final <run id> <STATUS>`` for each run a wait returned (its final state is durable). A
kill can cut the last write short: the reader counts complete lines only.
"""

from __future__ import annotations

import os
import random
import sys
import time
from collections.abc import Callable, Iterable
from typing import Any

import nbtasks
from nbtasks.client import config

# The driver's tasks (fault_tasks), imported by drive() only: the verifying process must not
# define them, or it would start the runs recovery left waiting for their task.
TASKS: list[Any] = []


class Report:
    def __init__(self, path: str) -> None:
        self._fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)

    def say(self, lines: Iterable[str]) -> None:
        data = "".join(line + "\n" for line in lines).encode()
        while data:
            data = data[os.write(self._fd, data) :]

    def acks(self, ids: Iterable[str]) -> None:
        self.say(f"ack {run_id}" for run_id in ids)

    def finals(self, results: Iterable[nbtasks.Result[Any]]) -> None:
        self.say(f"final {r.id} {r.status.value}" for r in results)


def _payload(t: Any, rng: random.Random, i: int) -> Any:
    return rng.choice((0.0, 0.002, 0.02)) if t.id == "nap" else i


def trigger_step(rng: random.Random, report: Report, i: int) -> None:
    """One trigger, of any kind of task."""
    t = rng.choice(TASKS)
    report.acks([t.trigger(_payload(t, rng, i)).id])


def batch_step(rng: random.Random, report: Report, i: int) -> None:
    """A batch trigger of 1 to 300 runs of one task."""
    t = rng.choice(TASKS)
    items = [_payload(t, rng, i * 1000 + j) for j in range(rng.randint(1, 300))]
    report.acks(h.id for h in t.batch_trigger(items).runs)


def completion_step(rng: random.Random, report: Report, i: int) -> None:
    """Short runs finishing: a batch waited for, or a single trigger-and-wait."""
    t = rng.choice(TASKS)
    if rng.random() < 0.3:
        result = t.trigger_and_wait(_payload(t, rng, i))
        report.acks([result.id])
        report.finals([result])
        return
    batch = t.batch_trigger([_payload(t, rng, i * 1000 + j) for j in range(rng.randint(5, 80))])
    report.acks(h.id for h in batch.runs)
    report.finals(batch.wait().runs)


def fold_step(rng: random.Random, report: Report, i: int) -> None:
    """A burst of thousands of rows, then a pause: the writer folds them into the tables
    once it is idle for 0.1 s, or a read folds them at once."""
    delayed = TASKS[0].batch_trigger(range(rng.randint(500, 4000)), delay="1h")
    report.acks(h.id for h in delayed.runs)
    t = rng.choice(TASKS)
    quick = t.batch_trigger([_payload(t, rng, i * 1000 + j) for j in range(rng.randint(0, 200))])
    report.acks(h.id for h in quick.runs)
    if rng.random() < 0.3:
        nbtasks.runs.list(limit=1)  # a read folds before it reads
    else:
        time.sleep(rng.uniform(0.05, 0.3))


def mixed_step(rng: random.Random, report: Report, i: int) -> None:
    """Any of triggers, batches and waits (kills followed by a damaged journal)."""
    rng.choice((trigger_step, batch_step, completion_step))(rng, report, i)


SCENARIOS: dict[str, Callable[[random.Random, Report, int], None]] = {
    "trigger": trigger_step,
    "batch": batch_step,
    "complete": completion_step,
    "fold": fold_step,
    "torn": mixed_step,
}


def drive(scenario: str, store: str, report_path: str, seed: int) -> None:
    from fault_tasks import flaky, nap, noop, refuse

    TASKS[:] = [noop, noop, noop, nap, flaky, refuse]
    rng = random.Random(seed)
    report = Report(report_path)
    nbtasks.configure(store=store, workers=2)
    # warm up: the store is open and both workers have run something
    TASKS[0].batch_trigger_and_wait([0, 1, 2, 3]).unwrap()
    report.say(["go"])
    step = SCENARIOS[scenario]
    for i in range(1 << 62):  # until killed
        step(rng, report, i)


def verify(store: str) -> None:
    """Open the store through nbtasks, so recovery runs, and close it cleanly."""
    nbtasks.configure(store=store, workers=1)
    nbtasks.runs.list(limit=1)
    config.shutdown(stop_server=True)  # the store's server closes it
    print("recovered", flush=True)


if __name__ == "__main__":
    if sys.argv[1] == "verify":
        verify(sys.argv[2])
    else:
        drive(sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]))
