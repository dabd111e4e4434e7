"""nbtasks: a fresh store in a temp dir, ``workers`` warm workers, tasks defined in __main__."""

from __future__ import annotations

import os
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import nbtasks
from bench.systems import nbtasks_engine
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

# Attach: ``python -c`` this once (``$store``, ``$workers``): a store with one run, its
# server left running (with the service); the RESULT line says the server's pid.
ATTACH_SETUP = """
import json
import nbtasks
from nbtasks import task
from bench.systems.nbtasks_engine import server_pid
nbtasks.configure(store="$store", workers=$workers)
@task(id="bench-noop")
def noop(x):
    return x
noop.trigger_and_wait(1).unwrap()
print("RESULT", json.dumps({"server": server_pid("$store")}), flush=True)
"""

# Attach: then ``python -c`` this, timed: a fresh process's first answer from that store.
# It reports its own timings (import, then configure and answer) and the server it reached.
ATTACH = """
import time
t0 = time.perf_counter()
import nbtasks
t1 = time.perf_counter()
nbtasks.configure(store="$store")
page = nbtasks.runs.list(limit=1)
t2 = time.perf_counter()
import json
from bench.systems.nbtasks_engine import server_pid
print("RESULT", json.dumps({"import_s": t1 - t0, "answer_s": t2 - t1, "runs": len(page),
                            "server": server_pid("$store")}), flush=True)
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
    def __init__(self, workers: int, store: str) -> None:
        super().__init__(workers)
        self.store = store
        self.notes["store"] = "fresh DuckDB file in a temp dir"

    def map(self, fn: str, items: list[Any]) -> list[Any]:
        return TASKS[fn].batch_trigger_and_wait(items).unwrap()

    def call(self, fn: str, item: Any) -> Any:
        return TASKS[fn].trigger_and_wait(item).unwrap()

    def worker_pids(self) -> list[int] | None:
        """The workers: children of the store's server (the service), or of this process."""
        engine = nbtasks_engine.engine_pid(self.store)
        return [p for m in WORKER_MARKERS for p in child_pids(engine, m)] or None

    def run(self, body: Callable[[], dict[str, Any]]) -> dict[str, Any]:
        """Run the body, then say where the engine ran (the server's pid, while it lives)."""
        result = body()
        self.notes["engine"] = nbtasks_engine.where(self.store)
        return result


@contextmanager
def open_session(workers: int, options: dict[str, Any]) -> Iterator[Session]:
    if options.get("executor") == "dask":
        with _on_dask(workers) as session:
            yield session
        return
    with tempfile.TemporaryDirectory(prefix="nbtasks-bench-") as tmp:
        store = os.path.join(tmp, "bench.duckdb")
        nbtasks.configure(store=store, workers=workers)
        try:
            yield NbtasksSession(workers, store)
        finally:
            nbtasks_engine.stop()


@contextmanager
def _on_dask(workers: int) -> Iterator[Session]:
    """nbtasks with the Dask executor, on the cluster the Dask row uses: a LocalCluster of
    ``workers`` single-threaded worker processes."""
    from bench.systems.dask_bench import local_cluster

    with (
        tempfile.TemporaryDirectory(prefix="nbtasks-bench-") as tmp,
        local_cluster(workers) as cluster,
    ):
        store = os.path.join(tmp, "bench.duckdb")
        nbtasks.configure(store=store, workers=workers, executor=nbtasks.DaskExecutor(cluster))
        session = NbtasksSession(workers, store)
        session.notes["cluster"] = f"LocalCluster(n_workers={workers}, threads_per_worker=1)"
        try:
            yield session
        finally:
            nbtasks_engine.stop()


if __name__ == "__main__":
    main(open_session)
