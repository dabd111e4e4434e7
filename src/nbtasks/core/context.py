"""What task code sees of its run: ``context()`` and live ``metadata``.

The worker installs a ``_Current`` for the attempt it executes; outside a task both
``context()`` and ``metadata`` raise a clear error.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from nbtasks.core.errors import NbtasksError

METADATA_MAX_BYTES = 256 * 1024
NONFINITE_HINT = "metadata is stored as JSON, which has no nan or inf: use a finite number or None"


@dataclass(frozen=True)
class TaskContext:
    """The run a task is executing for."""

    run_id: str
    task_id: str
    attempt_number: int
    version: str
    tags: tuple[str, ...] = ()
    attempt_id: str = ""


@dataclass
class _Current:
    ctx: TaskContext
    metadata: dict[str, Any]
    send: Callable[[tuple[Any, ...]], None]
    call: Callable[[str, tuple[Any, ...]], Any] = field(default=lambda op, args: None)


_current: _Current | None = None


def _install(current: _Current | None) -> None:
    global _current
    _current = current


IN_WORKER = False  # set by the worker process at start


def in_task() -> bool:
    """True in task code executing in a worker."""
    return _current is not None


def call_engine(op: str, *args: Any) -> Any:
    """Ask the kernel's engine to do ``op`` for the running task, and wait for the answer."""
    if _current is None:
        raise NbtasksError(
            "in a worker process, runs can be triggered and read only by task code while it "
            "executes"
        )
    return _current.call(op, args)


def context() -> TaskContext:
    """The running task's run id, task id, attempt number, version and tags."""
    if _current is None:
        raise NbtasksError("nbtasks.context() is only available inside a running task")
    return _current.ctx


class _Metadata:
    """Run metadata that task code updates; each change reaches the kernel at once."""

    def _cur(self) -> _Current:
        if _current is None:
            raise NbtasksError("nbtasks.metadata is only available inside a running task")
        return _current

    def _apply(self, op: str, key: str, value: Any = None) -> None:
        if not isinstance(key, str):
            raise TypeError(f"metadata keys are strings, got {key!r}")
        cur = self._cur()
        new = dict(cur.metadata)
        apply_metadata_op(new, op, key, value)
        bad = find_nonfinite(new.get(key), f"metadata[{key!r}]")
        if bad is not None:
            raise ValueError(
                f"metadata.{op}({key!r}, {value!r}) is not valid: {bad[0]} would be "
                f"{bad[1]!r}; {NONFINITE_HINT}"
            )
        encoded = json.dumps(new, default=str)
        if len(encoded) > METADATA_MAX_BYTES:
            raise ValueError(
                f"metadata would be {len(encoded)} bytes after {op}({key!r}), over the "
                f"{METADATA_MAX_BYTES}-byte cap; store large values in the output instead"
            )
        cur.metadata.clear()
        cur.metadata.update(json.loads(encoded))
        cur.send(
            ("metadata", cur.ctx.attempt_id, op, key, json.loads(json.dumps(value, default=str)))
        )

    def set(self, key: str, value: Any) -> None:
        self._apply("set", key, value)

    def increment(self, key: str, amount: float = 1) -> None:
        self._apply("increment", key, amount)

    def decrement(self, key: str, amount: float = 1) -> None:
        self._apply("increment", key, -amount)

    def append(self, key: str, value: Any) -> None:
        self._apply("append", key, value)

    def remove(self, key: str, value: Any) -> None:
        self._apply("remove", key, value)

    def del_(self, key: str) -> None:
        self._apply("del", key)

    def get(self, key: str, default: Any = None) -> Any:
        return self._cur().metadata.get(key, default)

    def current(self) -> dict[str, Any]:
        return dict(self._cur().metadata)


def find_nonfinite(value: object, path: str) -> tuple[str, float] | None:
    """Where in ``value`` (dicts, lists and tuples, walked) a float is nan or infinite:
    its path, e.g. ``metadata['stats'][2]``, and the number; ``None`` if nowhere."""
    if isinstance(value, float):
        return None if math.isfinite(value) else (path, value)
    if isinstance(value, dict):
        items: list[tuple[object, object]] = list(value.items())
    elif isinstance(value, (list, tuple)):
        items = list(enumerate(value))
    else:
        return None
    for k, v in items:
        found = find_nonfinite(v, f"{path}[{k!r}]")
        if found is not None:
            return found
    return None


def apply_metadata_op(data: dict[str, Any], op: str, key: str, value: Any) -> None:
    """Apply one metadata change in place; shared by the worker and the kernel."""
    if op == "set":
        data[key] = value
    elif op == "increment":
        data[key] = data.get(key, 0) + value
    elif op == "append":
        existing = data.get(key)
        data[key] = [*existing, value] if isinstance(existing, list) else [value]
    elif op == "remove":
        existing = data.get(key)
        if isinstance(existing, list):
            data[key] = [v for v in existing if v != value]
    elif op == "del":
        data.pop(key, None)
    else:
        raise ValueError(f"unknown metadata operation {op!r}")


metadata = _Metadata()
