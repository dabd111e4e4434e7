"""What users hold: ``Run`` and ``Attempt`` snapshots, ``Result``, ``BatchResult``, ``Page``.

Snapshots are immutable. Payload and output stay dill bytes until first accessed, and a
listed run fetches them (and its attempts) from the store only when asked. Reprs leave out
ids, times and pids so notebook outputs are the same on every execution.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Generic, TypeVar

from nbtasks.core import display
from nbtasks.core.errors import RemoteTraceback, RunError, ShownAs
from nbtasks.core.status import FINAL, AttemptStatus, RunStatus

T = TypeVar("T")
_MISSING: Any = object()


def _ms(start: datetime | None, end: datetime | None) -> float | None:
    if start is None or end is None:
        return None
    return round((end - start).total_seconds() * 1000, 3)


def error_from_json(text: str | None, run_id: str | None = None) -> RunError | None:
    if not text:
        return None
    data = json.loads(text)
    exc = data.get("exc")
    return RunError(
        data.get("status", ""),
        data.get("type", ""),
        data.get("message", ""),
        data.get("traceback", ""),
        run_id=run_id,
        exc_bytes=bytes.fromhex(exc) if exc else None,
    )


@dataclass(frozen=True)
class Attempt:
    """One execution of a run in a worker process."""

    id: str
    run_id: str
    number: int
    status: AttemptStatus
    started_at: datetime
    finished_at: datetime | None
    pid: int | None
    exit_code: int | None
    signal: int | None
    oom: bool
    error: RunError | None
    stdout: str
    stderr: str
    displays: tuple[dict[str, Any], ...] = ()  # MIME bundles of display(...) calls

    @property
    def duration_ms(self) -> float | None:
        return _ms(self.started_at, self.finished_at)

    @classmethod
    def from_row(cls, row: Sequence[Any]) -> Attempt:
        (id_, run_id, number, status, started, finished, pid, code, sig, oom, err, out, errout,
         displays) = row  # fmt: skip
        return cls(
            id_, run_id, number, AttemptStatus(status), started, finished, pid, code, sig,
            bool(oom), error_from_json(err, run_id), out or "", errout or "",
            tuple(json.loads(displays)) if displays else (),
        )  # fmt: skip

    def __repr__(self) -> str:
        extra = ""
        if self.error is not None:
            extra = f", error={self.error.type}"
        if self.oom:
            extra += ", oom=True"
        return f"Attempt(number={self.number}, status={self.status.value}{extra})"


@dataclass(frozen=True, repr=False)
class Run:
    """A snapshot of a run. ``payload`` and ``output`` are loaded on first access."""

    id: str
    task_id: str
    version: str | None
    status: RunStatus
    queue: str | None
    payload_preview: str | None
    output_preview: str | None
    error: RunError | None
    created_at: datetime
    updated_at: datetime
    queued_at: datetime | None
    started_at: datetime | None
    finished_at: datetime | None
    delay_until: datetime | None
    ttl: float | None
    expired_at: datetime | None
    idempotency_key: str | None
    tags: tuple[str, ...]
    metadata: dict[str, Any]
    max_attempts: int | None
    attempt_count: int
    parent_id: str | None
    root_id: str | None
    depth: int
    batch_id: str | None
    replayed_from: str | None
    resources: dict[str, float] | None = None  # what its attempts need of a worker
    origin: str | None = None  # the notebook, script or command that triggered its root run
    _payload_bytes: bytes | None = field(default=None, compare=False)
    _output_bytes: bytes | None = field(default=None, compare=False)
    _attempts: tuple[Attempt, ...] | None = field(default=None, compare=False)
    _fetch: Callable[[str, str], Any] | None = field(default=None, compare=False)
    _history: tuple[tuple[str, datetime], ...] | None = field(default=None, compare=False)
    _cache: dict[str, Any] = field(default_factory=dict, compare=False)

    @property
    def is_final(self) -> bool:
        return self.status in FINAL

    @property
    def duration_ms(self) -> float | None:
        return _ms(self.started_at, self.finished_at)

    def _load(self, name: str, data: bytes | None) -> Any:
        if name not in self._cache:
            if data is None and self._fetch is not None:
                data = self._fetch(self.id, name)
            from nbtasks.core.serialize import loads

            self._cache[name] = None if data is None else loads(data)
        return self._cache[name]

    @property
    def payload(self) -> Any:
        return self._load("payload", self._payload_bytes)

    @property
    def output(self) -> Any:
        return self._load("output", self._output_bytes)

    @property
    def attempts(self) -> tuple[Attempt, ...]:
        if self._attempts is not None:
            return self._attempts
        if "attempts" not in self._cache:
            self._cache["attempts"] = self._fetch(self.id, "attempts") if self._fetch else ()
        attempts: tuple[Attempt, ...] = self._cache["attempts"]
        return attempts

    def _repr_mimebundle_(self, **kwargs: Any) -> Any:
        """In a notebook: the live run widget; elsewhere, the text."""
        return display.run_bundle(self.id, repr(self), **kwargs)

    def _ipython_display_(self) -> None:
        """In a notebook: the live run widget, in an output it can update."""
        display.display_run(self.id, repr(self))

    def __repr__(self) -> str:
        parts = [f"task={self.task_id!r}", f"status={self.status.value}"]
        parts.append(f"attempts={self.attempt_count}")
        if self.status is RunStatus.COMPLETED and self.output_preview is not None:
            parts.append(f"output={self.output_preview}")
        if self.error is not None:
            parts.append(f"error={self.error.type}: {self.error.message}")
        return f"Run({', '.join(parts)})"


class Result(Generic[T]):
    """The outcome of a finished run."""

    def __init__(self, run: Run) -> None:
        self.run = run

    @property
    def id(self) -> str:
        return self.run.id

    @property
    def task_id(self) -> str:
        return self.run.task_id

    @property
    def status(self) -> RunStatus:
        return self.run.status

    @property
    def ok(self) -> bool:
        return self.run.status is RunStatus.COMPLETED

    @property
    def output(self) -> T | None:
        output: T | None = self.run.output if self.ok else None
        return output

    @property
    def error(self) -> RunError | None:
        return None if self.ok else self.run.error

    def unwrap(self) -> T:
        """The output, or raise the task's own exception with the worker's traceback."""
        if self.ok:
            return self.run.output  # type: ignore[no-any-return]
        err = self.run.error or RunError(self.status.value, self.status.value, "")
        original: BaseException | None = None
        if err.exc_bytes is not None:
            try:
                from nbtasks.core.serialize import loads

                original = loads(err.exc_bytes)
            except Exception:
                original = None
        if isinstance(original, BaseException):
            original.__cause__ = RemoteTraceback(err.traceback)
            if err.traceback:
                try:
                    original._render_traceback_ = ShownAs(err.traceback)  # type: ignore[attr-defined]
                except AttributeError:  # an exception type without a __dict__
                    pass
            raise original
        raise err

    def __repr__(self) -> str:
        if self.ok:
            return f"Result({self.status.value}, output={self.run.output_preview})"
        e = self.run.error
        detail = f", error={e.type}: {e.message}" if e is not None else ""
        return f"Result({self.status.value}{detail})"


class BatchResult(Generic[T]):
    """The results of a batch, in the order of its items."""

    def __init__(self, batch_id: str, results: list[Result[T]]) -> None:
        self.id = batch_id
        self.runs = results

    @property
    def ok(self) -> bool:
        return all(r.ok for r in self.runs)

    @property
    def outputs(self) -> list[T | None]:
        return [r.output for r in self.runs]

    def unwrap(self) -> list[T]:
        return [r.unwrap() for r in self.runs]

    def __len__(self) -> int:
        return len(self.runs)

    def __iter__(self) -> Iterator[Result[T]]:
        return iter(self.runs)

    def __getitem__(self, i: int) -> Result[T]:
        return self.runs[i]

    def counts(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for r in self.runs:
            out[r.status.value] = out.get(r.status.value, 0) + 1
        return out

    def _repr_mimebundle_(self, **kwargs: Any) -> Any:
        """In a notebook: the live batch widget; elsewhere, the text."""
        task_id = self.runs[0].task_id if self.runs else ""
        return display.batch_bundle([r.id for r in self.runs], task_id, repr(self), **kwargs)

    def _ipython_display_(self) -> None:
        """In a notebook: the live batch widget, in an output it can update."""
        task_id = self.runs[0].task_id if self.runs else ""
        display.display_batch([r.id for r in self.runs], task_id, repr(self))

    def __repr__(self) -> str:
        counts = ", ".join(f"{k}={v}" for k, v in sorted(self.counts().items()))
        return f"BatchResult({len(self.runs)} runs: {counts})"


class BatchItem:
    """One batch item with options of its own, e.g. ``BatchItem(p, idempotency_key="k")``."""

    def __init__(self, payload: Any, **options: Any) -> None:
        self.payload = payload
        self.options = options

    def __repr__(self) -> str:
        return f"BatchItem({self.payload!r}, **{self.options!r})"


class Page(list[Run]):
    """One page of ``runs.list``: newest first; ``next`` is the cursor for ``after=``."""

    def __init__(self, items: list[Run], next_cursor: str | None) -> None:
        super().__init__(items)
        self.next = next_cursor

    def __repr__(self) -> str:
        more = ", more" if self.next else ""
        return f"Page({len(self)} runs{more})"


def run_from_row(
    row: Sequence[Any],
    fetch: Callable[[str, str], Any] | None = None,
    attempts: tuple[Attempt, ...] | None = None,
) -> Run:
    """A ``Run`` from a ``runs`` row in ``RUN_COLUMNS`` order (blobs may be None)."""
    (id_, task_id, version, status, queue, payload, payload_preview, output, output_preview,
     error, created_at, updated_at, queued_at, started_at, finished_at, delay_until, ttl_s,
     expired_at, idempotency_key, _key_expires, tags, metadata, _trigger_metadata,
     max_attempts, _max_duration, attempt_count, parent_id, root_id, depth, batch_id,
     replayed_from, _owner, resources, origin) = row  # fmt: skip
    return Run(
        id=id_,
        task_id=task_id,
        version=version,
        status=RunStatus(status),
        queue=queue,
        payload_preview=payload_preview,
        output_preview=output_preview,
        error=error_from_json(error, id_),
        created_at=created_at,
        updated_at=updated_at,
        queued_at=queued_at,
        started_at=started_at,
        finished_at=finished_at,
        delay_until=delay_until,
        ttl=ttl_s,
        expired_at=expired_at,
        idempotency_key=idempotency_key,
        tags=tuple(tags or ()),
        metadata=json.loads(metadata) if metadata else {},
        max_attempts=max_attempts,
        attempt_count=attempt_count,
        parent_id=parent_id,
        root_id=root_id,
        depth=depth,
        batch_id=batch_id,
        replayed_from=replayed_from,
        resources=json.loads(resources) if resources else None,
        origin=origin,
        _payload_bytes=payload,
        _output_bytes=output,
        _attempts=attempts,
        _fetch=fetch,
    )


def _when(value: Any) -> Any:
    """A time as MessagePack brings it back: a datetime, or the ISO text of a naive one."""
    return datetime.fromisoformat(value) if isinstance(value, str) else value


def run_from_wire(values: Sequence[Any]) -> Run:
    """The snapshot a run's ``RunState.wire()`` values describe (in that order), as they
    are or after a trip through MessagePack (tuples come back as lists). Nothing of the
    values is shared with the snapshot but immutable ones (and ``resources``)."""
    (id_, task_id, version, status, queue, payload_preview, output_preview, error, created_at,
     updated_at, queued_at, started_at, finished_at, delay_until, ttl_s, expired_at,
     idempotency_key, tags, metadata, max_attempts, attempt_count, parent_id, root_id, depth,
     batch_id, replayed_from, resources, origin, payload, output, attempts,
     history) = values  # fmt: skip
    return Run(
        id_, task_id, version, RunStatus(status), queue, payload_preview, output_preview,
        error_from_json(error, id_), _when(created_at), _when(updated_at), _when(queued_at),
        _when(started_at), _when(finished_at), _when(delay_until), ttl_s, _when(expired_at),
        idempotency_key, tuple(tags), dict(metadata), max_attempts, attempt_count, parent_id,
        root_id, depth, batch_id, replayed_from, resources, origin,
        _payload_bytes=payload,
        _output_bytes=output,
        _attempts=tuple(
            Attempt.from_row((*row[:4], _when(row[4]), _when(row[5]), *row[6:]))
            for row in attempts
        ),
        _history=tuple((status, _when(at)) for status, at in history),
    )  # fmt: skip
