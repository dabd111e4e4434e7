"""Tasks the fault-injection driver (``fault_driver.py``) triggers, in an importable module:
quick ones, short sleeps (so a kill finds attempts executing), a retried one (so runs have
several attempts and pass through REATTEMPTING) and one that fails at once."""

from __future__ import annotations

import time

from nbtasks import AbortRun, Retry, context, task


@task
def noop(p: int) -> int:
    return p


@task
def nap(seconds: float) -> float:
    time.sleep(seconds)
    return seconds


@task(retry=Retry(max_attempts=3, min_delay=0.005, max_delay=0.01, randomize=False))
def flaky(p: int) -> int:
    """Fails its first attempt, completes its second."""
    if context().attempt_number == 1:
        raise RuntimeError(f"attempt 1 of {p} fails")
    return p


@task
def refuse(p: int) -> None:
    raise AbortRun(f"refused {p}")
