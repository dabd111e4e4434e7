"""The blocking and async calls behind ``Task.trigger*``, ``RunHandle`` and ``runs``.

Everything that can fail on bad input (options, dill) happens here, in the caller's thread,
before the engine sees the work: a bad trigger creates no run. Inside a task (in a worker)
the same calls go to the kernel's engine through the worker's pipe.
"""

from __future__ import annotations

import asyncio
import concurrent.futures as cf
import functools
import json
import time
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any, TypeVar

from nbtasks.client.handles import BatchHandle, RunHandle
from nbtasks.core import context as _context
from nbtasks.core.durations import parse_delay, parse_duration
from nbtasks.core.ids import new_id
from nbtasks.core.models import BatchItem, BatchResult, Result, Run
from nbtasks.core.options import coerce_queue
from nbtasks.core.serialize import dumps_checked, preview
from nbtasks.engine.state import RunSpec, TaskVersion, utcnow
from nbtasks.ui import pump as _pump

if TYPE_CHECKING:
    from nbtasks.client.task import Task
    from nbtasks.engine.engine import Engine

T = TypeVar("T")
OPTIONS = (
    "delay", "ttl", "idempotency_key", "idempotency_key_ttl", "idempotency_key_scope",
    "tags", "metadata", "max_attempts", "max_duration", "queue",
)  # fmt: skip
DEFAULT_KEY_TTL_S = 30 * 86400.0
_POLL_S = 0.05  # a blocking wait wakes this often, to stay interruptible
_PUMP_POLL_S = 0.02  # ... and this often in a notebook, to handle widget messages


def engine(spawn: bool = False) -> Engine:
    """This process's engine, started if needed (``spawn``: for a trigger)."""
    from nbtasks.client.config import get_engine

    eng: Engine = get_engine(spawn)
    return eng


def block(fut: cf.Future[T], timeout: float | None = None,
          on_interrupt: Callable[[], None] | None = None) -> T:  # fmt: skip
    """Wait for ``fut``; Ctrl-C (or the notebook's stop button) runs ``on_interrupt``.

    In a notebook, widget messages keep being handled while the cell waits (``_pump``)."""
    if fut.done():
        return fut.result()
    deadline = None if timeout is None else time.monotonic() + timeout
    pump = _pump.start()
    poll = _POLL_S if pump is None else _PUMP_POLL_S
    try:
        while True:
            left = poll if deadline is None else min(poll, deadline - time.monotonic())
            if left <= 0:
                raise TimeoutError(f"the wait did not finish within {timeout:g}s")
            try:
                return fut.result(timeout=left)
            except cf.TimeoutError:
                if pump is not None:
                    pump()
    except KeyboardInterrupt:
        if on_interrupt is not None:
            on_interrupt()
        raise
    finally:
        if pump is not None:
            pump.release()


# -- options ---------------------------------------------------------------------------------


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


def _check_key(options: dict[str, Any]) -> tuple[str | None, float | None]:
    """The idempotency key, scoped to the parent run inside a task, and its ttl."""
    key = options.get("idempotency_key")
    scope = options.get("idempotency_key_scope")
    if scope not in (None, "run", "global"):
        raise ValueError(f"idempotency_key_scope={scope!r} is not valid: use 'run' or 'global'")
    if key is None:
        return None, None
    if not isinstance(key, str) or not 0 < len(key) <= 512:
        raise ValueError(f"idempotency_key={key!r} is not valid: use a string of 1-512 chars")
    ttl = parse_duration("idempotency_key_ttl", options.get("idempotency_key_ttl"))
    if _context.in_task() and scope != "global":
        key = f"{_context.context().run_id}/{key}"
    return key, DEFAULT_KEY_TTL_S if ttl is None else ttl


def spec_options(task: Task[Any, Any] | None, options: dict[str, Any]) -> dict[str, Any]:
    """Validate trigger options into ``RunSpec`` fields; a bad one names itself and its value."""
    for name in options:
        if name not in OPTIONS:
            raise TypeError(
                f"unknown trigger option {name}={options[name]!r}; the options are: "
                + ", ".join(OPTIONS)
            )
    queue = coerce_queue(options.get("queue"))
    key, key_ttl = _check_key(options)
    return {
        "tags": _check_tags(options.get("tags")),
        "metadata": _check_metadata(options.get("metadata")),
        "max_attempts": _check_max_attempts(options.get("max_attempts")),
        "max_duration_s": parse_duration("max_duration", options.get("max_duration")),
        "queue": queue.name if queue else None,
        "concurrency_limit": queue.concurrency_limit if queue else None,
        "delay_until": parse_delay("delay", options.get("delay"), utcnow()),
        "ttl_s": parse_duration("ttl", options.get("ttl")),
        "idempotency_key": key,
        "idempotency_key_ttl_s": key_ttl,
    }


def _version(task: Task[Any, Any], eng: Engine | None = None) -> TaskVersion:
    if _context.IN_WORKER:  # the kernel assigns the version of a task sent from a worker
        return task.shipping(lambda *args: "")
    eng = eng or engine(spawn=True)
    return task.shipping(lambda *args: block(eng.call(eng.register_version, *args)), eng)


def make_specs(
    task: Task[Any, Any] | None,
    items: Iterable[Any],
    options: dict[str, Any],
    batch_id: str | None = None,
    task_id: str | None = None,
) -> list[RunSpec]:
    """RunSpecs for a trigger: options checked and payloads serialised, before any run."""
    common = spec_options(task, options)
    tv = _version(task) if task is not None else None
    specs = []
    now = utcnow()
    for i, item in enumerate(items):
        fields = common
        payload = item
        if isinstance(item, BatchItem):
            fields = spec_options(task, {**options, **item.options})
            payload = item.payload
        what = "payload" if batch_id is None else f"items[{i}]"
        data = dumps_checked(what, payload)
        specs.append(
            RunSpec(
                id=new_id("run"),
                task_id=task.id if task is not None else str(task_id),
                task=tv,
                payload=data,
                payload_preview=preview(payload),
                created_at=now,
                batch_id=batch_id,
                **fields,
            )
        )
    return specs


# -- triggering ------------------------------------------------------------------------------


def _cancel_all(ids: list[str]) -> None:
    from nbtasks.client.runs import runs

    for run_id in ids:
        try:
            runs.cancel(run_id)
        except Exception:
            pass


def _results(ids: list[str], snapshots: list[Run | None]) -> list[Result[Any]]:
    from nbtasks.client.runs import runs

    return [
        Result(s if s is not None else runs.retrieve(i))
        for i, s in zip(ids, snapshots, strict=True)
    ]


def submit(specs: list[RunSpec]) -> list[tuple[str, bool]]:
    """Create the runs; return ``(run_id, is_cached)`` each, once they are committed."""
    if _context.in_task():
        created: list[tuple[str, bool]] = _context.call_engine("submit", specs, False)
    else:
        eng = engine()
        created = block(eng.call(eng.submit, specs))
    return created


def submit_and_wait(specs: list[RunSpec]) -> list[Result[Any]]:
    if _context.in_task():
        return [Result(s) for s in _context.call_engine("submit", specs, True)]
    eng = engine()
    final: cf.Future[list[Run | None]] = cf.Future()
    ids = [s.id for s in specs]
    try:
        created = block(eng.call(eng.submit, specs, final))
        ids = [run_id for run_id, _ in created]
        _show_live(specs, ids)
        snapshots = block(final)
    except KeyboardInterrupt:  # the stop button: cancel what this wait started
        _cancel_all(ids)
        raise
    return _results(ids, snapshots)


def _show_live(specs: list[RunSpec], ids: list[str]) -> None:
    """In a notebook, show the live widget of what a blocking wait waits for."""
    if _pump.kernel() is None or not ids:
        return
    from nbtasks.ui.widgets import show_batch, show_run

    if specs[0].batch_id is None:
        show_run(ids[0], specs[0].task_id)
    else:
        show_batch(ids, specs[0].task_id)


def handles(task_id: str, created: list[tuple[str, bool]]) -> list[RunHandle[Any]]:
    return [RunHandle(run_id, task_id, cached) for run_id, cached in created]


def trigger(task: Task[Any, T], payload: Any, options: dict[str, Any]) -> RunHandle[T]:
    (handle,) = handles(task.id, submit(make_specs(task, [payload], options)))
    return handle


def trigger_and_wait(task: Task[Any, T], payload: Any, options: dict[str, Any]) -> Result[T]:
    return submit_and_wait(make_specs(task, [payload], options))[0]


def batch_trigger(task: Task[Any, T], items: Iterable[Any],
                  options: dict[str, Any]) -> BatchHandle[T]:  # fmt: skip
    batch_id = new_id("batch")
    specs = make_specs(task, list(items), options, batch_id)
    return BatchHandle(batch_id, handles(task.id, submit(specs)))


def batch_trigger_and_wait(task: Task[Any, T], items: Iterable[Any],
                           options: dict[str, Any]) -> BatchResult[T]:  # fmt: skip
    batch_id = new_id("batch")
    specs = make_specs(task, list(items), options, batch_id)
    return BatchResult(batch_id, submit_and_wait(specs))


# -- waiting ---------------------------------------------------------------------------------


def wait_runs(ids: list[str], timeout: float | None = None) -> list[Result[Any]]:
    """Block until the runs are final (they need not be live in this kernel)."""
    if _context.in_task():
        return [Result(s) for s in _context.call_engine("wait", list(ids))]
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
    if _context.in_task():
        return await run_in_thread(wait_runs, ids)
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
