"""The benchmark's entry point: ``scripts/bench [ARGS]`` or ``python bench/run.py [ARGS]``.

    python bench/run.py --quick     # nbtasks and ProcessPoolExecutor, W1 and W2, < 1 minute
    python bench/run.py --help      # every option

See bench/README.md for the workloads and how to read the ratios.
"""

from __future__ import annotations

import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the ``bench`` package importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.suite import main

if __name__ == "__main__":
    sys.exit(main())
