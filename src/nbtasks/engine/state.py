"""The engine's live records of runs and attempts, and how they become rows and snapshots.

Only the engine's event loop thread touches these objects.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, fields
from datetime import datetime
from operator import attrgetter
from typing import Any

from nbtasks.core.models import Attempt, Run, run_from_wire
from nbtasks.core.options import Retry
from nbtasks.core.status import AttemptStatus, RunStatus


@dataclass(slots=True, eq=False)
class TaskVersion:
    """What a worker needs to run one version of a task."""

    task_id: str
    version: str
    fn_key: str  # hash of fn_bytes: a worker loads each key once
    fn_bytes: bytes
    retry: Retry | None
    memory_limit: int | None
    max_duration_s: float | None = None
    ttl_s: float | None = None
    queue: str | None = None
    concurrency_limit: int | None = None
    memory_limit_text: str | None = None  # as the user wrote it (for messages)
    resources: dict[str, float] | None = None  # what its attempts need of a worker

    def __reduce__(self) -> tuple[Any, ...]:
        """Pickled as its values in field order, as ``RunSpec`` is."""
        return (TaskVersion, _version_values(self))


@dataclass(slots=True, eq=False)
class RunSpec:
    """A run as prepared by the caller's thread: validated, payload already serialised."""

    id: str
    task_id: str
    task: TaskVersion | None
    payload: bytes
    payload_preview: str
    created_at: datetime
    queue: str | None = None
    concurrency_limit: int | None = None
    tags: tuple[str, ...] = ()
    metadata: dict[str, Any] | None = None
    max_attempts: int | None = None
    max_duration_s: float | None = None
    batch_id: str | None = None
    delay_until: datetime | None = None
    ttl_s: float | None = None
    idempotency_key: str | None = None  # already scoped (see _calls.scoped_key)
    idempotency_key_ttl_s: float | None = None
    replayed_from: str | None = None
    parent_id: str | None = None  # set by the engine for runs triggered inside a task
    payload_stored: bool = False  # in the store's payloads table already (payloads.py)
    resources: dict[str, float] | None = None
    origin: str | None = None  # what the triggering process runs (client/config.py origin)

    def __reduce__(self) -> tuple[Any, ...]:
        """Pickled as its values in field order: about half the cost of a slotted
        dataclass's own state (a trigger sends one spec per run)."""
        return (RunSpec, _spec_values(self))


_version_values = attrgetter(*(f.name for f in fields(TaskVersion)))
_spec_values = attrgetter(*(f.name for f in fields(RunSpec)))


@dataclass(slots=True, eq=False)
class AttemptState:
    id: str
    run_id: str
    number: int
    status: AttemptStatus
    started_at: datetime
    pid: int | None
    finished_at: datetime | None = None
    exit_code: int | None = None
    signal: int | None = None
    oom: bool = False
    error: str | None = None  # JSON
    stdout: str = ""
    stderr: str = ""
    displays: list[dict[str, Any]] = field(default_factory=list)  # MIME bundles
    worker: Any = None  # the id of the worker executing it (executor.base.WorkerId)
    queue: str | None = None  # the queue whose slot it holds
    peak_rss: int | None = None  # out of memory: the bytes in use when caught
    kill_reason: str | None = None  # "cancel" | "timeout" | "oom" | "shutdown"
    timer: Any = None
    holds_slot: bool = False  # counts against the pool size and its queue's limit
    last_notify: float = 0.0  # monotonic time live logs last reached listeners

    def row(self) -> tuple[Any, ...]:
        return (
            self.id, self.run_id, self.number, self.status._value_, self.started_at,
            self.finished_at, self.pid, self.exit_code, self.signal, self.oom, self.error,
            self.stdout, self.stderr, json.dumps(self.displays) if self.displays else None,
        )  # fmt: skip

    def snapshot(self) -> Attempt:
        return Attempt.from_row(self.row())


@dataclass(slots=True, eq=False)
class BatchWait:
    """The runs a blocking batch wait created: their final states need to be durable only
    together, so only the last one to finish hurries its commit."""

    unfinished: int


@dataclass(slots=True, eq=False)
class RunState:
    id: str
    task_id: str
    version: str | None
    status: RunStatus
    queue: str | None
    payload: bytes
    payload_preview: str
    created_at: datetime
    updated_at: datetime
    task: TaskVersion | None = None
    output: bytes | None = None
    output_preview: str | None = None
    error: str | None = None  # JSON
    queued_at: datetime | None = None
    started_at: datetime | None = None
    finished_at: datetime | None = None
    delay_until: datetime | None = None
    ttl_s: float | None = None
    expired_at: datetime | None = None
    idempotency_key: str | None = None
    idempotency_expires_at: datetime | None = None
    tags: tuple[str, ...] = ()
    metadata: dict[str, Any] = field(default_factory=dict)
    trigger_metadata: dict[str, Any] | None = None
    max_attempts: int = 1
    max_duration_s: float | None = None
    attempt_count: int = 0
    parent_id: str | None = None
    root_id: str | None = None
    depth: int = 0
    batch_id: str | None = None
    replayed_from: str | None = None
    owner: str | None = None
    resources: dict[str, float] | None = None  # what its attempts need of a worker
    origin: str | None = None  # where it was triggered from; a child has its root's
    concurrency_limit: int | None = None
    attempts: list[AttemptState] = field(default_factory=list)
    timer: Any = None  # delay or backoff
    ttl_timer: Any = None
    resume: Any = None  # while FROZEN: what to reply to the worker once children are done
    prefetched: Any = None  # while QUEUED: the worker it was sent ahead to
    history: list[tuple[str, datetime]] = field(default_factory=list)  # status changes
    waiters: list[Any] = field(default_factory=list)  # called with (this run, error) once final
    batch_wait: BatchWait | None = None  # the blocking batch wait that created it
    payload_stored: bool = False  # its payload is in the payloads table, not its row

    @property
    def kind(self) -> tuple[tuple[str, float], ...] | None:
        """The kind of worker its attempts need (``resources``), comparable; None: any."""
        return tuple(sorted(self.resources.items())) if self.resources else None

    @property
    def attempt(self) -> AttemptState | None:
        """The attempt executing now, if any."""
        if self.attempts and self.attempts[-1].status is AttemptStatus.EXECUTING:
            return self.attempts[-1]
        return None

    def row(self) -> tuple[Any, ...]:
        return (
            self.id, self.task_id, self.version, self.status._value_, self.queue,
            None if self.payload_stored else self.payload, self.payload_preview,
            self.output, self.output_preview, self.error,
            self.created_at, self.updated_at, self.queued_at, self.started_at,
            self.finished_at, self.delay_until, self.ttl_s, self.expired_at,
            self.idempotency_key, self.idempotency_expires_at, list(self.tags),
            json.dumps(self.metadata) if self.metadata else None,
            json.dumps(self.trigger_metadata) if self.trigger_metadata else None,
            self.max_attempts, self.max_duration_s, self.attempt_count, self.parent_id,
            self.root_id, self.depth, self.batch_id, self.replayed_from, self.owner,
            json.dumps(self.resources) if self.resources else None, self.origin,
        )  # fmt: skip

    @classmethod
    def from_row(cls, row: tuple[Any, ...]) -> RunState:
        """Rebuild a stored run (``RUN_COLUMNS`` order) to make it live again."""
        (id_, task_id, version, status, queue, payload, payload_preview, output,
         output_preview, error, created_at, updated_at, queued_at, started_at, finished_at,
         delay_until, ttl_s, expired_at, key, key_expires, tags, metadata, trigger_metadata,
         max_attempts, max_duration_s, attempt_count, parent_id, root_id, depth, batch_id,
         replayed_from, owner, resources, origin) = row  # fmt: skip
        return cls(
            id=id_, task_id=task_id, version=version, status=RunStatus(status), queue=queue,
            payload=payload, payload_preview=payload_preview, created_at=created_at,
            updated_at=updated_at, output=output, output_preview=output_preview, error=error,
            queued_at=queued_at, started_at=started_at, finished_at=finished_at,
            delay_until=delay_until, ttl_s=ttl_s, expired_at=expired_at, idempotency_key=key,
            idempotency_expires_at=key_expires, tags=tuple(tags or ()),
            metadata=json.loads(metadata) if metadata else {},
            trigger_metadata=json.loads(trigger_metadata) if trigger_metadata else None,
            max_attempts=max_attempts or 1, max_duration_s=max_duration_s,
            attempt_count=attempt_count, parent_id=parent_id, root_id=root_id, depth=depth,
            batch_id=batch_id, replayed_from=replayed_from, owner=owner,
            resources=json.loads(resources) if resources else None, origin=origin,
        )  # fmt: skip

    def update_row(self) -> tuple[Any, ...]:
        """The columns that change after creation, in ``RUN_UPDATE_COLUMNS`` order."""
        return (
            self.id, self.version, self.status._value_, self.output, self.output_preview,
            self.error, self.updated_at, self.queued_at, self.started_at, self.finished_at,
            self.delay_until, self.expired_at, self.idempotency_expires_at,
            json.dumps(self.metadata) if self.metadata else None, self.attempt_count,
        )  # fmt: skip

    def wire(self) -> tuple[Any, ...]:
        """What ``snapshot()`` holds, as plain data (attempts as rows): how the final
        runs of a blocking wait travel to its client (``service/finals.py``), for
        ``run_from_wire`` to make the snapshots of (``snapshot`` is that, here). Its order
        is that function's."""
        return (
            self.id, self.task_id, self.version, self.status._value_, self.queue,
            self.payload_preview, self.output_preview, self.error, self.created_at,
            self.updated_at, self.queued_at, self.started_at, self.finished_at,
            self.delay_until, self.ttl_s, self.expired_at, self.idempotency_key, self.tags,
            self.metadata, self.max_attempts, self.attempt_count, self.parent_id,
            self.root_id, self.depth, self.batch_id, self.replayed_from, self.resources,
            self.origin, self.payload, self.output, [a.row() for a in self.attempts],
            self.history,
        )  # fmt: skip

    def snapshot(self) -> Run:
        return run_from_wire(self.wire())


def error_json(status: RunStatus | AttemptStatus | str, type_: str, message: str,
               traceback: str = "", exc: bytes | None = None) -> str:  # fmt: skip
    data: dict[str, Any] = {
        "status": str(status),
        "type": type_,
        "message": message,
        "traceback": traceback,
    }
    if exc is not None:
        data["exc"] = exc.hex()
    return json.dumps(data)
