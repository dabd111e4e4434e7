"""ipyparallel: a local Cluster of ``workers`` engines, load-balanced view."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from bench.systems.common import Session, main

# W4: ``python -c`` this (``$workers`` filled in): import to first result.
COLD_START = """
import ipyparallel as ipp
def noop(x):
    return x
cluster = ipp.Cluster(n=$workers, log_level=40)
client = cluster.start_and_connect_sync()
print("RESULT", client.load_balanced_view().apply_async(noop, 1).get(), flush=True)
client.close()
cluster.stop_cluster_sync()
"""


def noop(x: Any) -> Any:
    return x


def nap(seconds: float) -> float:
    import time  # the engines get the function, not this module's globals

    time.sleep(seconds)
    return seconds


FUNCTIONS = {"noop": noop, "nap": nap}


class IpyparallelSession(Session):
    def __init__(self, workers: int, client: Any) -> None:
        super().__init__(workers)
        self.client = client
        self.view = client.load_balanced_view()

    def map(self, fn: str, items: list[Any]) -> list[Any]:
        pending = [self.view.apply_async(FUNCTIONS[fn], item) for item in items]
        return [ar.get() for ar in pending]

    def call(self, fn: str, item: Any) -> Any:
        return self.view.apply_async(FUNCTIONS[fn], item).get()

    def worker_pids(self) -> list[int] | None:
        return list(self.client[:].apply_sync(os.getpid)) or None


@contextmanager
def open_session(workers: int, options: dict[str, Any]) -> Iterator[Session]:
    import ipyparallel as ipp

    cluster = ipp.Cluster(n=workers, log_level=40)
    client = cluster.start_and_connect_sync()
    try:
        client.wait_for_engines(workers, timeout=120)
        session = IpyparallelSession(workers, client)
        session.notes["view"] = "load_balanced_view, apply_async per task"
        yield session
    finally:
        client.close()
        cluster.stop_cluster_sync()


if __name__ == "__main__":
    main(open_session)
