"""Dask distributed: a LocalCluster of ``workers`` single-threaded worker processes."""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from bench.systems.common import FUNCTIONS, Session, main

# W4: ``python -c`` this (``$workers`` filled in): import to first result.
COLD_START = """
import logging
from distributed import Client, LocalCluster
def noop(x):
    return x
if __name__ == "__main__":
    with LocalCluster(n_workers=$workers, threads_per_worker=1, processes=True,
                      dashboard_address=None, silence_logs=logging.ERROR) as cluster:
        with Client(cluster) as client:
            print("RESULT", client.submit(noop, 1).result(), flush=True)
"""


class DaskSession(Session):
    def __init__(self, workers: int, client: Any) -> None:
        super().__init__(workers)
        self.client = client

    def map(self, fn: str, items: list[Any]) -> list[Any]:
        futures = self.client.map(FUNCTIONS[fn], items, pure=False)  # one task per item
        return list(self.client.gather(futures))

    def call(self, fn: str, item: Any) -> Any:
        return self.client.submit(FUNCTIONS[fn], item, pure=False).result()

    def worker_pids(self) -> list[int] | None:
        # The worker processes only: each also has a nanny process, not counted here.
        return list(self.client.run(os.getpid).values()) or None


def local_cluster(workers: int) -> Any:
    """The cluster of the Dask row (and of nbtasks on Dask): ``workers`` single-threaded
    worker processes."""
    from distributed import LocalCluster

    return LocalCluster(
        n_workers=workers,
        threads_per_worker=1,
        processes=True,
        dashboard_address=None,
        silence_logs=logging.ERROR,
    )


@contextmanager
def open_session(workers: int, options: dict[str, Any]) -> Iterator[Session]:
    from distributed import Client

    with local_cluster(workers) as cluster, Client(cluster) as client:
        session = DaskSession(workers, client)
        session.notes["cluster"] = f"LocalCluster(n_workers={workers}, threads_per_worker=1)"
        yield session


if __name__ == "__main__":
    main(open_session)
