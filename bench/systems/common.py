"""What every system module shares: the session interface, the workloads, the child's CLI.

A system module (``bench/systems/<name>_bench.py``) is run in its own process as
``python -m bench.systems.<name>_bench --workload w1 --workers 2 --n 2000``: its ``noop`` and
``nap`` functions then live in ``__main__``, as a notebook's would. It prints one line
``RESULT {json}`` on stdout; anything else it prints is ignored by ``bench/run.py``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
import traceback
from abc import ABC, abstractmethod
from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import Any

import psutil

RESULT_PREFIX = "RESULT "


def noop(x: Any) -> Any:
    return x


def nap(seconds: float) -> float:
    time.sleep(seconds)
    return seconds


# The workloads' functions by name, for systems whose workers import them by reference.
FUNCTIONS = {"noop": noop, "nap": nap}


class Session(ABC):
    """A running system with ``workers`` worker processes. Subclasses implement ``map`` and
    ``call`` with the system's own ``noop`` and ``nap``, defined in its ``__main__``."""

    def __init__(self, workers: int) -> None:
        self.workers = workers
        self.notes: dict[str, Any] = {}  # how it was set up (runner, polling...), reported

    @abstractmethod
    def map(self, fn: str, items: list[Any]) -> list[Any]:
        """Submit one task per item (``fn`` is "noop" or "nap"), then await them all."""

    @abstractmethod
    def call(self, fn: str, item: Any) -> Any:
        """Submit one task and wait for its result."""

    def worker_pids(self) -> list[int] | None:
        """The pids of the processes that execute tasks, or None if not easily found."""
        return None

    def run(self, body: Callable[[], dict[str, Any]]) -> dict[str, Any]:
        """Run a workload's body (Prefect runs it inside a flow; the rest just call it)."""
        return body()


OpenSession = Callable[[int, dict[str, Any]], AbstractContextManager[Session]]


def quantile(values: list[float], q: float) -> float:
    """The q-quantile (0 < q < 1) with linear interpolation, like numpy's default."""
    ordered = sorted(values)
    pos = (len(ordered) - 1) * q
    lo = int(pos)
    hi = min(lo + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)


def latency_summary(seconds: list[float]) -> dict[str, float]:
    return {
        "p50_ms": quantile(seconds, 0.50) * 1000,
        "p95_ms": quantile(seconds, 0.95) * 1000,
        "mean_ms": statistics.fmean(seconds) * 1000,
        "calls": len(seconds),
    }


def warm_up(session: Session, workers: int) -> None:
    """Start every worker and ship the functions before anything is timed."""
    session.map("noop", list(range(workers * 4)))
    # Naps long enough that a worker still starting when the first one is done with the
    # no-ops has its share: without this, W3 timed a pool one worker short.
    session.map("nap", [0.05] * workers * 2)
    session.call("noop", -1)


def w1_throughput(session: Session, workers: int, n: int) -> dict[str, Any]:
    items = list(range(n))
    start = time.perf_counter()
    out = session.map("noop", items)
    elapsed = time.perf_counter() - start
    if list(out) != items:
        raise AssertionError("W1: results differ from the items")
    return {"tasks_per_s": n / elapsed, "seconds": elapsed, "n": n}


def w2_latency(session: Session, workers: int, n: int) -> dict[str, Any]:
    for i in range(10):  # a few more warm calls: the path under test is submit-and-wait
        session.call("noop", i)
    latencies = []
    for i in range(n):
        t0 = time.perf_counter()
        if session.call("noop", i) != i:
            raise AssertionError("W2: wrong result")
        latencies.append(time.perf_counter() - t0)
    return latency_summary(latencies)


def w3_sleep(session: Session, workers: int, n: int, seconds: float = 0.01) -> dict[str, Any]:
    start = time.perf_counter()
    out = session.map("nap", [seconds] * n)
    elapsed = time.perf_counter() - start
    if len(out) != n:
        raise AssertionError("W3: missing results")
    return {"seconds": elapsed, "ideal_s": n * seconds / workers, "n": n}


def process_memory(pids: list[int]) -> dict[str, Any]:
    """RSS and USS (memory unique to the process) of each pid, in MiB."""
    rss, uss = [], []
    for pid in pids:
        info = psutil.Process(pid).memory_full_info()
        rss.append(info.rss / 2**20)
        uss.append(info.uss / 2**20)
    return {
        "processes": len(pids),
        "rss_mib_mean": statistics.fmean(rss),
        "uss_mib_mean": statistics.fmean(uss),
        "rss_mib_total": sum(rss),
    }


def w6_idle_workers(session: Session, workers: int, n: int) -> dict[str, Any]:
    time.sleep(1.0)  # idle: let anything started lazily settle
    pids = session.worker_pids()
    if not pids:
        raise NotImplementedError("worker processes are not found easily for this system")
    return process_memory(pids)


WORKLOADS: dict[str, Callable[[Session, int, int], dict[str, Any]]] = {
    "w1": w1_throughput,
    "w2": w2_latency,
    "w3": w3_sleep,
    "w6": w6_idle_workers,
}
# With --repeat R, the best of R rounds is reported (by this figure), every round kept.
BEST_OF: dict[str, tuple[str, Callable[..., float]]] = {
    "w1": ("tasks_per_s", max),
    "w2": ("p50_ms", min),
    "w3": ("seconds", min),
}


def child_pids(parent: int, marker: str | None = None) -> list[int]:
    """Descendants of ``parent`` (optionally only those whose command line has ``marker``)."""
    found = []
    for proc in psutil.Process(parent).children(recursive=True):
        try:
            if marker is None or marker in " ".join(proc.cmdline()):
                found.append(proc.pid)
        except psutil.Error:
            continue
    return found


def emit(result: dict[str, Any]) -> None:
    sys.stdout.write(RESULT_PREFIX + json.dumps(result) + "\n")
    sys.stdout.flush()


def main(open_session: OpenSession) -> None:
    """The child's entry point: run one workload on a fresh session, print its RESULT line."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--workload", choices=sorted(WORKLOADS), required=True)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--n", type=int, default=100)
    parser.add_argument("--options", default="{}", help="JSON: the system variant's options")
    parser.add_argument("--repeat", type=int, default=1, help="rounds; the best is reported")
    args = parser.parse_args()
    workload = WORKLOADS[args.workload]
    key, best = BEST_OF.get(args.workload, ("", max))
    result: dict[str, Any] = {"pid": os.getpid()}
    try:
        t0 = time.perf_counter()
        with open_session(args.workers, json.loads(args.options)) as session:
            result["setup_s"] = time.perf_counter() - t0

            def body() -> dict[str, Any]:
                warm_up(session, args.workers)
                rounds = [workload(session, args.workers, args.n) for _ in range(args.repeat)]
                if len(rounds) == 1 or not key:
                    return rounds[0]
                chosen = best(rounds, key=lambda r: r[key])
                return {**chosen, "rounds": [r[key] for r in rounds]}

            result.update(session.run(body))
            result["notes"] = session.notes
    except BaseException as exc:
        result["error"] = f"{type(exc).__name__}: {exc}"
        result["traceback"] = traceback.format_exc()
        emit(result)
        sys.stdout.flush()
        os._exit(1)  # a hung cluster must not keep this process alive
    emit(result)
