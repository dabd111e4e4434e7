"""nbtasks: a fresh store in a temp dir, ``workers`` warm workers, tasks defined in __main__."""

from __future__ import annotations

import os
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import nbtasks
from bench.systems.common import Session, child_pids, main
from nbtasks import task

# In the command line of every nbtasks worker process: this layout's, and the one before
# (a --baseline commit may have it).
WORKER_MARKERS = ("nbtasks.executor.local.worker", "nbtasks._worker")

# W4: ``python -c`` this (``$workers``, ``$tmp`` filled in): import to first result.
COLD_START = """
import os
import nbtasks
from nbtasks import task
nbtasks.configure(store=os.path.join("$tmp", "cold.duckdb"), workers=$workers)
@task
def noop(x):
    return x
print("RESULT", noop.trigger_and_wait(1).unwrap(), flush=True)
"""


@task(id="bench-noop")
def noop(x: Any) -> Any:
    return x


@task(id="bench-nap")
def nap(seconds: float) -> float:
    time.sleep(seconds)
    return seconds


TASKS = {"noop": noop, "nap": nap}


class NbtasksSession(Session):
    def map(self, fn: str, items: list[Any]) -> list[Any]:
        return TASKS[fn].batch_trigger_and_wait(items).unwrap()

    def call(self, fn: str, item: Any) -> Any:
        return TASKS[fn].trigger_and_wait(item).unwrap()

    def worker_pids(self) -> list[int] | None:
        return [p for m in WORKER_MARKERS for p in child_pids(os.getpid(), m)] or None


@contextmanager
def open_session(workers: int, options: dict[str, Any]) -> Iterator[Session]:
    if options.get("executor") == "dask":
        with _on_dask(workers) as session:
            yield session
        return
    with tempfile.TemporaryDirectory(prefix="nbtasks-bench-") as tmp:
        nbtasks.configure(store=os.path.join(tmp, "bench.duckdb"), workers=workers)
        session = NbtasksSession(workers)
        session.notes["store"] = "fresh DuckDB file in a temp dir"
        try:
            yield session
        finally:
            nbtasks.shutdown()


@contextmanager
def _on_dask(workers: int) -> Iterator[Session]:
    """nbtasks with the Dask executor, on the cluster the Dask row uses: a LocalCluster of
    ``workers`` single-threaded worker processes."""
    from bench.systems.dask_bench import local_cluster

    with (
        tempfile.TemporaryDirectory(prefix="nbtasks-bench-") as tmp,
        local_cluster(workers) as cluster,
    ):
        nbtasks.configure(
            store=os.path.join(tmp, "bench.duckdb"),
            workers=workers,
            executor=nbtasks.DaskExecutor(cluster),
        )
        session = NbtasksSession(workers)
        session.notes["store"] = "fresh DuckDB file in a temp dir"
        session.notes["cluster"] = f"LocalCluster(n_workers={workers}, threads_per_worker=1)"
        try:
            yield session
        finally:
            nbtasks.shutdown()


if __name__ == "__main__":
    main(open_session)
