"""W5, nbtasks only: the store at scale. Run by ``bench/run.py`` in its own processes:

    python -m bench.store_scale fill --store PATH [--runs 100000] [--chunk 10000] [--budget 120]
    python -m bench.store_scale reopen --store PATH

``fill`` triggers the runs in chunks with ``batch_trigger_and_wait`` (stopping early, and
saying so, once ``--budget`` seconds have passed), times ``runs.list`` (no filter, then
``status=``, ``task=``, ``tag=``, and a cursor page) and ``runs.retrieve``, shuts the engine
down and measures the file. ``reopen`` times a new process's first ``runs.list()``.

Each chunk is 90% ``bench-noop`` runs (1% of all runs tagged "rare", the rest "common"),
9% ``bench-other`` runs and 1% ``bench-boom`` runs that raise ``AbortRun`` (FAILED): so the
filters select 1-9% of the store, where an index or a scan shows.
"""

from __future__ import annotations

import argparse
import os
import random
import sys
import time
from collections.abc import Callable
from typing import Any

import nbtasks
from bench.systems import nbtasks_engine
from bench.systems.common import emit, latency_summary
from nbtasks import AbortRun, BatchItem, runs, task


@task(id="bench-noop")
def noop(x: Any) -> Any:
    return x


@task(id="bench-other")
def other(x: Any) -> Any:
    return x


@task(id="bench-boom")
def boom(x: Any) -> Any:
    raise AbortRun(f"boom {x}")


def fill_chunk(start: int, size: int) -> None:
    n_other, n_boom = size * 9 // 100, size // 100
    n_noop = size - n_other - n_boom
    items = [
        BatchItem(i, tags=["rare"] if i % 100 == 0 else ["common"])
        for i in range(start, start + n_noop)
    ]
    noop.batch_trigger_and_wait(items).unwrap()
    other.batch_trigger_and_wait(list(range(n_other))).unwrap()
    failed = boom.batch_trigger_and_wait(list(range(n_boom)))
    if any(r.ok for r in failed):
        raise AssertionError("bench-boom runs should fail")


def timed(fn: Callable[[], Any], calls: int) -> dict[str, float]:
    seconds = []
    for _ in range(calls):
        t0 = time.perf_counter()
        fn()
        seconds.append(time.perf_counter() - t0)
    return latency_summary(seconds)


def store_bytes(path: str) -> int:
    return sum(os.path.getsize(p) for p in (path, path + ".wal") if os.path.exists(p))


def fill(args: argparse.Namespace) -> dict[str, Any]:
    nbtasks.configure(store=args.store, workers=args.workers)
    fill_chunk(0, 100)  # warm the workers; these runs count too
    total, chunk_rates = 100, []
    start = time.perf_counter()
    while total < args.runs and time.perf_counter() - start < args.budget:
        size = min(args.chunk, args.runs - total)
        t0 = time.perf_counter()
        fill_chunk(total, size)
        chunk_rates.append(size / (time.perf_counter() - t0))
        total += size
    fill_s = time.perf_counter() - start
    result: dict[str, Any] = {
        "runs": total,
        "target_runs": args.runs,
        "truncated": total < args.runs,
        "fill_s": fill_s,
        "fill_runs_per_s": (total - 100) / fill_s,
        "chunk_runs_per_s": chunk_rates,
    }
    first = runs.list()
    ids = [row[0] for row in runs.sql("SELECT id FROM runs ORDER BY random() LIMIT 50").fetchall()]
    middle = sorted(ids)[len(ids) // 2]
    calls = args.calls
    result["list"] = {
        "none": timed(lambda: runs.list(), calls),
        "status=FAILED": timed(lambda: runs.list(status="FAILED"), calls),
        "task=bench-other": timed(lambda: runs.list(task="bench-other"), calls),
        "tag=rare": timed(lambda: runs.list(tag="rare"), calls),
        "after=page 1": timed(lambda: runs.list(after=first.next), calls),
        "after=middle": timed(lambda: runs.list(after=middle), calls),
    }
    picks = iter(random.choices(ids, k=calls))
    result["retrieve"] = timed(lambda: runs.retrieve(next(picks)), calls)
    nbtasks_engine.stop()
    size = store_bytes(args.store)
    result["store_bytes"] = size
    result["bytes_per_run"] = size / total
    return result


def reopen(args: argparse.Namespace) -> dict[str, Any]:
    nbtasks.configure(store=args.store, workers=args.workers)
    t0 = time.perf_counter()
    page = runs.list()
    first = time.perf_counter() - t0
    t1 = time.perf_counter()
    runs.list()
    second = time.perf_counter() - t1
    nbtasks_engine.stop()
    return {"first_list_s": first, "second_list_s": second, "page_len": len(page)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("mode", choices=["fill", "reopen"])
    parser.add_argument("--store", required=True)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--runs", type=int, default=100_000)
    parser.add_argument("--chunk", type=int, default=10_000)
    parser.add_argument("--budget", type=float, default=120.0, help="seconds of filling")
    parser.add_argument("--calls", type=int, default=50)
    args = parser.parse_args()
    emit(fill(args) if args.mode == "fill" else reopen(args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
