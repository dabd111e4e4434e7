"""Run and attempt statuses, and the one table of legal run transitions."""

from __future__ import annotations

from enum import Enum


class RunStatus(str, Enum):
    """Where a run is in its lifecycle. Values are the names."""

    WAITING_FOR_DEPLOY = "WAITING_FOR_DEPLOY"  # triggered by id before its task is defined
    DELAYED = "DELAYED"  # waiting for its delay to pass
    QUEUED = "QUEUED"  # ready, waiting for a worker or a queue slot
    EXECUTING = "EXECUTING"  # an attempt runs in a worker process
    REATTEMPTING = "REATTEMPTING"  # an attempt failed; the next waits for its backoff
    FROZEN = "FROZEN"  # waiting on child runs
    COMPLETED = "COMPLETED"  # final: an attempt returned
    CANCELED = "CANCELED"  # final: canceled by the user
    FAILED = "FAILED"  # final: the last allowed attempt raised, or AbortRun
    TIMED_OUT = "TIMED_OUT"  # final: an attempt exceeded max_duration
    CRASHED = "CRASHED"  # final: the worker process died (signal, exit code, out of memory)
    INTERRUPTED = "INTERRUPTED"  # final: the owning kernel stopped while the run executed
    SYSTEM_FAILURE = "SYSTEM_FAILURE"  # final: nbtasks itself failed
    EXPIRED = "EXPIRED"  # final: its ttl passed while it was still queued

    @property
    def is_final(self) -> bool:
        return self in FINAL

    def __str__(self) -> str:
        return self.value


class AttemptStatus(str, Enum):
    """The outcome of one execution of a run."""

    EXECUTING = "EXECUTING"
    COMPLETED = "COMPLETED"
    FAILED = "FAILED"
    TIMED_OUT = "TIMED_OUT"
    CRASHED = "CRASHED"
    CANCELED = "CANCELED"
    INTERRUPTED = "INTERRUPTED"
    SYSTEM_FAILURE = "SYSTEM_FAILURE"

    def __str__(self) -> str:
        return self.value


S = RunStatus

FINAL: frozenset[RunStatus] = frozenset(
    {
        S.COMPLETED,
        S.CANCELED,
        S.FAILED,
        S.TIMED_OUT,
        S.CRASHED,
        S.INTERRUPTED,
        S.SYSTEM_FAILURE,
        S.EXPIRED,
    }
)

# Every status a run can move to from each status. Final statuses lead nowhere.
TRANSITIONS: dict[RunStatus, frozenset[RunStatus]] = {
    S.WAITING_FOR_DEPLOY: frozenset({S.QUEUED, S.DELAYED, S.CANCELED, S.SYSTEM_FAILURE}),
    S.DELAYED: frozenset({S.QUEUED, S.WAITING_FOR_DEPLOY, S.CANCELED, S.SYSTEM_FAILURE}),
    S.QUEUED: frozenset(
        {S.EXECUTING, S.WAITING_FOR_DEPLOY, S.EXPIRED, S.CANCELED, S.SYSTEM_FAILURE}
    ),
    S.EXECUTING: frozenset(
        {
            S.REATTEMPTING,
            S.FROZEN,
            S.COMPLETED,
            S.CANCELED,
            S.FAILED,
            S.TIMED_OUT,
            S.CRASHED,
            S.INTERRUPTED,
            S.SYSTEM_FAILURE,
        }
    ),
    S.REATTEMPTING: frozenset({S.QUEUED, S.CANCELED, S.INTERRUPTED, S.SYSTEM_FAILURE}),
    S.FROZEN: frozenset(
        {S.EXECUTING, S.CANCELED, S.TIMED_OUT, S.CRASHED, S.INTERRUPTED, S.SYSTEM_FAILURE}
    ),
    **{status: frozenset() for status in FINAL},
}

# Runs in these statuses keep their idempotency key; others release it.
KEY_HOLDING: frozenset[RunStatus] = frozenset(RunStatus) - {
    S.FAILED,
    S.CRASHED,
    S.TIMED_OUT,
    S.EXPIRED,
    S.INTERRUPTED,
    S.SYSTEM_FAILURE,
}


class IllegalTransition(RuntimeError):
    """A status change the transition table does not allow (a bug in nbtasks)."""


def check_transition(run_id: str, old: RunStatus, new: RunStatus) -> None:
    if new not in TRANSITIONS[old]:
        raise IllegalTransition(f"run {run_id}: {old.value} -> {new.value} is not allowed")
