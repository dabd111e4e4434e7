"""How long a big payload takes to serialise: nbtasks' ``dumps`` against dill alone.

    python -m bench.serialize

A ``%%task`` cell captures its inputs with ``dumps`` (once for the sizes it prints, once
for the payload), and so does every trigger. ``dumps`` writes with plain pickle (in C)
whatever pickle can write alone, and falls back to dill (a pure-Python pickler) for the
rest; before, everything past a few small containers went through dill.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import dill

from nbtasks.core.serialize import dumps, loads

CASES: dict[str, Callable[[], Any]] = {
    "list of 1.1M floats": lambda: [i * 1.5 for i in range(1_100_000)],
    "list of 1.8M ints": lambda: list(range(1_800_000)),
    "list of 800k strings": lambda: [f"row-{i}" for i in range(800_000)],
    "list of 200k dicts": lambda: [{"a": i, "b": str(i)} for i in range(200_000)],
}


def best(fn: Callable[[], Any], rounds: int = 3) -> float:
    times = []
    for _ in range(rounds):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def main() -> None:
    print(f"{'value':<24} {'MiB':>6} {'dumps s':>8} {'dill s':>8} {'loads s':>8}")
    for name, make in CASES.items():
        value = make()
        data = dumps(value)
        took = best(lambda v=value: dumps(v))
        with_dill = best(lambda v=value: dill.dumps(v, recurse=True), rounds=1)
        back = best(lambda d=data: loads(d))
        print(f"{name:<24} {len(data) / 2**20:>6.1f} {took:>8.3f} {with_dill:>8.3f} {back:>8.3f}")


if __name__ == "__main__":
    main()
