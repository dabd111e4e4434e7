"""The engine's side of attempts: starting them, and what workers report back.

A mixin of ``Engine``; every method runs on the engine's loop thread. A worker reports a
result (``done``), live logs, displays and metadata, and calls from task code; its end of
file means the process is gone, which ends its attempt CRASHED unless the engine killed
it on purpose (cancel, timeout, out of memory, shutdown).
"""

from __future__ import annotations

import signal
import time
from typing import TYPE_CHECKING, Any

from nbtasks.core.ids import new_id
from nbtasks.core.status import AttemptStatus, RunStatus
from nbtasks.engine.state import AttemptState, RunState, error_json, utcnow
from nbtasks.executor.local.pool import MAX_SPAWN_FAILURES, WorkerProc

if TYPE_CHECKING:
    from nbtasks.engine.engine import EngineBase as _Base
else:
    _Base = object

S = RunStatus
LIVE_LOG_CAP = 256 * 1024  # characters of each stream kept in memory while an attempt runs
MAX_DISPLAYS = 100  # display(...) bundles kept per attempt
NOTIFY_EVERY_S = 0.1  # live log updates reach listeners at most this often


class OutcomesMixin(_Base):
    def _start_attempt(self, run: RunState, worker: WorkerProc) -> None:
        """Start the next attempt of ``run`` on an idle worker."""
        attempt = self._new_attempt(run, worker)
        worker.attempt = attempt
        self._begin(run, attempt)
        self._send(run, worker, attempt, sent_ahead=False)

    def _send_ahead(self, run: RunState, worker: WorkerProc) -> None:
        """Give a busy worker a run to start once what it has ends, without a round trip
        through the kernel. The run stays QUEUED until the worker says it started."""
        attempt = self._new_attempt(run, worker)
        worker.ahead.append((run, attempt))
        run.prefetched = worker
        self._send(run, worker, attempt, sent_ahead=True)

    def _new_attempt(self, run: RunState, worker: WorkerProc) -> AttemptState:
        return AttemptState(
            id=new_id("attempt"),
            run_id=run.id,
            number=run.attempt_count + 1,
            status=AttemptStatus.EXECUTING,
            started_at=utcnow(),
            pid=worker.pid,
            worker=worker,
        )

    def _begin(self, run: RunState, attempt: AttemptState) -> None:
        """The attempt runs: the run is EXECUTING, holds its slots, its timers start."""
        now = attempt.started_at = utcnow()
        run.attempts.append(attempt)
        self._take_slot(run, attempt)
        if run.ttl_timer is not None:
            run.ttl_timer.cancel()
            run.ttl_timer = None
        self.store.stage_attempt(attempt.row(), new=True)
        self._transition(
            run, S.EXECUTING, attempt_count=attempt.number, started_at=run.started_at or now
        )
        if run.max_duration_s is not None:
            attempt.timer = self.loop.call_later(run.max_duration_s, self._time_out, run, attempt)

    def _send(self, run: RunState, worker: WorkerProc, attempt: AttemptState,
              sent_ahead: bool) -> None:  # fmt: skip
        tv = run.task
        assert tv is not None
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
        message = ("run", attempt.id, tv.fn_key, fn_bytes, run.payload, context,
                   tv.memory_limit, sent_ahead)  # fmt: skip
        self.pool.send(worker, message, now=not sent_ahead)

    def _on_started(self, worker: WorkerProc, attempt_id: str) -> None:
        """A worker started the first attempt it was sent ahead."""
        if not worker.ahead or worker.ahead[0][1].id != attempt_id:
            # taken back (canceled, expired) but started before the worker heard of it
            self.pool.kill(worker)
            return
        run, attempt = worker.ahead.popleft()
        run.prefetched = None
        worker.attempt = attempt
        self._begin(run, attempt)
        self._pump()

    def _take_back(self, run: RunState, requeue: bool = False) -> None:
        """Withdraw the attempt sent ahead for ``run`` (the worker skips it if not started)."""
        worker = run.prefetched
        run.prefetched = None
        if worker is None:
            return
        for i, (ahead, attempt) in enumerate(worker.ahead):
            if ahead is run:
                del worker.ahead[i]
                self.pool.send(worker, ("drop", attempt.id))
                worker.dropping.add(attempt.id)  # no work for it until it says it skipped
                break
        if requeue and run.status is S.QUEUED:
            self.scheduler.push_front(run)

    def _requeue_ahead(self, worker: WorkerProc) -> None:
        """Take back everything sent ahead to ``worker``, first in line again, in order."""
        for run, _ in reversed(list(worker.ahead)):
            self._take_back(run, requeue=True)

    def _make_idle(self, worker: WorkerProc) -> None:
        if not worker.dying and not self.closed:
            self._idle.append(worker)

    def _take_slot(self, run: RunState, attempt: AttemptState) -> None:
        attempt.holds_slot = True
        self._active += 1
        self.scheduler.started(run)

    def _release_slot(self, run: RunState, attempt: AttemptState) -> None:
        if attempt.holds_slot:
            attempt.holds_slot = False
            self._active -= 1
            self.scheduler.stopped(run)

    # -- messages ------------------------------------------------------------------------

    def _on_message(self, worker: WorkerProc, message: tuple[Any, ...]) -> None:
        kind = message[0]
        attempt: AttemptState | None = worker.attempt
        if kind == "started":
            self._on_started(worker, message[1])
        elif kind == "dropped":
            worker.dropping.discard(message[1])
            if not worker.dropping and worker.attempt is None and not worker.ahead:
                self._make_idle(worker)
                self._pump()
        elif kind == "ready":
            worker.ready = True
            self._spawn_failures = 0
            if not worker.dying and not self.closed:
                self._idle.append(worker)
                self._retire_extra()
                self._top_up()  # the next worker boots
                self._pump()
        elif attempt is None or message[1] != attempt.id or attempt.kill_reason:
            return  # about an attempt that was canceled or timed out meanwhile
        elif kind == "done":
            self._on_done(worker, attempt, *message[2:])
        elif kind == "log":
            self._on_log(attempt, *message[2:])
        elif kind == "display":
            self._on_display(attempt, message[2])
        elif kind == "metadata":
            self._on_metadata(attempt, *message[2:])
        elif kind == "call":
            self._on_call(worker, attempt, *message[2:])
        elif kind == "oom":
            attempt.oom = True
            attempt.kill_reason = "oom"

    def _on_done(self, worker: WorkerProc, attempt: AttemptState, outcome: str,
                 output: bytes | None, output_preview: str, error: dict[str, str] | None,
                 exc: bytes | None, stdout: str, stderr: str, took: float) -> None:  # fmt: skip
        worker.attempt = None
        run = self.runs[attempt.run_id]
        attempt.stdout, attempt.stderr = stdout, stderr
        self.attempt_s += (took - self.attempt_s) * 0.2  # sizes what workers get sent ahead
        self._release_slot(run, attempt)
        if not worker.ahead and not worker.dropping:
            self._make_idle(worker)  # else it starts what it was sent ahead
        if outcome == "completed":
            self._end_attempt(run, attempt, AttemptStatus.COMPLETED)
            self._transition(
                run, S.COMPLETED, output=output, output_preview=output_preview, error=None
            )
        else:
            err = error or {"type": "Error", "message": "", "traceback": ""}
            failed = outcome != "system_failure"
            status = AttemptStatus.FAILED if failed else AttemptStatus.SYSTEM_FAILURE
            text = error_json(status, err["type"], err["message"], err["traceback"], exc)
            self._end_attempt(run, attempt, status, text)
            if outcome == "failed":
                self._retry_or(run, S.FAILED, text)
            else:
                self._transition(run, S.FAILED if failed else S.SYSTEM_FAILURE, error=text)
        self._retire_extra()
        self._pump()

    def _on_log(self, attempt: AttemptState, stream: str, text: str) -> None:
        if stream == "stdout":
            attempt.stdout = (attempt.stdout + text)[-LIVE_LOG_CAP:]
        else:
            attempt.stderr = (attempt.stderr + text)[-LIVE_LOG_CAP:]
        run = self.runs.get(attempt.run_id)
        if run is not None and self._listeners.get(run.id):
            now = time.monotonic()
            if now - attempt.last_notify >= NOTIFY_EVERY_S:
                attempt.last_notify = now
                self._notify(run)

    def _on_display(self, attempt: AttemptState, bundle: dict[str, Any]) -> None:
        if len(attempt.displays) < MAX_DISPLAYS:
            attempt.displays.append(bundle)
            self.store.stage_attempt(attempt.row())
            run = self.runs.get(attempt.run_id)
            if run is not None:
                self._notify(run)

    def _on_metadata(self, attempt: AttemptState, op: str, key: str, value: Any) -> None:
        from nbtasks.core.context import apply_metadata_op

        run = self.runs[attempt.run_id]
        apply_metadata_op(run.metadata, op, key, value)
        self._update(run, None)

    # -- ends of attempts ------------------------------------------------------------------

    def _on_exit(self, worker: WorkerProc, exit_code: int | None, sig: int | None,
                 log: str) -> None:  # fmt: skip
        if worker in self._idle:
            self._idle.remove(worker)
        attempt: AttemptState | None = worker.attempt
        worker.attempt = None
        self._requeue_ahead(worker)  # never started: first in line again, in order
        if attempt is not None:
            self._worker_died(attempt, exit_code, sig)
        if not worker.ready and not worker.dying:
            self._spawn_failures += 1
        if self.closed:
            return
        if self._spawn_failures >= MAX_SPAWN_FAILURES:
            self._fail_queued(log)
        else:
            self._top_up()
        self._pump()

    def _worker_died(self, attempt: AttemptState, exit_code: int | None, sig: int | None) -> None:
        if attempt.timer is not None:
            attempt.timer.cancel()
        attempt.exit_code, attempt.signal = exit_code, sig
        run = self.runs.get(attempt.run_id)
        if run is not None:
            self._release_slot(run, attempt)
        if attempt.kill_reason in ("cancel", "timeout", "shutdown") or run is None:
            self.store.stage_attempt(attempt.row())  # exit details of a run already final
            return
        how = f"signal {signal.Signals(sig).name} ({sig})" if sig else f"exit code {exit_code}"
        frozen = run.status is S.FROZEN
        if attempt.oom:
            limit = run.task.memory_limit if run.task else None
            message = f"the worker ran out of memory (memory_limit={limit} bytes) and was killed"
            text = error_json(AttemptStatus.CRASHED, "OutOfMemory", message)
            self._end_attempt(run, attempt, AttemptStatus.CRASHED, text)
            self._transition(run, S.CRASHED, error=text)
        else:
            message = f"the worker process died with {how}"
            text = error_json(AttemptStatus.CRASHED, "WorkerCrashed", message)
            self._end_attempt(run, attempt, AttemptStatus.CRASHED, text)
            if frozen:
                self._transition(run, S.CRASHED, error=text)
            else:
                self._retry_or(run, S.CRASHED, text)

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
            self._enter(run)
            self._pump()

    def _fail_queued(self, log: str) -> None:
        text = error_json(
            S.SYSTEM_FAILURE,
            "WorkerStartError",
            f"nbtasks could not start a worker process:\n{log.strip() or 'no output'}",
        )
        for run in self.scheduler.queued():
            self._transition(run, S.SYSTEM_FAILURE, error=text)
        self.scheduler.clear()

    def _time_out(self, run: RunState, attempt: AttemptState) -> None:
        attempt.timer = None
        if attempt.status is not AttemptStatus.EXECUTING or attempt.kill_reason:
            return
        message = f"the attempt exceeded max_duration={run.max_duration_s:g}s and was killed"
        text = error_json(AttemptStatus.TIMED_OUT, "TimeoutError", message)
        attempt.kill_reason = "timeout"
        for child in [r for r in self.runs.values() if r.parent_id == run.id]:
            self._cancel(child)
        self._end_attempt(run, attempt, AttemptStatus.TIMED_OUT, text)
        self._release_slot(run, attempt)
        self._transition(run, S.TIMED_OUT, error=text)
        self.pool.kill(attempt.worker)
        self._pump()
