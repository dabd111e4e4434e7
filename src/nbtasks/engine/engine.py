"""The engine: one event loop thread that owns every live run.

Public calls prepare their work in the caller's thread (validation, dill) and hand it to
the loop with ``Engine.call``; the loop changes run state only through ``_transition``,
which checks the transition table, records an event and stages the row for the store's
next group commit. Callers that need durability wait for that commit.

``Engine(store_path, workers, executor)``: the engine drives an executor only through the
seam of ``executor/base.py``. Which worker runs what, and when, is ``Dispatch``'s
(``dispatch.py``), the one owner of worker state. The run lifecycle class is split by
topic: this module cancels, waits on and settles runs; ``intake`` creates them (keys,
delays, TTL, deploys, versions); ``outcomes`` takes what the executor reports (results,
crashes, out of memory, timeouts, retries); ``nesting`` serves runs triggered and awaited
from inside tasks (FROZEN parents).
"""

from __future__ import annotations

import asyncio
import concurrent.futures as cf
import os
import socket
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from nbtasks.core.durations import utcnow
from nbtasks.core.errors import EngineStoppedError, UnknownRunError
from nbtasks.core.models import Run
from nbtasks.core.status import FINAL, AttemptStatus, RunStatus, check_transition
from nbtasks.engine.dispatch import Dispatch
from nbtasks.engine.loop import LoopThread
from nbtasks.engine.recovery import load_waiting_runs, reconcile_at_start
from nbtasks.engine.scheduler import Scheduler
from nbtasks.engine.state import AttemptState, RunSpec, RunState, TaskVersion, error_json
from nbtasks.executor import started
from nbtasks.executor.base import Event, Executor
from nbtasks.store.store import Store

S = RunStatus
BY_REQUEST = "by request"  # a cancel's cause when its caller gives none
TAKE_BACK_S = 2.0  # how long a shutdown waits for workers to give back what they hold ahead
TaskResolver = Callable[[str], "TaskVersion | None"]
Listener = Callable[[Run], None]
Waiter = Callable[[RunState, BaseException | None], None]  # a final run, its commit's error


class EngineBase:
    """Scheduling, canceling and settling runs (see the module docstring)."""

    if TYPE_CHECKING:  # provided by the mixins below

        def on_event(self, event: Event) -> None: ...
        def _end_attempt(self, run: RunState, attempt: AttemptState, status: AttemptStatus,
                         error: str | None = None) -> None: ...  # fmt: skip
        def begin(self, run: RunState, attempt: AttemptState) -> None: ...
        def _take_slot(self, run: RunState, attempt: AttemptState) -> None: ...
        def _on_call(self, worker: int, attempt: AttemptState, request_id: int, op: str,
                     args: tuple[Any, ...]) -> None: ...  # fmt: skip
        def release_slot(self, attempt: AttemptState) -> None: ...
        def claim(self, run: RunState, attempt: AttemptState) -> None: ...
        def unclaim(self, run: RunState) -> None: ...
        def fail_queued(self, log: str) -> None: ...
        def resume_ready(self) -> None: ...
        def _create(self, specs: list[RunSpec], parent: RunState | None = None
                    ) -> list[tuple[str, bool]]: ...  # fmt: skip
        def _enter(self, run: RunState) -> None: ...
        def _adopt(self, rows: list[RunState]) -> None: ...
        def version_for(self, task_id: str, code_hash: str, source: str, fn_bytes: bytes,
                        options: str) -> str: ...  # fmt: skip

    def __init__(self, store_path: str, workers: int, executor: Executor, spawn: bool = False,
                 resolve_task: TaskResolver | None = None) -> None:  # fmt: skip
        """Open the store and take over what it holds. With ``spawn`` (the engine starts for
        a trigger), the workers start first, so their boot overlaps opening the store.
        ``resolve_task(task_id)`` gives this process's own definition of a task, if any
        (runs triggered by id from inside tasks prefer it)."""
        self.store_path = store_path
        self.size = workers
        self.owner = f"{socket.gethostname()}:{os.getpid()}"
        self.closed = False
        self.max_payload: tuple[int, str] = (64 << 20, "64MiB")  # bytes, as written
        self.stop_cause = "the engine that owned the run stopped"  # why close interrupts
        self.take_back_s = TAKE_BACK_S
        self.runs: dict[str, RunState] = {}  # live runs, until their final state is committed
        self.versions: dict[tuple[str, str], str] = {}  # (task id, code hash) -> version
        self.waiting_tasks: set[str] = set()  # task ids with runs WAITING_FOR_DEPLOY
        self.scheduler = Scheduler()
        self.resolve_task = resolve_task or (lambda task_id: None)
        self._resumable: list[RunState] = []  # FROZEN runs whose children are done
        self._keys: dict[tuple[str, str], str] = {}  # (task id, key) -> live run id
        self._commit_waiters: dict[int, list[Callable[[BaseException | None], None]]] = {}
        self._listeners: dict[str, list[Listener]] = {}
        self._watchers: dict[str, list[Callable[[str, str], None]]] = {}
        self._thread = LoopThread("nbtasks-engine")
        self.loop: asyncio.AbstractEventLoop = self._thread.loop
        self._loop_thread = self._thread.ident
        self.executor = executor
        self.dispatch = Dispatch(self, executor, workers)  # type: ignore[arg-type]
        log = started.path_for(store_path)
        try:
            noted = executor.note_starts(log)
            self._thread.call(self._open_executor, spawn)
            self.store = Store(store_path, self._committed_threadsafe, self.loop.call_soon)
            reconcile_at_start(self.store, utcnow(), started.read(log))
            started.reset(log, noted)
            self._thread.call(self._adopt, load_waiting_runs(self.store))
        except BaseException:
            self.closed = True
            self._thread.call(self.executor.close)
            self._thread.stop()
            store = getattr(self, "store", None)
            if store is not None:  # opened, then settling what it held failed
                store.close()
            raise

    def _open_executor(self, spawn: bool) -> None:
        for worker_id in self.executor.open(self.loop, self.on_event) or ():
            self.dispatch.add(worker_id)  # launched before the engine: booting
        if spawn:
            self.dispatch.top_up()

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
        if threading.get_ident() == self._loop_thread:  # committed by the loop itself
            self._committed(ticket, error)
            return
        try:
            self.loop.call_soon_threadsafe(self._committed, ticket, error)
        except RuntimeError:  # the loop is closed: shutdown is over
            pass

    def _committed(self, ticket: int, error: BaseException | None) -> None:
        for waited in sorted(t for t in self._commit_waiters if t <= ticket):
            for callback in self._commit_waiters.pop(waited):
                callback(error)

    def _after_commit(self, ticket: int, callback: Callable[[BaseException | None], None],
                      hurry: bool = True) -> None:  # fmt: skip
        """Call ``callback`` once ``ticket`` is committed; ``hurry`` commits it now rather
        than within the store's DEFER_MAX_S."""
        self._commit_waiters.setdefault(ticket, []).append(callback)
        if hurry:
            self.store.hurry(ticket)

    # -- state changes -----------------------------------------------------------------

    def _event(self, run: RunState, detail: str | None = None) -> int:
        status = run.status._value_  # not .value: a property, slow at a few per run
        if not run.history or run.history[-1][0] != status:
            run.history.append((status, run.updated_at))
        return self.store.stage_event(
            (run.id, run.updated_at, status, run.attempt_count or None, detail)
        )

    def _transition(self, run: RunState, new: RunStatus, detail: str | None = None,
                    **changes: Any) -> int:  # fmt: skip
        """The only place a run's status changes."""
        check_transition(run.id, run.status, new)
        if run.prefetched is not None and new is not S.EXECUTING:
            self.dispatch.take_back(run)  # canceled, expired...: the worker must not start it
        run.status = new
        watchers = self._watchers.get(run.id)
        if watchers:
            for watcher in watchers:
                watcher(run.id, new._value_)
            if new in FINAL:
                del self._watchers[run.id]
        return self._update(run, detail, final=new in FINAL, **changes)

    def _update(self, run: RunState, detail: str | None = None, final: bool = False,
                **changes: Any) -> int:  # fmt: skip
        """Record a change of a live run (its status already set), stage it and tell
        listeners."""
        run.updated_at = utcnow()
        for name, value in changes.items():
            setattr(run, name, value)
        if final:
            run.finished_at = run.finished_at or run.updated_at
            for timer in (run.timer, run.ttl_timer):
                if timer is not None:
                    timer.cancel()
            run.timer = run.ttl_timer = None
        ticket = self.store.stage_run_update(run.update_row(), run.row)
        self._event(run, detail)
        if final:  # listeners see the final state once it is durable, in _settle
            hurry = True
            if run.batch_wait is not None:  # the wait needs the last run's state only
                run.batch_wait.unfinished -= 1
                hurry = run.batch_wait.unfinished == 0
            self._after_commit(ticket, lambda error: self._settle(run, error), hurry)
        else:
            self._notify(run)
        return ticket

    def _settle(self, run: RunState, error: BaseException | None) -> None:
        """The final state is durable: release the run's waiters and forget it."""
        if self.runs.get(run.id) is run:
            del self.runs[run.id]
        if run.idempotency_key is not None:
            key = (run.task_id, run.idempotency_key)
            if self._keys.get(key) == run.id:
                del self._keys[key]
        # Listeners first: a notebook view draws the final state before a wait returns,
        # so what the cell shows when it ends is final.
        listeners = self._listeners.pop(run.id, ())
        if listeners:
            snapshot = run.snapshot()
            for listener in listeners:
                listener(snapshot)
        waiters, run.waiters = run.waiters, []
        for waiter in waiters:  # each makes a snapshot if it needs one
            waiter(run, error)

    def _notify(self, run: RunState) -> None:
        listeners = self._listeners.get(run.id)
        if listeners:
            snapshot = run.snapshot()
            for listener in list(listeners):
                listener(snapshot)

    # -- durability helpers -------------------------------------------------------------

    def _ack_after_commit(self, fut: cf.Future[Any], result: Any) -> None:
        """Resolve ``fut`` with ``result`` once everything staged so far is committed."""
        self.when_durable(
            lambda error: fut.set_exception(error) if error else fut.set_result(result)
        )

    def when_durable(self, callback: Callable[[BaseException | None], None],
                     hurry: bool = True) -> None:  # fmt: skip
        """Call ``callback`` once everything staged so far is committed (now, if it is)."""
        ticket = self.store.barrier()
        if ticket is None:
            callback(None)
        else:
            self._after_commit(ticket, callback, hurry)

    def _live_or_none(self, run_id: str) -> RunState | str:
        return self.runs.get(run_id) or run_id

    # -- dispatch --------------------------------------------------------------------------

    def _top_up(self) -> None:
        self.dispatch.top_up()

    def _pump(self) -> None:
        self.dispatch.pump()

    # -- cancel, wait, read ----------------------------------------------------------------

    def cancel(self, fut: cf.Future[Any], run_id: str, cause: str = BY_REQUEST) -> None:
        """Cancel a live run and its descendants; resolve ``fut`` with its final snapshot.
        ``cause`` completes "Canceled ...", e.g. "by runs.cancel()"; it is kept in the
        run's error and its CANCELED event."""
        run = self.runs.get(run_id)
        if run is None:
            fut.set_result(None)  # not live here: the caller reads the store
            return
        self._cancel(run, cause)
        self._wait_all(fut, [run], single=True)

    def _cancel(self, run: RunState, cause: str = BY_REQUEST) -> None:
        for child in [r for r in self.runs.values() if r.parent_id == run.id]:
            self._cancel(child, f"with its parent run ({cause})")
        if run.status in FINAL:
            return
        text = error_json(S.CANCELED, "Canceled", cause)
        attempt = run.attempt
        if attempt is not None:
            attempt.kill_reason = "cancel"
            self._end_attempt(run, attempt, AttemptStatus.CANCELED, text)
            self.dispatch.kill(attempt)
        self._transition(run, S.CANCELED, cause, error=text)
        self._pump()

    def wait(self, fut: cf.Future[Any], run_id: str) -> None:
        """Resolve ``fut`` with the final snapshot of a live run (None if not live)."""
        run = self.runs.get(run_id)
        if run is None:
            fut.set_result(None)
        else:
            self._wait_all(fut, [run], single=True)

    def _wait_all(self, fut: cf.Future[Any], runs: list[RunState | str], single: bool = False,
                  each: Callable[[int, RunState], None] | None = None) -> None:  # fmt: skip
        """Resolve ``fut`` with the final snapshots of ``runs`` in order. Entries that are
        run ids (runs no longer live) resolve to None: the caller reads the store. With
        ``each``, ``each(i, run)`` is given every final run (durable) instead, and ``fut``
        resolves to Nones once all are: the caller makes what it sends of them."""
        results: list[Run | None] = [None] * len(runs)
        pending = [sum(1 for r in runs if isinstance(r, RunState))]
        failed = [False]  # not fut.done(): that takes a lock, for every run of a big batch

        def waiter(i: int) -> Waiter:
            def settled(run: RunState, error: BaseException | None) -> None:
                if failed[0]:
                    return
                if error is not None:
                    failed[0] = True
                    if not fut.done():
                        fut.set_exception(error)
                    return
                if each is None:
                    results[i] = run.snapshot()
                else:
                    each(i, run)
                pending[0] -= 1
                if pending[0] == 0 and not fut.done():
                    fut.set_result(results[0] if single else results)

            return settled

        if pending[0] == 0:
            fut.set_result(results[0] if single else results)
        for i, run in enumerate(runs):
            if isinstance(run, RunState):
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

    def watch(self, fut: cf.Future[Any], run_ids: list[str],
              callback: Callable[[str, str], None]) -> None:  # fmt: skip
        """Call ``callback(run_id, status)`` at every status change of these runs (cheap:
        no snapshots, for views of big batches); resolve ``fut`` with the statuses of the
        ones that are live now. The others are final and committed."""
        live = {}
        for run_id in run_ids:
            run = self.runs.get(run_id)
            if run is not None:
                live[run_id] = run.status.value
                self._watchers.setdefault(run_id, []).append(callback)
        fut.set_result(live)

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
            self._thread.stop()

    def _shutdown(self, fut: cf.Future[Any]) -> None:
        """Take back what workers hold ahead (so a run that never began waits for the next
        engine rather than end INTERRUPTED: ``recovery.py``), for at most ``take_back_s``; then
        interrupt what executes and stop the executor."""
        self.closed = True
        self.dispatch.idle.clear()
        d = self.dispatch
        for view in list(d.workers.values()):
            d.take_back_all(view)
        give_up = self.loop.time() + self.take_back_s

        def answered() -> None:
            if any(v.taking_back for v in d.workers.values()) and self.loop.time() < give_up:
                self.loop.call_later(0.005, answered)
            else:
                self._stop(fut)

        answered()

    def _stop(self, fut: cf.Future[Any]) -> None:
        text = error_json(S.INTERRUPTED, "Interrupted", self.stop_cause)
        for run in list(self.runs.values()):
            if run.status in (S.EXECUTING, S.REATTEMPTING, S.FROZEN):
                attempt = run.attempt
                if attempt is not None:
                    attempt.kill_reason = "shutdown"
                    self._end_attempt(run, attempt, AttemptStatus.INTERRUPTED, text)
                self._transition(run, S.INTERRUPTED, error=text)
            for timer in (run.timer, run.ttl_timer):
                if timer is not None:
                    timer.cancel()
        self.dispatch.idle.clear()
        self.executor.close()
        self.when_durable(lambda _e: fut.set_result(None))


from nbtasks.engine.intake import IntakeMixin  # noqa: E402
from nbtasks.engine.nesting import NestingMixin  # noqa: E402
from nbtasks.engine.outcomes import OutcomesMixin  # noqa: E402


class Engine(IntakeMixin, OutcomesMixin, NestingMixin, EngineBase):
    """One engine per process and store: see the module docstring."""
