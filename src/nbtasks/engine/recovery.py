"""What a newly opened store says about the engine that held it before.

Runs that were executing, waiting for a retry or frozen when their kernel went away end
INTERRUPTED, and so do their executing attempts. A queued run that counts an attempt it
has no row for was handed to a worker ahead (``Engine.claim``): if the started log
(``executor/started.py``) says its worker took it up, or cannot say, its body may have
begun, so it is never started again: it is recorded as having executed that attempt
(EXECUTING, then INTERRUPTED). If the log says it never began, it counts the attempt no
more. Queued runs wait for their task to be defined again (WAITING_FOR_DEPLOY); delayed
runs stay delayed. Every change follows the transition table and is recorded as an event.
"""

from __future__ import annotations

from datetime import datetime

from nbtasks.core.ids import new_id
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


def reconcile_at_start(store: Store, now: datetime,
                       noted: set[tuple[str, int]] | None = None) -> None:  # fmt: skip
    """Settle what the previous owner of the store left behind, in one transaction.
    ``noted``: the attempts sent ahead its workers took up (the started log), or None if
    that is not known."""
    for status in _LEFT_RUNNING:
        check_transition("(reconcile)", status, RunStatus.INTERRUPTED)
    check_transition("(reconcile)", RunStatus.QUEUED, RunStatus.WAITING_FOR_DEPLOY)
    check_transition("(reconcile)", RunStatus.QUEUED, RunStatus.EXECUTING)
    text = error_json(
        RunStatus.INTERRUPTED, "Interrupted", "the nbtasks server that owned the run stopped"
    )
    running = [s.value for s in _LEFT_RUNNING]
    if not store.holds_runs():
        return  # a new store: nothing to settle

    def settle(cur: object) -> None:
        handed = cur.execute(  # type: ignore[attr-defined]
            "SELECT id, attempt_count, updated_at FROM runs WHERE status = 'QUEUED' AND "
            "attempt_count > (SELECT count(*) FROM attempts WHERE run_id = runs.id)"
        ).fetchall()
        waited = [h[0] for h in handed if noted is not None and (h[0], h[1]) not in noted]
        if waited:  # handed over, never began: queued as before
            cur.execute(  # type: ignore[attr-defined]
                "UPDATE runs SET attempt_count = (SELECT count(*) FROM attempts "
                "WHERE run_id = runs.id) WHERE id IN (SELECT unnest(?::VARCHAR[]))",
                [waited],
            )
            handed = [h for h in handed if h[0] not in set(waited)]
        if handed:  # their attempts, EXECUTING: settled with the others just below
            cur.executemany(  # type: ignore[attr-defined]
                "INSERT INTO attempts (id, run_id, number, status, started_at, oom) "
                "VALUES (?, ?, ?, ?, ?, false)",
                [(new_id("attempt"), run_id, number, AttemptStatus.EXECUTING.value, at)
                 for run_id, number, at in handed],
            )  # fmt: skip
            _move(cur, [h[0] for h in handed], RunStatus.EXECUTING, now,
                  ", started_at = coalesce(started_at, updated_at)", [])  # fmt: skip
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
