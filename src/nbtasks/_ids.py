"""Prefixed ids that sort by creation time: ``run_…``, ``attempt_…``, ``batch_…``."""

from __future__ import annotations

import random
import threading
import time

_ALPHABET = "0123456789abcdefghijklmnopqrstuvwxyz"
_lock = threading.Lock()
_last_ms = 0
_counter = 0
_random = random.Random()  # seeded from os.urandom; ids need uniqueness, not secrecy


def _base36(n: int, width: int) -> str:
    out = []
    for _ in range(width):
        n, r = divmod(n, 36)
        out.append(_ALPHABET[r])
    return "".join(reversed(out))


def new_id(prefix: str) -> str:
    """``prefix_`` + 9 chars of milliseconds + 4 of a per-ms counter + 6 random chars.

    Ids made in one process sort in creation order, also within one millisecond.
    """
    global _last_ms, _counter
    with _lock:
        ms = time.time_ns() // 1_000_000
        if ms <= _last_ms:
            _counter += 1
            if _counter >= 36**4:  # more than 1.6M ids in one ms: borrow the next ms
                _last_ms += 1
                _counter = 0
            ms = _last_ms
        else:
            _last_ms, _counter = ms, 0
        counter = _counter
    rand = _random.getrandbits(31)
    return f"{prefix}_{_base36(ms, 9)}{_base36(counter, 4)}{_base36(rand, 6)}"
