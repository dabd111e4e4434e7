"""W6, nbtasks side: what nbtasks adds to a kernel, in a fresh process.

    python -m bench.kernel_memory --workers 2

RSS (and USS) before ``import nbtasks``, after it, and after the first trigger (which opens
the store and starts the engine and the workers: with the service, in the store's server);
then the idle workers' RSS, found as the children of the engine's process whose command
line has ``nbtasks.executor.local.worker``. Also which top-level packages each step
imported.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from typing import Any

import psutil

from bench.systems.common import emit, process_memory

WORKER_MARKER = "nbtasks.executor.local.worker"


def snapshot() -> tuple[float, float, set[str]]:
    info = psutil.Process().memory_full_info()
    packages = {name.split(".")[0] for name in sys.modules}
    return info.rss / 2**20, info.uss / 2**20, packages


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    rss0, uss0, mods0 = snapshot()
    import nbtasks

    rss1, uss1, mods1 = snapshot()
    from bench.systems import nbtasks_engine  # after the snapshot: it imports nbtasks

    result: dict[str, Any] = {"rss_before_mib": rss0}
    with tempfile.TemporaryDirectory(prefix="nbtasks-mem-") as tmp:
        store = os.path.join(tmp, "mem.duckdb")
        nbtasks.configure(store=store, workers=args.workers)

        @nbtasks.task(id="bench-noop")
        def noop(x: Any) -> Any:
            return x

        noop.trigger_and_wait(1).unwrap()
        rss2, uss2, mods2 = snapshot()
        time.sleep(1.0)
        engine = psutil.Process(nbtasks_engine.engine_pid(store))
        workers = [
            p.pid for p in engine.children(recursive=True) if WORKER_MARKER in " ".join(p.cmdline())
        ]
        result["workers"] = process_memory(workers) if workers else None
        nbtasks_engine.stop()
    result.update(
        {
            "import_rss_mib": rss1 - rss0,
            "import_uss_mib": uss1 - uss0,
            "engine_rss_mib": rss2 - rss1,
            "engine_uss_mib": uss2 - uss1,
            "kernel_rss_after_mib": rss2,
            "import_packages": sorted(mods1 - mods0),
            "first_trigger_packages": sorted(mods2 - mods1),
        }
    )
    emit(result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
