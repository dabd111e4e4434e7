"""The Huey app and its tasks. Huey's consumer imports tasks by module, so they live here
rather than in ``__main__``. The SQLite file comes from ``BENCH_HUEY_DB``."""

from __future__ import annotations

import os
import time
from typing import Any

from huey import SqliteHuey

huey = SqliteHuey("nbtasks-bench", filename=os.environ.get("BENCH_HUEY_DB", "huey-bench.db"))


@huey.task()
def noop(x: Any) -> Any:
    return x


@huey.task()
def nap(seconds: float) -> float:
    time.sleep(seconds)
    return seconds
