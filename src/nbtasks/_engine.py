"""The engine: one event loop thread that owns every live run.

Public calls prepare their work in the caller's thread (validation, dill) and hand it to
the loop with ``Engine.call``; the loop changes run state only through ``_transition``,
which checks the transition table, records an event and stages the row for the store's
next group commit. Callers that need durability wait for that commit.
"""

from __future__ import annotations

import asyncio
import concurrent.futures as cf
import json
import os
import signal
import socket
from collections import deque
from collections.abc import Callable
from typing import Any

import anyio.from_thread

from ._errors import EngineStoppedError, UnknownRunError
from ._ids import new_id
from ._models import Run
from ._pool import Pool, WorkerProc
from ._state import AttemptState, RunSpec, RunState, error_json, utcnow
from ._status import FINAL, AttemptStatus, RunStatus, check_transition
from ._store import Store

S = RunStatus
A = AttemptStatus
MAX_SPAWN_FAILURES = 3
Listener = Callable[[Run], None]


class Engine:
    def __init__(self, store_path: str, workers: int) -> None:
        self.store_path = store_path
        self.size = workers
        self.owner = f"{socket.gethostname()}:{os.getpid()}"
        self.closed = False
        self._portal_cm = anyio.from_thread.start_blocking_portal("asyncio")
        self._portal = self._portal_cm.__enter__()
        try:
            self.loop: asyncio.AbstractEventLoop = self._portal.call(asyncio.get_running_loop)
            self.store = Store(store_path, self._committed_threadsafe)
            from ._reconcile import reconcile_at_start

            reconcile_at_start(self.store, utcnow())
        except BaseException:
            self._portal_cm.__exit__(None, None, None)
            raise
        self.runs: dict[str, RunState] = {}  # live runs, until their final state is committed
        self.versions: dict[tuple[str, str], str] = {}  # (task id, code hash) -> version
        self._queue: deque[RunState] = deque()
        self._idle: list[WorkerProc] = []
        self._commit_waiters: dict[int, list[Callable[[BaseException | None], None]]] = {}
        self._listeners: dict[str, list[Listener]] = {}
        self._spawn_failures = 0
        self._last_boot_log = ""
        self.pool = Pool(self.loop, self._on_message, self._on_exit)

    # -- plumbing ----------------------------------------------------------------------

    def call(self, fn: Callable[..., Any], *args: Any) -> cf.Future[Any]:
        """Run ``fn(future, *args)`` on the loop; ``fn`` resolves the future, now or later."""
        if self.closed:
            raise EngineStoppedError("the nbtasks engine of this process has been shut down")
        fut: cf.Future[Any] = cf.Future()

        def run() -> None:
            try:
                fn(fut, *args)
            except BaseException as exc:
                if not fut.done():
                    fut.set_exception(exc)

        self.loop.call_soon_threadsafe(run)
        return fut

    def _committed_threadsafe(self, ticket: int, error: BaseException | None) -> None:
        try:
            self.loop.call_soon_threadsafe(self._committed, ticket, error)
        except RuntimeError:  # loop already closed at shutdown
            pass

    def _committed(self, ticket: int, error: BaseException | None) -> None:
        for callback in self._commit_waiters.pop(ticket, ()):
            callback(error)

    def _after_commit(self, ticket: int, callback: Callable[[BaseException | None], None]) -> None:
        self._commit_waiters.setdefault(ticket, []).append(callback)

    def _ensure_pool(self) -> None:
        """Top the pool up to its size. Workers start at the first trigger (opening a store
        costs no processes) and after workers failed to start, at the next trigger."""
        if len(self.pool.workers) < self.size:
            self._spawn_failures = 0
            try:
                while len(self.pool.workers) < self.size:
                    self.pool.spawn()
            except OSError as exc:
                self._spawn_failures = MAX_SPAWN_FAILURES
                self._fail_queued(f"{type(exc).__name__}: {exc}")

    # -- state changes -----------------------------------------------------------------

    def _event(self, run: RunState, detail: str | None = None) -> int:
        return self.store.stage_event(
            (run.id, run.updated_at, run.status.value, run.attempt_count or None, detail)
        )

    def _transition(self, run: RunState, new: RunStatus, detail: str | None = None,
                    **changes: Any) -> int:  # fmt: skip
        """The only place a run's status changes."""
        check_transition(run.id, run.status, new)
        run.status = new
        run.updated_at = utcnow()
        for name, value in changes.items():
            setattr(run, name, value)
        if new in FINAL:
            run.finished_at = run.finished_at or run.updated_at
        ticket = self.store.stage_run(run.row(), run.update_row())
        self._event(run, detail)
        self._notify(run)
        if new in FINAL:
            self._after_commit(ticket, lambda error: self._settle(run, error))
        return ticket

    def _settle(self, run: RunState, error: BaseException | None) -> None:
        """The final state is durable: release the run's waiters and forget it."""
        if self.runs.get(run.id) is run:
            del self.runs[run.id]
        snapshot = run.snapshot()
        waiters, run.waiters = run.waiters, []
        for waiter in waiters:
            waiter(snapshot, error)
        self._listeners.pop(run.id, None)

    def _notify(self, run: RunState) -> None:
        listeners = self._listeners.get(run.id)
        if listeners:
            snapshot = run.snapshot()
            for listener in list(listeners):
                listener(snapshot)

    # -- triggering ----------------------------------------------------------------------

    def submit(self, fut: cf.Future[Any], specs: list[RunSpec],
               final: cf.Future[Any] | None = None) -> None:  # fmt: skip
        """Create runs; resolve ``fut`` with their ids once they are committed, and
        ``final`` (if given) with their final snapshots, in order, once those are."""
        ticket = -1
        created: list[RunState] = []
        now = utcnow()
        for spec in specs:
            tv = spec.task
            retry_attempts = tv.retry.max_attempts if tv and tv.retry else 1
            run = RunState(
                id=spec.id,
                task_id=spec.task_id,
                version=tv.version if tv else None,
                status=S.QUEUED,
                queue=spec.queue,
                payload=spec.payload,
                payload_preview=spec.payload_preview,
                created_at=spec.created_at,
                updated_at=now,
                task=tv,
                queued_at=now,
                tags=spec.tags,
                trigger_metadata=spec.metadata,
                metadata=dict(spec.metadata or {}),
                max_attempts=spec.max_attempts or retry_attempts,
                max_duration_s=spec.max_duration_s,
                batch_id=spec.batch_id,
                owner=self.owner,
                concurrency_limit=spec.concurrency_limit,
            )
            run.root_id = run.id
            self.runs[run.id] = run
            ticket = self.store.stage_run(run.row())
            self._event(run)
            self._queue.append(run)
            created.append(run)
        if final is not None:
            self._wait_all(final, created)
        ids = [spec.id for spec in specs]
        self._after_commit(
            ticket, lambda error: fut.set_exception(error) if error else fut.set_result(ids)
        )
        self._ensure_pool()
        self._pump()

    def register_version(self, fut: cf.Future[Any], task_id: str, code_hash: str,
                         source: str, fn_bytes: bytes, options: str) -> None:  # fmt: skip
        """Resolve ``fut`` with the version of this definition, creating it if new."""
        key = (task_id, code_hash)
        if key in self.versions:
            fut.set_result(self.versions[key])
            return
        rows = self.store.query(
            "SELECT version, code_hash FROM task_versions WHERE task_id = ?", [task_id]
        )
        known = {h: v for v, h in rows}
        if code_hash in known:
            version = known[code_hash]
        else:
            today = utcnow().strftime("%Y%m%d")
            taken = [int(v.split(".")[1]) for v, _ in rows if v.startswith(today + ".")]
            version = f"{today}.{max(taken, default=0) + 1}"
            self.store.stage_version(
                (task_id, version, code_hash, source, fn_bytes, options, utcnow())
            )
        self.versions[key] = version
        fut.set_result(version)

    # -- dispatch ------------------------------------------------------------------------

    def _pump(self) -> None:
        """Start queued runs on idle workers, oldest first."""
        while self._queue and self._idle:
            run = self._queue.popleft()
            if run.status is not S.QUEUED:
                continue  # canceled while queued
            worker = self._idle.pop()
            self._start_attempt(run, worker)

    def _start_attempt(self, run: RunState, worker: WorkerProc) -> None:
        tv = run.task
        assert tv is not None
        now = utcnow()
        attempt = AttemptState(
            id=new_id("attempt"),
            run_id=run.id,
            number=run.attempt_count + 1,
            status=A.EXECUTING,
            started_at=now,
            pid=worker.pid,
            worker=worker,
        )
        worker.attempt = attempt
        run.attempts.append(attempt)
        self.store.stage_attempt(attempt.row(), new=True)
        self._transition(
            run, S.EXECUTING, attempt_count=attempt.number, started_at=run.started_at or now
        )
        fn_bytes = None if tv.fn_key in worker.loaded else tv.fn_bytes
        worker.loaded.add(tv.fn_key)
        context = {
            "run_id": run.id,
            "task_id": run.task_id,
            "attempt_number": attempt.number,
            "version": run.version,
            "tags": list(run.tags),
            "metadata": run.metadata,
        }
        message = ("run", attempt.id, tv.fn_key, fn_bytes, run.payload, context, tv.memory_limit)
        self.pool.send(worker, message)  # a dead worker shows up as end of file next
        if run.max_duration_s is not None:
            attempt.timer = self.loop.call_later(run.max_duration_s, self._time_out, run, attempt)

    # -- worker events -------------------------------------------------------------------

    def _on_message(self, worker: WorkerProc, message: tuple[Any, ...]) -> None:
        kind = message[0]
        attempt: AttemptState | None = worker.attempt
        if kind == "ready":
            worker.ready = True
            self._spawn_failures = 0
            if not worker.dying and not self.closed:
                self._idle.append(worker)
                self._pump()
        elif attempt is None or message[1] != attempt.id or attempt.kill_reason:
            return  # about an attempt that was canceled or timed out meanwhile
        elif kind == "done":
            self._on_done(worker, attempt, *message[2:])
        elif kind == "oom":
            attempt.oom = True
            attempt.kill_reason = "oom"
        elif kind == "metadata":
            self._on_metadata(attempt, *message[2:])

    def _on_done(self, worker: WorkerProc, attempt: AttemptState, outcome: str,
                 output: bytes | None, output_preview: str, error: dict[str, str] | None,
                 exc: bytes | None, stdout: str, stderr: str) -> None:  # fmt: skip
        worker.attempt = None
        run = self.runs[attempt.run_id]
        attempt.stdout, attempt.stderr = stdout, stderr
        if not worker.dying and not self.closed:
            self._idle.append(worker)
        if outcome == "completed":
            self._end_attempt(run, attempt, A.COMPLETED)
            self._transition(run, S.COMPLETED, output=output, output_preview=output_preview)
        else:
            err = error or {"type": "Error", "message": "", "traceback": ""}
            status = A.SYSTEM_FAILURE if outcome == "system_failure" else A.FAILED
            text = error_json(status, err["type"], err["message"], err["traceback"], exc)
            self._end_attempt(run, attempt, status, text)
            if outcome == "failed":
                self._retry_or(run, S.FAILED, text)
            else:
                self._transition(run, S.SYSTEM_FAILURE if outcome == "system_failure"
                                 else S.FAILED, error=text)  # fmt: skip
        self._pump()

    def _on_metadata(self, attempt: AttemptState, op: str, key: str, value: Any) -> None:
        from ._context import apply_metadata_op

        run = self.runs[attempt.run_id]
        apply_metadata_op(run.metadata, op, key, value)
        run.updated_at = utcnow()
        self.store.stage_run(run.row(), run.update_row())
        self._notify(run)

    def _on_exit(self, worker: WorkerProc, exit_code: int | None, sig: int | None,
                 log: str) -> None:  # fmt: skip
        if worker in self._idle:
            self._idle.remove(worker)
        attempt: AttemptState | None = worker.attempt
        worker.attempt = None
        if attempt is not None:
            self._worker_died(attempt, exit_code, sig)
        if not worker.ready and not worker.dying:
            self._spawn_failures += 1
            self._last_boot_log = log
        if self.closed:
            return
        if self._spawn_failures >= MAX_SPAWN_FAILURES:
            self._fail_queued(log)
        elif len(self.pool.workers) < self.size:
            try:
                self.pool.spawn()
            except OSError as exc:
                self._spawn_failures = MAX_SPAWN_FAILURES
                self._fail_queued(f"{type(exc).__name__}: {exc}")

    def _worker_died(self, attempt: AttemptState, exit_code: int | None, sig: int | None) -> None:
        if attempt.timer is not None:
            attempt.timer.cancel()
        attempt.exit_code, attempt.signal = exit_code, sig
        run = self.runs.get(attempt.run_id)
        if attempt.kill_reason in ("cancel", "timeout", "shutdown") or run is None:
            self.store.stage_attempt(attempt.row())  # exit details of a run already final
            return
        how = f"signal {signal.Signals(sig).name} ({sig})" if sig else f"exit code {exit_code}"
        if attempt.oom:
            limit = run.task.memory_limit if run.task else None
            message = f"the worker ran out of memory (memory_limit={limit} bytes) and was killed"
            text = error_json(A.CRASHED, "OutOfMemory", message)
            self._end_attempt(run, attempt, A.CRASHED, text)
            self._transition(run, S.CRASHED, error=text)
        else:
            text = error_json(A.CRASHED, "WorkerCrashed", f"the worker process died with {how}")
            self._end_attempt(run, attempt, A.CRASHED, text)
            self._retry_or(run, S.CRASHED, text)
        self._pump()

    def _end_attempt(self, run: RunState, attempt: AttemptState, status: AttemptStatus,
                     error: str | None = None) -> None:  # fmt: skip
        if attempt.timer is not None:
            attempt.timer.cancel()
            attempt.timer = None
        attempt.status = status
        attempt.finished_at = utcnow()
        attempt.error = error
        self.store.stage_attempt(attempt.row())

    def _retry_or(self, run: RunState, final: RunStatus, error: str) -> None:
        """After a failed attempt: back off and try again if allowed, else end as ``final``."""
        if run.attempt_count < run.max_attempts:
            retry = run.task.retry if run.task else None
            delay = retry.delay_before(run.attempt_count) if retry else 0.0
            self._transition(run, S.REATTEMPTING, error=error)
            run.timer = self.loop.call_later(delay, self._requeue, run)
        else:
            self._transition(run, final, error=error)

    def _requeue(self, run: RunState) -> None:
        run.timer = None
        if run.status is S.REATTEMPTING:
            self._transition(run, S.QUEUED, queued_at=utcnow())
            self._queue.append(run)
            self._pump()

    def _fail_queued(self, log: str) -> None:
        text = error_json(
            S.SYSTEM_FAILURE,
            "WorkerStartError",
            f"nbtasks could not start a worker process:\n{log.strip() or 'no output'}",
        )
        for run in list(self._queue):
            if run.status is S.QUEUED:
                self._transition(run, S.SYSTEM_FAILURE, error=text)
        self._queue.clear()

    def _time_out(self, run: RunState, attempt: AttemptState) -> None:
        attempt.timer = None
        if attempt.status is not A.EXECUTING or attempt.kill_reason:
            return
        message = f"the attempt exceeded max_duration={run.max_duration_s:g}s and was killed"
        text = error_json(A.TIMED_OUT, "TimeoutError", message)
        attempt.kill_reason = "timeout"
        self._end_attempt(run, attempt, A.TIMED_OUT, text)
        self._transition(run, S.TIMED_OUT, error=text)
        self.pool.kill(attempt.worker)

    # -- cancel, wait, read ----------------------------------------------------------------

    def cancel(self, fut: cf.Future[Any], run_id: str) -> None:
        """Cancel a live run; resolve ``fut`` with its snapshot once that is committed."""
        run = self.runs.get(run_id)
        if run is None:
            fut.set_result(None)  # not live here: the caller reads the store
            return
        if run.status not in FINAL:
            if run.timer is not None:
                run.timer.cancel()
                run.timer = None
            text = error_json(S.CANCELED, "Canceled", "the run was canceled")
            attempt = run.attempt
            if attempt is not None:
                attempt.kill_reason = "cancel"
                self._end_attempt(run, attempt, A.CANCELED, text)
                self.pool.kill(attempt.worker)
            self._transition(run, S.CANCELED, error=text)
        self._wait_all(fut, [run], single=True)

    def wait(self, fut: cf.Future[Any], run_id: str) -> None:
        """Resolve ``fut`` with the final snapshot of a live run (None if not live)."""
        run = self.runs.get(run_id)
        if run is None:
            fut.set_result(None)
        else:
            self._wait_all(fut, [run], single=True)

    def _wait_all(self, fut: cf.Future[Any], runs: list[RunState], single: bool = False) -> None:
        results: list[Run | None] = [None] * len(runs)
        pending = [len(runs)]

        def waiter(i: int) -> Callable[[Run, BaseException | None], None]:
            def settled(snapshot: Run, error: BaseException | None) -> None:
                if fut.done():
                    return
                if error is not None:
                    fut.set_exception(error)
                    return
                results[i] = snapshot
                pending[0] -= 1
                if pending[0] == 0:
                    fut.set_result(results[0] if single else results)

            return settled

        if not runs:
            fut.set_result([])
        for i, run in enumerate(runs):
            run.waiters.append(waiter(i))

    def snapshot(self, fut: cf.Future[Any], run_id: str) -> None:
        run = self.runs.get(run_id)
        fut.set_result(run.snapshot() if run is not None else None)

    def subscribe(self, fut: cf.Future[Any], run_id: str, listener: Listener) -> None:
        """Add a listener of a live run; resolve ``fut`` with its current snapshot."""
        run = self.runs.get(run_id)
        if run is None:
            fut.set_result(None)
            return
        self._listeners.setdefault(run_id, []).append(listener)
        fut.set_result(run.snapshot())

    def unsubscribe(self, fut: cf.Future[Any], run_id: str, listener: Listener) -> None:
        listeners = self._listeners.get(run_id, [])
        if listener in listeners:
            listeners.remove(listener)
        fut.set_result(None)

    def require_run(self, run_id: str) -> None:
        if run_id not in self.runs and not self.store.query(
            "SELECT 1 FROM runs WHERE id = ?", [run_id]
        ):
            raise UnknownRunError(run_id)

    # -- shutdown ------------------------------------------------------------------------

    def close(self, timeout: float = 10.0) -> None:
        """Interrupt executing runs, stop the workers, commit, and close the store."""
        if self.closed:
            return
        done: cf.Future[Any] = cf.Future()
        try:
            self.loop.call_soon_threadsafe(self._shutdown, done)
            done.result(timeout)
        except (cf.TimeoutError, RuntimeError):
            pass
        finally:
            self.closed = True
            self.store.close()
            self._portal_cm.__exit__(None, None, None)

    def _shutdown(self, fut: cf.Future[Any]) -> None:
        self.closed = True
        ticket = -1
        for run in list(self.runs.values()):
            if run.status in (S.EXECUTING, S.REATTEMPTING, S.FROZEN):
                if run.timer is not None:
                    run.timer.cancel()
                text = error_json(
                    S.INTERRUPTED, "Interrupted", "the kernel that owned the run stopped"
                )
                attempt = run.attempt
                if attempt is not None:
                    attempt.kill_reason = "shutdown"
                    self._end_attempt(run, attempt, A.INTERRUPTED, text)
                ticket = self._transition(run, S.INTERRUPTED, error=text)
        self._idle.clear()
        self.pool.stop_all()
        if ticket < 0:
            ticket = self.store.stage_event(("", utcnow(), "ENGINE_STOPPED", None, self.owner))
        self._after_commit(ticket, lambda _e: fut.set_result(None))


def options_json(options: dict[str, Any]) -> str:
    return json.dumps(options, default=str, sort_keys=True)
