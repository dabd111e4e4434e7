"""What a newly opened store says about the engine that held it before.

Runs that were executing, waiting for a retry or frozen when their kernel went away end
INTERRUPTED, and so do their executing attempts. Every change goes through the same
transition table as live changes, and is recorded as an event.
"""

from __future__ import annotations

from datetime import datetime

from ._state import error_json
from ._status import AttemptStatus, RunStatus, check_transition
from ._store import Store

_LEFT_RUNNING = (RunStatus.EXECUTING, RunStatus.REATTEMPTING, RunStatus.FROZEN)


def reconcile_at_start(store: Store, now: datetime) -> int:
    """Mark runs orphaned by a stopped kernel INTERRUPTED; return how many there were."""
    for status in _LEFT_RUNNING:
        check_transition("(reconcile)", status, RunStatus.INTERRUPTED)
    statuses = [s.value for s in _LEFT_RUNNING]
    marks = ", ".join("?" for _ in statuses)
    text = error_json(RunStatus.INTERRUPTED, "Interrupted", "the kernel that owned the run stopped")
    cur = store.cursor()
    try:
        cur.begin()
        ids = [r[0] for r in cur.execute(
            f"SELECT id FROM runs WHERE status IN ({marks})", statuses).fetchall()]  # fmt: skip
        if ids:
            cur.execute(
                "UPDATE attempts SET status = ?, finished_at = ?, error = ? "
                "WHERE status = ? AND run_id IN (SELECT unnest(?::VARCHAR[]))",
                [AttemptStatus.INTERRUPTED.value, now, text, AttemptStatus.EXECUTING.value, ids],
            )
            cur.execute(
                "INSERT INTO run_events SELECT id, ?, ?, attempt_count, 'reconciled at start' "
                "FROM runs WHERE id IN (SELECT unnest(?::VARCHAR[]))",
                [now, RunStatus.INTERRUPTED.value, ids],
            )
            cur.execute(
                "UPDATE runs SET status = ?, updated_at = ?, finished_at = ?, error = ? "
                "WHERE id IN (SELECT unnest(?::VARCHAR[]))",
                [RunStatus.INTERRUPTED.value, now, now, text, ids],
            )
        cur.commit()
        return len(ids)
    finally:
        cur.close()
