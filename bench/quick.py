"""Quick figures: nbtasks beside ProcessPoolExecutor on the same worker count.

    python bench/quick.py [--workers 2] [--runs 1000] [--calls 200] [--min-rate 0]

Prints runs/s for N no-op runs (batch_trigger_and_wait, every run and attempt committed)
and for ProcessPoolExecutor.map, and the p50/p95 latency of a warm trigger_and_wait.
With --min-rate, exits non-zero if nbtasks' batch rate is below it (a gross-regression
guard, not a timing test).
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import os
import statistics
import sys
import tempfile
import time

import nbtasks
from nbtasks import task


def noop(x: int) -> int:
    return x


noop_task = task(noop, id="bench-noop")


def bench_nbtasks(workers: int, n: int, calls: int) -> dict[str, float]:
    nbtasks.configure(store=os.path.join(tempfile.mkdtemp(), "bench.duckdb"), workers=workers)
    noop_task.batch_trigger_and_wait(list(range(workers * 4)))  # warm the pool
    start = time.perf_counter()
    result = noop_task.batch_trigger_and_wait(list(range(n)))
    elapsed = time.perf_counter() - start
    assert result.unwrap() == list(range(n))
    latencies = []
    for i in range(calls):
        t0 = time.perf_counter()
        noop_task.trigger_and_wait(i)
        latencies.append(time.perf_counter() - t0)
    nbtasks.shutdown()
    q = statistics.quantiles(latencies, n=20)
    return {"runs_per_s": n / elapsed, "p50_ms": q[9] * 1000, "p95_ms": q[18] * 1000}


def bench_pool(workers: int, n: int, calls: int) -> dict[str, float]:
    with cf.ProcessPoolExecutor(workers) as pool:
        list(pool.map(noop, range(workers * 4)))
        start = time.perf_counter()
        out = list(pool.map(noop, range(n)))
        elapsed = time.perf_counter() - start
        assert out == list(range(n))
        latencies = []
        for i in range(calls):
            t0 = time.perf_counter()
            pool.submit(noop, i).result()
            latencies.append(time.perf_counter() - t0)
    q = statistics.quantiles(latencies, n=20)
    return {"runs_per_s": n / elapsed, "p50_ms": q[9] * 1000, "p95_ms": q[18] * 1000}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--runs", type=int, default=1000)
    parser.add_argument("--calls", type=int, default=200)
    parser.add_argument("--min-rate", type=float, default=0.0)
    args = parser.parse_args()
    ours = bench_nbtasks(args.workers, args.runs, args.calls)
    floor = bench_pool(args.workers, args.runs, args.calls)
    print(f"{args.runs} no-op runs on {args.workers} workers")
    print(f"{'system':<22} {'runs/s':>10} {'p50 ms':>8} {'p95 ms':>8}")
    for name, r in (("nbtasks (durable)", ours), ("ProcessPoolExecutor", floor)):
        print(f"{name:<22} {r['runs_per_s']:>10,.0f} {r['p50_ms']:>8.2f} {r['p95_ms']:>8.2f}")
    ratio = ours["runs_per_s"] / floor["runs_per_s"]
    print(
        f"nbtasks / ProcessPoolExecutor: throughput x{ratio:.2f}, "
        f"p50 latency x{ours['p50_ms'] / floor['p50_ms']:.1f}"
    )
    if ours["runs_per_s"] < args.min_rate:
        print(f"REGRESSION: {ours['runs_per_s']:,.0f} runs/s is below {args.min_rate:,.0f}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
