"""What a newly opened store says about the engine that held it before.

Runs that were executing, waiting for a retry or frozen when their kernel went away end
INTERRUPTED, and so do their executing attempts. Queued runs wait for their task to be
defined again (WAITING_FOR_DEPLOY); delayed runs stay delayed. Every change follows the
transition table and is recorded as an event.
"""

from __future__ import annotations

from datetime import datetime

from nbtasks.core.status import AttemptStatus, RunStatus, check_transition
from nbtasks.engine.state import RunState, error_json
from nbtasks.store.schema import RUN_SELECT
from nbtasks.store.store import Store

_LEFT_RUNNING = (RunStatus.EXECUTING, RunStatus.REATTEMPTING, RunStatus.FROZEN)


def _move(cur: object, ids: list[str], new: RunStatus, now: datetime, sets: str,
          params: list[object]) -> None:  # fmt: skip
    cur.execute(  # type: ignore[attr-defined]
        "INSERT INTO run_events SELECT id, ?, ?, attempt_count, 'reconciled at start' "
        "FROM runs WHERE id IN (SELECT unnest(?::VARCHAR[]))",
        [now, new.value, ids],
    )
    cur.execute(  # type: ignore[attr-defined]
        f"UPDATE runs SET status = ?, updated_at = ?{sets} "
        "WHERE id IN (SELECT unnest(?::VARCHAR[]))",
        [new.value, now, *params, ids],
    )


def reconcile_at_start(store: Store, now: datetime) -> None:
    """Settle what the previous owner of the store left behind, in one transaction."""
    for status in _LEFT_RUNNING:
        check_transition("(reconcile)", status, RunStatus.INTERRUPTED)
    check_transition("(reconcile)", RunStatus.QUEUED, RunStatus.WAITING_FOR_DEPLOY)
    text = error_json(
        RunStatus.INTERRUPTED, "Interrupted", "the nbtasks server that owned the run stopped"
    )
    running = [s.value for s in _LEFT_RUNNING]

    def settle(cur: object) -> None:
        ids = [r[0] for r in cur.execute(  # type: ignore[attr-defined]
            "SELECT id FROM runs WHERE status IN (SELECT unnest(?::VARCHAR[]))", [running]
        ).fetchall()]  # fmt: skip
        cur.execute(  # type: ignore[attr-defined]  # no engine executes anything here now
            "UPDATE attempts SET status = ?, finished_at = ?, error = ? WHERE status = ?",
            [AttemptStatus.INTERRUPTED.value, now, text, AttemptStatus.EXECUTING.value],
        )
        if ids:
            _move(cur, ids, RunStatus.INTERRUPTED, now, ", finished_at = ?, error = ?",
                  [now, text])  # fmt: skip
        queued = [r[0] for r in cur.execute(  # type: ignore[attr-defined]
            "SELECT id FROM runs WHERE status = 'QUEUED'").fetchall()]  # fmt: skip
        if queued:
            _move(cur, queued, RunStatus.WAITING_FOR_DEPLOY, now, "", [])

    store.write(settle)


def load_waiting_runs(store: Store) -> list[RunState]:
    """The runs a new engine takes over: delayed ones and those waiting for their task."""
    rows = store.query(
        f"SELECT {RUN_SELECT} FROM runs "
        "WHERE status IN ('DELAYED', 'WAITING_FOR_DEPLOY') ORDER BY id"
    )
    return [RunState.from_row(tuple(row)) for row in rows]
