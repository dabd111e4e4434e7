"""The blocking and async calls behind ``Task.trigger*``, ``RunHandle`` and ``runs``.

Everything that can fail on bad input (options, dill) happens here, in the caller's thread,
before the engine sees the work: a bad trigger creates no run.
"""

from __future__ import annotations

import asyncio
import concurrent.futures as cf
import functools
import json
import time
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any, TypeVar

from ._durations import parse_duration
from ._errors import NbtasksError
from ._handles import BatchHandle, RunHandle
from ._ids import new_id
from ._models import BatchItem, BatchResult, Result, Run
from ._options import coerce_queue
from ._serialize import dumps_checked, preview
from ._state import RunSpec, TaskVersion, utcnow

if TYPE_CHECKING:
    from ._engine import Engine
    from ._task import Task

T = TypeVar("T")
OPTIONS = (
    "delay", "ttl", "idempotency_key", "idempotency_key_ttl", "idempotency_key_scope",
    "tags", "metadata", "max_attempts", "max_duration", "queue",
)  # fmt: skip
_POLL_S = 0.05  # a blocking wait wakes this often, to stay interruptible


def engine() -> Engine:
    from ._config import get_engine

    eng: Engine = get_engine()
    return eng


def block(fut: cf.Future[T], timeout: float | None = None,
          on_interrupt: Callable[[], None] | None = None) -> T:  # fmt: skip
    """Wait for ``fut``; Ctrl-C (or the notebook's stop button) runs ``on_interrupt``."""
    deadline = None if timeout is None else time.monotonic() + timeout
    try:
        while True:
            left = _POLL_S if deadline is None else min(_POLL_S, deadline - time.monotonic())
            if left <= 0:
                raise TimeoutError(f"the wait did not finish within {timeout:g}s")
            try:
                return fut.result(timeout=left)
            except cf.TimeoutError:
                continue
    except KeyboardInterrupt:
        if on_interrupt is not None:
            on_interrupt()
        raise


def _check_tags(value: object) -> tuple[str, ...]:
    if value is None:
        return ()
    tags = (value,) if isinstance(value, str) else value
    if not isinstance(tags, (list, tuple, set, frozenset)) or not all(
        isinstance(t, str) and 0 < len(t) <= 128 for t in tags
    ):
        raise ValueError(
            f"tags={value!r} is not valid: use a string or a list of 1-128 char strings"
        )
    return tuple(tags)


def _check_metadata(value: object) -> dict[str, Any] | None:
    if value is None:
        return None
    if not isinstance(value, dict):
        raise ValueError(f"metadata={value!r} is not valid: use a dict of JSON values")
    try:
        return json.loads(json.dumps(value))  # type: ignore[no-any-return]
    except (TypeError, ValueError) as exc:
        raise ValueError(f"metadata={value!r} is not valid: {exc}") from None


def _check_max_attempts(value: object) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"max_attempts={value!r} is not valid: use an integer >= 1")
    return value


def _spec_options(task: Task[Any, Any], options: dict[str, Any]) -> dict[str, Any]:
    """Validate trigger options into ``RunSpec`` fields; a bad one names itself and its value."""
    for name in options:
        if name not in OPTIONS:
            raise TypeError(
                f"unknown trigger option {name}={options[name]!r}; the options are: "
                + ", ".join(OPTIONS)
            )
    unsupported = [n for n in ("delay", "ttl", "idempotency_key") if options.get(n) is not None]
    if unsupported:
        raise NbtasksError(f"the option {unsupported[0]}= is not available yet in this version")
    queue = coerce_queue(options.get("queue")) or task.queue
    max_duration = parse_duration("max_duration", options.get("max_duration"))
    return {
        "tags": _check_tags(options.get("tags")),
        "metadata": _check_metadata(options.get("metadata")),
        "max_attempts": _check_max_attempts(options.get("max_attempts")),
        "max_duration_s": max_duration if max_duration is not None else task.max_duration_s,
        "queue": queue.name if queue else None,
        "concurrency_limit": queue.concurrency_limit if queue else None,
    }


def _version(task: Task[Any, Any]) -> TaskVersion:
    eng = engine()
    return task.shipping(lambda *args: block(eng.call(eng.register_version, *args)))


def make_specs(task: Task[Any, Any], items: Iterable[Any], options: dict[str, Any],
               batch_id: str | None = None) -> list[RunSpec]:  # fmt: skip
    common = _spec_options(task, options)
    tv = _version(task)
    specs = []
    now = utcnow()
    for i, item in enumerate(items):
        fields = common
        payload = item
        if isinstance(item, BatchItem):
            fields = _spec_options(task, {**options, **item.options})
            payload = item.payload
        what = "payload" if batch_id is None else f"items[{i}]"
        data = dumps_checked(what, payload)
        specs.append(
            RunSpec(
                id=new_id("run"),
                task_id=task.id,
                task=tv,
                payload=data,
                payload_preview=preview(payload),
                created_at=now,
                batch_id=batch_id,
                **fields,
            )
        )
    return specs


def _cancel_all(ids: list[str]) -> None:
    from ._runs import runs

    for run_id in ids:
        try:
            runs.cancel(run_id)
        except Exception:
            pass


def _results(ids: list[str], snapshots: list[Run | None]) -> list[Result[Any]]:
    from ._runs import runs

    return [
        Result(s if s is not None else runs.retrieve(i))
        for i, s in zip(ids, snapshots, strict=True)
    ]


def trigger(task: Task[Any, T], payload: Any, options: dict[str, Any]) -> RunHandle[T]:
    specs = make_specs(task, [payload], options)
    eng = engine()
    (run_id,) = block(eng.call(eng.submit, specs))
    return RunHandle(run_id, task.id)


def trigger_and_wait(task: Task[Any, T], payload: Any, options: dict[str, Any]) -> Result[T]:
    specs = make_specs(task, [payload], options)
    return _submit_and_wait(specs)[0]


def batch_trigger(task: Task[Any, T], items: Iterable[Any],
                  options: dict[str, Any]) -> BatchHandle[T]:  # fmt: skip
    batch_id = new_id("batch")
    specs = make_specs(task, list(items), options, batch_id)
    eng = engine()
    ids = block(eng.call(eng.submit, specs))
    return BatchHandle(batch_id, [RunHandle(i, task.id) for i in ids])


def batch_trigger_and_wait(task: Task[Any, T], items: Iterable[Any],
                           options: dict[str, Any]) -> BatchResult[T]:  # fmt: skip
    batch_id = new_id("batch")
    specs = make_specs(task, list(items), options, batch_id)
    return BatchResult(batch_id, _submit_and_wait(specs))


def _submit_and_wait(specs: list[RunSpec]) -> list[Result[Any]]:
    eng = engine()
    final: cf.Future[list[Run | None]] = cf.Future()
    ids = [s.id for s in specs]
    block(eng.call(eng.submit, specs, final), on_interrupt=lambda: _cancel_all(ids))
    snapshots = block(final, on_interrupt=lambda: _cancel_all(ids))
    return _results(ids, snapshots)


def wait_runs(ids: list[str], timeout: float | None = None) -> list[Result[Any]]:
    """Block until the runs are final (they need not be live in this kernel)."""
    eng = engine()
    for run_id in ids:
        eng.require_run(run_id)
    futs = [eng.call(eng.wait, run_id) for run_id in ids]
    deadline = None if timeout is None else time.monotonic() + timeout
    snapshots = []
    for fut in futs:
        left = None if deadline is None else max(0.0, deadline - time.monotonic())
        snapshots.append(block(fut, left))
    return _results(ids, snapshots)


async def await_runs(ids: list[str]) -> list[Result[Any]]:
    eng = engine()
    futs = [eng.call(eng.wait, run_id) for run_id in ids]
    try:
        snapshots = [await asyncio.wrap_future(f) for f in futs]
    except asyncio.CancelledError:
        await run_in_thread(_cancel_all, ids)
        raise
    return await run_in_thread(_results, ids, snapshots)


async def run_in_thread(fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    loop = asyncio.get_running_loop()
    return await loop.run_in_executor(None, functools.partial(fn, *args, **kwargs))
