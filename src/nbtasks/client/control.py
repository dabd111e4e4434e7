"""Runs by id, live in the engine or stored: retrieve, cancel, wait for their end.

Inside a task (in a worker) these go to the kernel's engine through the worker's pipe.
"""

from __future__ import annotations

import reprlib
import time
from datetime import timedelta
from typing import Any

from nbtasks.client.blocking import block, run_in_thread
from nbtasks.client.config import engine
from nbtasks.core import context as _context
from nbtasks.core.durations import parse_duration
from nbtasks.core.errors import UnknownRunError
from nbtasks.core.models import Attempt, Result, Run, run_from_row
from nbtasks.store.schema import ATTEMPT_COLUMNS, RUN_PAYLOAD, RUN_SELECT


def check_run_id(run_id: object, name: str = "run_id") -> str:
    """``run_id`` if it is a str; anything else raises a ``TypeError`` naming it."""
    if not isinstance(run_id, str):
        raise TypeError(
            f"{name}={reprlib.repr(run_id)} is not a run id: a run id is a string like "
            "'run_0mx503fa40000996gx7', as trigger returns it in handle.id"
        )
    return run_id


def fetch(run_id: str, what: str) -> Any:
    """Load one part of a stored run on first access (payload, output, attempts)."""
    store = engine().store
    if what == "attempts":
        rows = store.query(
            f"SELECT {', '.join(ATTEMPT_COLUMNS)} FROM attempts WHERE run_id = ? ORDER BY number",
            [run_id],
        )
        return tuple(Attempt.from_row(r) for r in rows)
    column = RUN_PAYLOAD if what == "payload" else what
    (row,) = store.query(f"SELECT {column} FROM runs WHERE id = ?", [run_id])
    return row[0]


def retrieve(run_id: str) -> Run:
    """The run as it is now: live from the engine, or from the store."""
    check_run_id(run_id)
    if _context.in_task():
        run: Run = _context.call_engine("retrieve", run_id)
        return run
    eng = engine()
    live = block(eng.call("snapshot", run_id))
    if live is not None:
        return live  # type: ignore[no-any-return]
    rows = eng.store.query(f"SELECT {RUN_SELECT} FROM runs WHERE id = ?", [run_id])
    if not rows:
        raise UnknownRunError(run_id)
    return run_from_row(rows[0], fetch, fetch(run_id, "attempts"))


def cancel(run_id: str, cause: str = "by runs.cancel()") -> Run:
    """Cancel a run and its descendants (their process trees are killed); a final run is
    left as it is. ``cause`` completes "Canceled ..." in the run's error: who canceled."""
    check_run_id(run_id)
    if _context.in_task():
        _context.call_engine("cancel", run_id, f"{cause} in the task of another run")
        return retrieve(run_id)
    eng = engine()
    eng.require_run(run_id)
    snapshot = block(eng.call("cancel", run_id, cause))
    return snapshot if snapshot is not None else retrieve(run_id)


STOPPED = "by an interrupt of the wait that started it (the stop button, Ctrl-C)"


def cancel_all(ids: list[str], cause: str = STOPPED) -> None:
    """Cancel what a wait started, when the wait is stopped."""
    for run_id in ids:
        try:
            cancel(run_id, cause)
        except Exception:
            pass


def results(ids: list[str], snapshots: list[Run | None]) -> list[Result[Any]]:
    """The results of final runs, from their snapshots, or the store where there is none
    (all read at once: a batch of thousands ended before the wait is two queries)."""
    missing = [i for i, s in zip(ids, snapshots, strict=True) if s is None]
    stored = stored_runs(missing) if len(missing) > 1 else {}
    return [
        Result(s if s is not None else stored.get(i) or retrieve(i))
        for i, s in zip(ids, snapshots, strict=True)
    ]


def stored_runs(ids: list[str]) -> dict[str, Run]:
    """The stored runs of ``ids`` (those found), with their attempts, in two queries."""
    store = engine().store
    rows = store.query(
        f"SELECT {RUN_SELECT} FROM runs WHERE id IN (SELECT unnest(?::VARCHAR[]))", [ids]
    )
    attempts: dict[str, list[Attempt]] = {}
    for row in store.query(
        f"SELECT {', '.join(ATTEMPT_COLUMNS)} FROM attempts "
        "WHERE run_id IN (SELECT unnest(?::VARCHAR[])) ORDER BY run_id, number",
        [ids],
    ):
        attempts.setdefault(row[1], []).append(Attempt.from_row(row))
    return {r[0]: run_from_row(r, fetch, tuple(attempts.get(r[0], ()))) for r in rows}


def require_runs(ids: list[str]) -> None:
    """Raise ``UnknownRunError`` for the first of ``ids`` neither live nor stored."""
    engine().request("require_runs", list(ids))


def wait_runs(ids: list[str], timeout: float | str | timedelta | None = None) -> list[Result[Any]]:
    """Block until the runs are final (they need not be live in this kernel); ``timeout``
    is a duration (seconds, a timedelta or a string like ``"5s"``) or ``None``."""
    for run_id in ids:
        check_run_id(run_id)
    seconds = parse_duration("timeout", timeout)
    if _context.in_task():
        return [Result(s) for s in _context.call_engine("wait", list(ids))]
    eng = engine()
    require_runs(ids)
    futs = [eng.call("wait", run_id) for run_id in ids]
    deadline = None if seconds is None else time.monotonic() + seconds
    snapshots = []
    for fut in futs:
        left = None if deadline is None else max(0.0, deadline - time.monotonic())
        snapshots.append(block(fut, left))
    return results(ids, snapshots)


async def await_runs(ids: list[str]) -> list[Result[Any]]:
    """The async twin of ``wait_runs``; cancelling the await cancels the runs."""
    import asyncio  # about 35 ms to import: only for async callers

    for run_id in ids:
        check_run_id(run_id)
    if _context.in_task():
        return await run_in_thread(wait_runs, ids)
    eng = engine()
    futs = [eng.call("wait", run_id) for run_id in ids]
    try:
        snapshots = [await asyncio.wrap_future(f) for f in futs]
    except asyncio.CancelledError:
        await run_in_thread(cancel_all, ids, "as the await that started it was cancelled")
        raise
    return await run_in_thread(results, ids, snapshots)
