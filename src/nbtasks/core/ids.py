"""Prefixed ids that sort by creation time: ``run_…``, ``attempt_…``, ``batch_…``; and the
rule for a task id."""

from __future__ import annotations

import re
import threading
import time
from typing import Any

_ALPHABET = "0123456789abcdefghijklmnopqrstuvwxyz"
_lock = threading.Lock()
_last_ms = 0
_counter = 0
_getrandbits: Any = None  # a random.Random's, seeded from os.urandom, made at the first id
_PAIRS = [a + b for a in _ALPHABET for b in _ALPHABET]  # two base-36 digits per index
_ms_text = ("", -1)  # the millisecond part of the last id, and its millisecond


def _base36(n: int, width: int) -> str:
    """``n`` in ``width`` base-36 digits, two at a time."""
    out = []
    for _ in range((width + 1) // 2):
        n, r = divmod(n, 1296)
        out.append(_PAIRS[r])
    return "".join(reversed(out))[-width:]


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
    global _ms_text
    text, text_ms = _ms_text
    if text_ms != ms:
        text = _base36(ms, 9)
        _ms_text = (text, ms)
    global _getrandbits
    if _getrandbits is None:  # ids need uniqueness, not secrecy; an attaching client none
        import random

        _getrandbits = random.Random().getrandbits
    rand = _getrandbits(31)  # below 36**6: three pairs of digits
    c1, c2 = divmod(counter, 1296)
    r12, r3 = divmod(rand, 1296)
    r1, r2 = divmod(r12, 1296)
    p = _PAIRS
    return f"{prefix}_{text}{p[c1]}{p[c2]}{p[r1]}{p[r2]}{p[r3]}"


_TASK_ID = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.:\-]{0,127}$")


def check_task_id(value: object, option: str = "id") -> str:
    """``value`` if it is a valid task id; else a ``ValueError`` naming ``option`` and it."""
    if not isinstance(value, str) or not _TASK_ID.match(value):
        raise ValueError(
            f"{option}={value!r} is not a valid task id: use 1-128 letters, digits, "
            "'_', '.', ':' or '-', not starting with a punctuation mark"
        )
    return value
