"""The systems compared, one module each (``<name>_bench.py``) with a common interface:

- ``open_session(workers, options)``: a context manager giving a warm ``common.Session``;
- ``COLD_START``: the ``python -c`` program of W4, a ``string.Template`` (``$workers``,
  ``$tmp``, plus what the optional ``cold_start_values(options)`` returns);
- ``python -m bench.systems.<name>_bench --workload wN``: one workload in a fresh process.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class System:
    key: str  # the row's id in results.json
    label: str  # the row's name in the tables
    module: str  # bench.systems.<module>
    packages: tuple[str, ...]  # distributions whose versions are recorded
    options: dict[str, Any] = field(default_factory=dict)  # the variant, passed to the module
    anchor: bool = True  # False for nbtasks, the system under test
    memory: bool = True  # W6: idle worker RSS is measured for it
    # First on the PYTHONPATH of its measuring processes: the --baseline row's checkout's src
    pythonpath: str | None = None


SYSTEMS: tuple[System, ...] = (
    System("nbtasks", "nbtasks", "nbtasks_bench", ("nbtasks", "duckdb", "dill"), anchor=False),
    System(
        "nbtasks-dask",
        "nbtasks on Dask (DaskExecutor)",
        "nbtasks_bench",
        ("nbtasks", "duckdb", "dill", "dask", "distributed"),
        {"executor": "dask"},
        anchor=False,
        memory=False,
    ),
    System("pool", "ProcessPoolExecutor", "pool_bench", ()),
    System("ipyparallel", "ipyparallel", "ipyparallel_bench", ("ipyparallel",)),
    System("dask", "Dask distributed", "dask_bench", ("dask", "distributed")),
    System(
        "prefect",
        "Prefect 3 (process pool)",
        "prefect_bench",
        ("prefect",),
        {"runner": "processes"},
        memory=False,
    ),
    System(
        "prefect-threads",
        "Prefect 3 (threads, default)",
        "prefect_bench",
        ("prefect",),
        {"runner": "threads"},
        memory=False,
    ),
    System("huey", "Huey (default polling)", "huey_bench", ("huey",)),
    System("huey-tuned", "Huey (1 ms polling)", "huey_bench", ("huey",), {"tuned": True}),
    System("joblib", "joblib (loky)", "joblib_bench", ("joblib",)),
)

BY_KEY = {s.key: s for s in SYSTEMS}
BASELINE = "baseline"  # the key of the --baseline row: nbtasks at another commit
