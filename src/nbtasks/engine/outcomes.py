"""The engine's side of attempts: beginning them, and what the executor reports back.

A mixin of ``Engine``; every method runs on the engine's loop thread. Every event of the
executor seam (``executor/base.py``) comes through ``on_event``: dispatch (``dispatch.py``)
updates what it knows of the worker, and the run's lifecycle moves on here: a result
(``Finished``), live logs, displays and metadata, calls from task code, out of memory, and
a worker lost, which ends its attempt CRASHED unless the engine ended it on purpose
(cancel, timeout, shutdown) or it ran out of memory.
"""

from __future__ import annotations

import signal
import time
from typing import TYPE_CHECKING, Any

from nbtasks.core.durations import utcnow
from nbtasks.core.status import AttemptStatus, RunStatus
from nbtasks.engine.dispatch import MAX_SPAWN_FAILURES
from nbtasks.engine.handover import TAKEN_BACK
from nbtasks.engine.state import AttemptState, RunState, error_json
from nbtasks.executor import base as E
from nbtasks.executor.base import Event

if TYPE_CHECKING:
    from nbtasks.engine.engine import EngineBase as _Base
else:
    _Base = object

S = RunStatus
LIVE_LOG_CAP = 256 * 1024  # characters of each stream kept in memory while an attempt runs
MAX_DISPLAYS = 100  # display(...) bundles kept per attempt
NOTIFY_EVERY_S = 0.1  # live log updates reach listeners at most this often


def _mib(size: int | None) -> str:
    return f"{(size or 0) / (1 << 20):.0f} MiB"


class OutcomesMixin(_Base):
    def begin(self, run: RunState, attempt: AttemptState) -> None:
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

    def claim(self, run: RunState, attempt: AttemptState) -> None:
        """Record, before a worker is handed ``attempt`` ahead, that it may begin: the run
        stays QUEUED but its stored ``attempt_count`` counts the attempt, whose own row comes
        with its start (``begin``). A crash leaves such a run counting an attempt it has no
        row for: the next engine ends it INTERRUPTED rather than run it again, unless the
        started log says its body never began (``recovery.py``). ``unclaim`` undoes it for
        an attempt that never started."""
        counted, run.attempt_count = run.attempt_count, attempt.number
        try:
            self.store.stage_run_update(run.update_row(), run.row)
        finally:
            run.attempt_count = counted

    def unclaim(self, run: RunState) -> None:
        self.store.stage_run_update(run.update_row(), run.row)

    def _take_slot(self, run: RunState, attempt: AttemptState) -> None:
        attempt.holds_slot = True
        attempt.queue = run.queue
        self.scheduler.started(run)

    def release_slot(self, attempt: AttemptState) -> None:
        """The attempt's body is gone (or FROZEN): its queue slot is free."""
        if attempt.holds_slot:
            attempt.holds_slot = False
            self.scheduler.stopped(attempt.queue)

    # -- events ------------------------------------------------------------------------------

    def on_event(self, event: Event) -> None:
        """Everything an executor reports comes through here, on the loop thread."""
        d = self.dispatch
        if isinstance(event, E.Finished):
            attempt = d.finished(event.worker, event.attempt_id, event.took)
            if attempt is not None:
                self._on_finished(attempt, event)
            d.retire_extra()
            d.pump()
            return
        if isinstance(event, E.Started):
            d.on_started(event.worker, event.attempt_id)
            return
        if isinstance(event, E.Log):
            attempt = d.attempt_on(event.worker, event.attempt_id)
            if attempt is not None:
                self._on_log(attempt, event.stream, event.text)
        elif isinstance(event, E.Metadata):
            attempt = d.attempt_on(event.worker, event.attempt_id)
            if attempt is not None:
                self._on_metadata(attempt, event.op, event.key, event.value)
        elif isinstance(event, E.Display):
            attempt = d.attempt_on(event.worker, event.attempt_id)
            if attempt is not None:
                self._on_display(attempt, event.bundle)
        elif isinstance(event, E.Call):
            attempt = d.attempt_on(event.worker, event.attempt_id)
            if attempt is not None:
                self._on_call(event.worker, attempt, event.request_id, event.op, event.args)
        elif isinstance(event, E.Dropped):
            d.on_dropped(event.worker, event.attempt_id)
        elif isinstance(event, E.KillDone):
            d.on_killed(event.worker, event.attempt_id, event.killed)
        elif isinstance(event, E.OutOfMemory):
            # It ends once its processes are gone (with exit details); its Started may
            # still be on the way: the executor measured the attempt it executes.
            attempt = d.sent(event.worker, event.attempt_id)
            if attempt is not None:
                attempt.oom, attempt.peak_rss = True, event.rss
        elif isinstance(event, E.WorkerReady):
            d.on_ready(event.worker, event.pid)
        elif isinstance(event, E.WorkerLost):
            self._on_lost(event)

    def _on_finished(self, attempt: AttemptState, ev: E.Finished) -> None:
        if attempt.kill_reason == TAKEN_BACK:
            return  # started by a worker for a run that had ended meanwhile: not recorded
        attempt.stdout, attempt.stderr = ev.stdout, ev.stderr
        run = self.runs.get(attempt.run_id)
        if attempt.kill_reason is not None or run is None:  # ended already (canceled...)
            self.store.stage_attempt(attempt.row())
            return
        if ev.outcome == "completed":
            self._end_attempt(run, attempt, AttemptStatus.COMPLETED)
            self._transition(
                run, S.COMPLETED, output=ev.output, output_preview=ev.output_preview, error=None
            )
        elif ev.outcome == "oom":
            self._out_of_memory(attempt, ev.rss, inside=True)
        else:
            err = ev.error or {"type": "Error", "message": "", "traceback": ""}
            failed = ev.outcome != "system_failure"
            status = AttemptStatus.FAILED if failed else AttemptStatus.SYSTEM_FAILURE
            text = error_json(status, err["type"], err["message"], err["traceback"], ev.exc)
            self._end_attempt(run, attempt, status, text)
            if ev.outcome == "failed":
                self._retry_or(run, S.FAILED, text)
            else:
                self._transition(run, S.FAILED if failed else S.SYSTEM_FAILURE, error=text)

    def _out_of_memory(self, attempt: AttemptState, rss: int | None, inside: bool = False
                       ) -> None:  # fmt: skip
        """The attempt's tree passed its memory limit (seen from outside, or an allocation
        refused inside): CRASHED with ``oom``, never retried."""
        run = self.runs[attempt.run_id]
        tv = run.task
        limit = tv.memory_limit if tv else None
        written = (tv.memory_limit_text if tv else None) or f"{limit} bytes"
        if inside:
            message = (f"the attempt ran out of memory: an allocation would have taken it past "
                       f"its memory_limit={written!r} ({_mib(rss)} in use)")  # fmt: skip
        else:
            over = f", {_mib((rss or 0) - (limit or 0))} over it" if limit else ""
            message = (f"the attempt ran out of memory: its processes used {_mib(rss)}, past "
                       f"its memory_limit={written!r}{over}, and were killed")  # fmt: skip
        attempt.oom = True
        attempt.kill_reason = "oom"
        attempt.peak_rss = rss
        text = error_json(AttemptStatus.CRASHED, "OutOfMemory", message)
        self._end_attempt(run, attempt, AttemptStatus.CRASHED, text)
        self._transition(run, S.CRASHED, error=text)
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

    def _on_lost(self, ev: E.WorkerLost) -> None:
        _, attempt = self.dispatch.lost(ev.worker)
        if attempt is not None:
            self._worker_died(attempt, ev.exit_code, ev.signal, ev.log)
        if self.closed:
            return
        if self.dispatch.spawn_failures >= MAX_SPAWN_FAILURES:
            self.fail_queued(ev.log)
        else:
            self._top_up()
        self._pump()

    def _worker_died(self, attempt: AttemptState, exit_code: int | None, sig: int | None,
                     log: str = "") -> None:  # fmt: skip
        if attempt.timer is not None:
            attempt.timer.cancel()
        if attempt.kill_reason == TAKEN_BACK:
            return
        attempt.exit_code, attempt.signal = exit_code, sig
        run = self.runs.get(attempt.run_id)
        if attempt.kill_reason is not None or run is None:
            self.store.stage_attempt(attempt.row())  # exit details of an attempt ended already
            return
        if attempt.oom:
            self._out_of_memory(attempt, attempt.peak_rss)
            return
        if sig is None and exit_code is None:  # its machine went away: the executor says why
            message = log or "the worker was lost"
        else:
            how = f"signal {signal.Signals(sig).name} ({sig})" if sig else f"exit code {exit_code}"
            message = f"the worker process died with {how}"
        text = error_json(AttemptStatus.CRASHED, "WorkerCrashed", message)
        self._end_attempt(run, attempt, AttemptStatus.CRASHED, text)
        if run.status is S.FROZEN:
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

    def fail_queued(self, log: str) -> None:
        text = error_json(
            S.SYSTEM_FAILURE,
            "WorkerStartError",
            f"nbtasks could not start a worker process:\n{log.strip() or 'no output'}",
        )
        for run in self.scheduler.queued() + self.dispatch.parked():
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
            self._cancel(child, "with its parent run, which timed out")
        self._end_attempt(run, attempt, AttemptStatus.TIMED_OUT, text)
        self.dispatch.kill(attempt)
        self._transition(run, S.TIMED_OUT, error=text)
        self._pump()
