"""Triggering: the calls behind ``Task.trigger*`` and ``runs.trigger``/``runs.replay``.

Inside a task (in a worker) runs are created by the kernel's engine, through the worker's
pipe.
"""

from __future__ import annotations

import concurrent.futures as cf
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any, TypeVar

from nbtasks.client.blocking import block
from nbtasks.client.config import engine
from nbtasks.client.control import cancel_all, results
from nbtasks.client.handles import BatchHandle, RunHandle
from nbtasks.client.specs import make_specs
from nbtasks.core import context as _context
from nbtasks.core import display
from nbtasks.core.errors import interrupted
from nbtasks.core.ids import new_id
from nbtasks.core.models import BatchResult, Result, Run
from nbtasks.engine.payloads import check_sizes, store_big
from nbtasks.engine.state import RunSpec

if TYPE_CHECKING:
    from nbtasks.client.task import Task
    from nbtasks.service.client import RemoteEngine

T = TypeVar("T")
# After an interrupt, how long a wait looks for the shutdown request that follows one
# when a kernel restarts (Jupyter sends both at once; the stop button sends no request).
RESTART_GRACE_S = 0.3


def _payloads(eng: RemoteEngine, specs: list[RunSpec]) -> None:
    """Refuse a payload over the cap; write big ones to the store first (payloads.py).
    Name this process as the runs' origin (inside a task, the server gives children
    their root's)."""
    for spec in specs:
        spec.origin = eng.name  # as this process introduced itself when it connected
    check_sizes(specs, *eng.max_payload)
    store_big(eng.store, specs)  # the server writes them


def submit(specs: list[RunSpec]) -> list[tuple[str, bool]]:
    """Create the runs; return ``(run_id, is_cached)`` each, once they are committed."""
    if _context.in_task():
        created: list[tuple[str, bool]] = _context.call_engine("submit", specs, False)
    else:
        eng = engine()
        _payloads(eng, specs)
        created = block(eng.call("submit", specs))
    return created


def submit_and_wait(specs: list[RunSpec]) -> list[Result[Any]]:
    """Create the runs and block until they are final; in a notebook, their live view shows
    meanwhile, and the stop button cancels them."""
    if _context.in_task():
        return [Result(s) for s in _context.call_engine("submit", specs, True)]
    eng = engine()
    _payloads(eng, specs)
    final: cf.Future[list[Run | None]] = cf.Future()
    ids = [s.id for s in specs]
    try:
        created = block(eng.call("submit", specs, final))
        ids = [run_id for run_id, _ in created]
        if specs:
            display.show_wait(ids, specs[0].task_id, batch=specs[0].batch_id is not None)
        snapshots = block(final)
    except KeyboardInterrupt:
        if display.process_ending(RESTART_GRACE_S):  # a kernel restart: runs go on
            raise interrupted(
                "the kernel is shutting down: its runs go on in the nbtasks server"
            ) from None
        cancel_all(ids)  # the stop button: cancel what this wait started
        what = "its run was canceled" if len(ids) == 1 else "its runs not yet final were canceled"
        raise interrupted(f"the wait was interrupted, so {what}") from None
    return results(ids, snapshots)


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
