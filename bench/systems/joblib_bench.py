"""joblib with its default loky backend: ``Parallel(n_jobs=workers)``, reused."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from bench.systems.common import FUNCTIONS, Session, main

# W4: ``python -c`` this (``$workers`` filled in): import to first result.
COLD_START = """
from joblib import Parallel, delayed
def noop(x):
    return x
print("RESULT", Parallel(n_jobs=$workers)([delayed(noop)(1)])[0], flush=True)
"""


class JoblibSession(Session):
    def __init__(self, workers: int, parallel: Any) -> None:
        super().__init__(workers)
        self.parallel = parallel

    def map(self, fn: str, items: list[Any]) -> list[Any]:
        from joblib import delayed

        return list(self.parallel(delayed(FUNCTIONS[fn])(item) for item in items))

    def call(self, fn: str, item: Any) -> Any:
        return self.map(fn, [item])[0]

    def worker_pids(self) -> list[int] | None:
        executor = getattr(self.parallel._backend, "_workers", None)  # loky's executor
        return list(getattr(executor, "_processes", None) or {}) or None


@contextmanager
def open_session(workers: int, options: dict[str, Any]) -> Iterator[Session]:
    from joblib import Parallel

    with Parallel(n_jobs=workers) as parallel:
        session = JoblibSession(workers, parallel)
        session.notes["backend"] = "loky (default), auto-batching (default)"
        yield session


if __name__ == "__main__":
    main(open_session)
