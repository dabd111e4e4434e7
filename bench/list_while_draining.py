"""``runs.list()`` while a big batch drains: how long a reader waits on a busy store.

    python -m bench.list_while_draining [--runs 10000] [--workers 2] [--store PATH]

Triggers ``--runs`` quick runs in one ``batch_trigger`` (not waited on), then calls
``runs.list()`` (the first page, as the run table does) back to back until the last run is
final, and prints the latency percentiles of those calls. Each call folds what the journal
holds first, so it reads every committed state. A stress measure, not a test: no timing is
asserted anywhere.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time

import nbtasks
from nbtasks import runs, task


@task(id="drain-noop")
def noop(p: int) -> int:
    return p


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=10_000)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--store", default=None)
    args = parser.parse_args()
    folder = tempfile.mkdtemp(prefix="nbtasks-drain-")
    store = args.store or os.path.join(folder, "store.duckdb")
    nbtasks.configure(store=store, workers=args.workers)
    noop.trigger_and_wait(0)  # workers warm, store open
    batch = noop.batch_trigger(list(range(args.runs)))
    last = batch.runs[-1].id
    started = time.perf_counter()
    latencies = []
    while not runs.retrieve(last).is_final:
        t0 = time.perf_counter()
        page = runs.list()
        latencies.append(time.perf_counter() - t0)
        assert len(page) == 25
    drained = time.perf_counter() - started
    batch.wait(timeout=600)
    nbtasks.shutdown()
    ms = sorted(x * 1000 for x in latencies)

    def pct(p: float) -> float:
        return ms[min(len(ms) - 1, int(p * len(ms)))]

    print(
        f"{args.runs} runs drained in {drained:.1f} s by {args.workers} workers; "
        f"{len(ms)} runs.list() calls meanwhile: p50 {statistics.median(ms):.1f} ms, "
        f"p95 {pct(0.95):.1f} ms, p99 {pct(0.99):.1f} ms, max {ms[-1]:.1f} ms"
    )


if __name__ == "__main__":
    main()
