"""concurrent.futures.ProcessPoolExecutor: the floor (no durability, no isolation per task)."""

from __future__ import annotations

import concurrent.futures as cf
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from bench.systems.common import FUNCTIONS, Session, main

# W4: ``python -c`` this (``$workers`` filled in): import to first result.
COLD_START = """
import concurrent.futures as cf
def noop(x):
    return x
if __name__ == "__main__":
    with cf.ProcessPoolExecutor($workers) as pool:
        print("RESULT", pool.submit(noop, 1).result(), flush=True)
"""


class PoolSession(Session):
    def __init__(self, workers: int, pool: cf.ProcessPoolExecutor) -> None:
        super().__init__(workers)
        self.pool = pool

    def map(self, fn: str, items: list[Any]) -> list[Any]:
        futures = [self.pool.submit(FUNCTIONS[fn], item) for item in items]
        return [f.result() for f in futures]

    def call(self, fn: str, item: Any) -> Any:
        return self.pool.submit(FUNCTIONS[fn], item).result()

    def worker_pids(self) -> list[int] | None:
        return list(self.pool._processes or {}) or None


@contextmanager
def open_session(workers: int, options: dict[str, Any]) -> Iterator[Session]:
    with cf.ProcessPoolExecutor(workers) as pool:
        session = PoolSession(workers, pool)
        session.notes["start_method"] = pool._mp_context.get_start_method()
        yield session


if __name__ == "__main__":
    main(open_session)
