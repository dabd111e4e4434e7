"""The engine: one event loop thread that owns every live run.

Public calls prepare their work in the caller's thread (validation, dill) and hand it to
the loop with ``Engine.call``; the loop changes run state only through ``_transition``,
which checks the transition table, records an event and stages the row for the store's
next group commit. Callers that need durability wait for that commit.

The class is split by topic: this module creates, schedules, cancels and settles runs;
``_outcomes`` handles what workers report (results, crashes, timeouts, retries);
``_nesting`` serves runs triggered and awaited from inside tasks (FROZEN parents).
"""

from __future__ import annotations

import asyncio
import concurrent.futures as cf
import os
import socket
from collections.abc import Callable
from datetime import timedelta
from typing import TYPE_CHECKING, Any

import anyio.from_thread

from ._errors import EngineStoppedError, UnknownRunError
from ._models import Run
from ._pool import MAX_SPAWN_FAILURES, Pool, WorkerProc
from ._reconcile import load_waiting_runs, reconcile_at_start
from ._scheduler import Scheduler
from ._state import AttemptState, RunSpec, RunState, TaskVersion, error_json, utcnow
from ._status import FINAL, KEY_HOLDING, AttemptStatus, RunStatus, check_transition
from ._store import Store

S = RunStatus
Listener = Callable[[Run], None]
Waiter = Callable[[Run, BaseException | None], None]


class EngineBase:
    """Creating, scheduling, canceling and settling runs (see the module docstring)."""

    if TYPE_CHECKING:  # provided by the mixins below

        def _on_message(self, worker: WorkerProc, message: tuple[Any, ...]) -> None: ...
        def _on_exit(self, worker: WorkerProc, code: int | None, sig: int | None,
                     log: str) -> None: ...  # fmt: skip
        def _end_attempt(self, run: RunState, attempt: AttemptState, status: AttemptStatus,
                         error: str | None = None) -> None: ...  # fmt: skip
        def _take_slot(self, run: RunState, attempt: AttemptState) -> None: ...
        def _release_slot(self, run: RunState, attempt: AttemptState) -> None: ...
        def _start_attempt(self, run: RunState, worker: WorkerProc) -> None: ...
        def _send_ahead(self, run: RunState, worker: WorkerProc) -> None: ...
        def _take_back(self, run: RunState, requeue: bool = False) -> None: ...
        def _fail_queued(self, log: str) -> None: ...
        def _resume_ready(self) -> None: ...
        def _on_call(self, worker: WorkerProc, attempt: AttemptState, request_id: int,
                     op: str, args: tuple[Any, ...]) -> None: ...  # fmt: skip

    def __init__(self, store_path: str, workers: int, spawn: bool = False) -> None:
        """Open the store and take over what it holds. With ``spawn`` (the engine starts for
        a trigger), the workers start first, so their boot overlaps opening the store."""
        self.store_path = store_path
        self.size = workers
        self.owner = f"{socket.gethostname()}:{os.getpid()}"
        self.closed = False
        self.runs: dict[str, RunState] = {}  # live runs, until their final state is committed
        self.versions: dict[tuple[str, str], str] = {}  # (task id, code hash) -> version
        self.waiting_tasks: set[str] = set()  # task ids with runs WAITING_FOR_DEPLOY
        self.scheduler = Scheduler()
        self._idle: list[WorkerProc] = []
        self._active = 0  # workers executing an attempt that is not frozen
        self._resumable: list[RunState] = []  # FROZEN runs whose children are done
        self._keys: dict[tuple[str, str], str] = {}  # (task id, key) -> live run id
        self._commit_waiters: dict[int, list[Callable[[BaseException | None], None]]] = {}
        self._listeners: dict[str, list[Listener]] = {}
        self._watchers: dict[str, list[Callable[[str, str], None]]] = {}
        self._spawn_failures = 0
        self._portal_cm = anyio.from_thread.start_blocking_portal("asyncio")
        self._portal = self._portal_cm.__enter__()
        try:
            self.loop: asyncio.AbstractEventLoop = self._portal.call(asyncio.get_running_loop)
            self.pool = Pool(self.loop, self._on_message, self._on_exit)
            if spawn:
                self._portal.call(self._top_up)
            self.store = Store(store_path, self._committed_threadsafe, self._on_loop)
            reconcile_at_start(self.store, utcnow())
            self._portal.call(self._adopt, load_waiting_runs(self.store))
        except BaseException:
            self.closed = True
            self._portal.call(self.pool.stop_all)
            self._portal_cm.__exit__(None, None, None)
            raise

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

    def _on_loop(self, fn: Callable[[], None]) -> None:
        self.loop.call_soon_threadsafe(fn)

    def _committed_threadsafe(self, ticket: int, error: BaseException | None) -> None:
        try:
            self.loop.call_soon_threadsafe(self._committed, ticket, error)
        except RuntimeError:  # the loop is closed: shutdown is over
            pass

    def _committed(self, ticket: int, error: BaseException | None) -> None:
        for callback in self._commit_waiters.pop(ticket, ()):
            callback(error)

    def _after_commit(self, ticket: int, callback: Callable[[BaseException | None], None]) -> None:
        self._commit_waiters.setdefault(ticket, []).append(callback)

    # -- state changes -----------------------------------------------------------------

    def _event(self, run: RunState, detail: str | None = None) -> int:
        return self.store.stage_event(
            (run.id, run.updated_at, run.status.value, run.attempt_count or None, detail)
        )

    def _transition(self, run: RunState, new: RunStatus, detail: str | None = None,
                    **changes: Any) -> int:  # fmt: skip
        """The only place a run's status changes."""
        check_transition(run.id, run.status, new)
        if run.prefetched is not None and new is not S.EXECUTING:
            self._take_back(run)  # canceled, expired...: the worker must not start it
        run.status = new
        watchers = self._watchers.get(run.id)
        if watchers:
            for watcher in watchers:
                watcher(run.id, new.value)
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
        ticket = self.store.stage_run(run.row(), run.update_row())
        self._event(run, detail)
        if final:  # listeners see the final state once it is durable, in _settle
            self._after_commit(ticket, lambda error: self._settle(run, error))
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
        snapshot = run.snapshot()
        waiters, run.waiters = run.waiters, []
        for waiter in waiters:
            waiter(snapshot, error)
        for listener in self._listeners.pop(run.id, ()):
            listener(snapshot)

    def _notify(self, run: RunState) -> None:
        listeners = self._listeners.get(run.id)
        if listeners:
            snapshot = run.snapshot()
            for listener in list(listeners):
                listener(snapshot)

    # -- creating runs -----------------------------------------------------------------

    def submit(self, fut: cf.Future[Any], specs: list[RunSpec],
               final: cf.Future[Any] | None = None) -> None:  # fmt: skip
        """Create runs; resolve ``fut`` with ``(run_id, is_cached)`` per spec once they are
        committed, and ``final`` (if given) with their final snapshots, in order."""
        if final is None:
            created = self._create(specs)
            self._ack_after_commit(fut, created)
            return
        # A blocking wait needs only the final states to be durable: the new runs may
        # wait (a little) for them, so a quick run costs one commit, not two.
        self.store.deferring = True
        try:
            created = self._create(specs)
        finally:
            self.store.deferring = False
        self._wait_all(final, [self._live_or_none(i) for i, _ in created])
        fut.set_result(created)

    def _ack_after_commit(self, fut: cf.Future[Any], result: Any) -> None:
        """Resolve ``fut`` with ``result`` once everything staged so far is committed."""
        self._when_durable(
            lambda error: fut.set_exception(error) if error else fut.set_result(result)
        )

    def _when_durable(self, callback: Callable[[BaseException | None], None]) -> None:
        ticket = self.store.barrier()
        if ticket is None:
            callback(None)
        else:
            self._after_commit(ticket, callback)

    def _live_or_none(self, run_id: str) -> RunState | str:
        return self.runs.get(run_id) or run_id

    def _create(self, specs: list[RunSpec], parent: RunState | None = None
                ) -> list[tuple[str, bool]]:  # fmt: skip
        """Make runs from specs (idempotency keys first); return (id, is_cached) each."""
        now = utcnow()
        out: list[tuple[str, bool]] = []
        for spec in specs:
            if spec.idempotency_key is not None:
                existing = self._find_key(spec.task_id, spec.idempotency_key, now)
                if existing is not None:
                    out.append((existing, True))
                    continue
            run = self._new_run(spec, now, parent)
            out.append((run.id, False))
        self._spawn_failures = 0  # a new trigger tries to start workers again
        self._top_up()
        self._pump()
        return out

    def _find_key(self, task_id: str, key: str, now: Any) -> str | None:
        live = self._keys.get((task_id, key))
        if live is not None:
            return live
        rows = self.store.query(
            "SELECT id, status, idempotency_expires_at FROM runs "
            "WHERE task_id = ? AND idempotency_key = ? ORDER BY id DESC LIMIT 1",
            [task_id, key],
        )
        if rows:
            run_id, status, expires = rows[0]
            if RunStatus(status) in KEY_HOLDING and (expires is None or expires > now):
                return str(run_id)
        return None

    def _new_run(self, spec: RunSpec, now: Any, parent: RunState | None) -> RunState:
        tv = spec.task
        delayed = spec.delay_until is not None and spec.delay_until > now
        status = S.DELAYED if delayed else S.QUEUED if tv is not None else S.WAITING_FOR_DEPLOY
        run = RunState(
            id=spec.id,
            task_id=spec.task_id,
            version=tv.version if tv else None,
            status=status,
            queue=spec.queue,
            payload=spec.payload,
            payload_preview=spec.payload_preview,
            created_at=spec.created_at,
            updated_at=now,
            task=tv,
            delay_until=spec.delay_until,
            ttl_s=spec.ttl_s,
            idempotency_key=spec.idempotency_key,
            tags=spec.tags,
            trigger_metadata=spec.metadata,
            metadata=dict(spec.metadata or {}),
            max_attempts=spec.max_attempts or 1,
            max_duration_s=spec.max_duration_s,
            batch_id=spec.batch_id,
            replayed_from=spec.replayed_from,
            owner=self.owner,
            concurrency_limit=spec.concurrency_limit,
        )
        if spec.idempotency_key is not None:
            ttl = spec.idempotency_key_ttl_s
            run.idempotency_expires_at = None if ttl is None else now + timedelta(seconds=ttl)
            self._keys[(run.task_id, spec.idempotency_key)] = run.id
        if parent is not None:
            run.parent_id, run.root_id, run.depth = parent.id, parent.root_id, parent.depth + 1
        else:
            run.root_id = run.id
        if tv is not None:
            self._apply_task_defaults(run, tv, spec)
        self.runs[run.id] = run
        self.store.stage_run(run.row())
        self._event(run)
        self._enter(run)
        return run

    def _apply_task_defaults(self, run: RunState, tv: TaskVersion, spec: RunSpec | None) -> None:
        run.task, run.version = tv, tv.version
        if spec is None or spec.max_attempts is None:
            run.max_attempts = tv.retry.max_attempts if tv.retry else 1
        if run.max_duration_s is None:
            run.max_duration_s = tv.max_duration_s
        if run.ttl_s is None:
            run.ttl_s = tv.ttl_s
        if run.queue is None and tv.queue is not None:
            run.queue, run.concurrency_limit = tv.queue, tv.concurrency_limit
        self.scheduler.set_limit(run.queue, run.concurrency_limit)

    def _enter(self, run: RunState) -> None:
        """Start the timers and queues of a run that just reached its current status."""
        if run.task is None:
            self.waiting_tasks.add(run.task_id)
        if run.status is S.DELAYED:
            left = (run.delay_until - utcnow()).total_seconds() if run.delay_until else 0
            run.timer = self.loop.call_later(max(0.0, left), self._due, run)
        elif run.status is S.QUEUED:
            if run.queued_at is None:
                run.queued_at = utcnow()
            if run.ttl_s is not None and run.attempt_count == 0 and run.ttl_timer is None:
                left = run.ttl_s - (utcnow() - run.queued_at).total_seconds()
                run.ttl_timer = self.loop.call_later(max(0.0, left), self._expire, run)
            self.scheduler.push(run)

    def _due(self, run: RunState) -> None:
        run.timer = None
        if run.status is S.DELAYED:
            new = S.QUEUED if run.task is not None else S.WAITING_FOR_DEPLOY
            self._transition(run, new, queued_at=utcnow() if new is S.QUEUED else None)
            self._enter(run)
            self._top_up()
            self._pump()

    def _expire(self, run: RunState) -> None:
        run.ttl_timer = None
        if run.status is S.QUEUED and run.attempt_count == 0:
            now = utcnow()
            text = error_json(S.EXPIRED, "Expired", f"the run's ttl of {run.ttl_s:g}s passed "
                              "while it was still queued")  # fmt: skip
            self._transition(run, S.EXPIRED, error=text, expired_at=now)

    def reschedule(self, fut: cf.Future[Any], run_id: str, delay_until: Any) -> None:
        run = self.runs.get(run_id)
        if run is None or run.status is not S.DELAYED:
            status = run.status.value if run else self._stored_status(run_id)
            raise ValueError(f"run {run_id} is {status}: only a DELAYED run can be rescheduled")
        if run.timer is not None:
            run.timer.cancel()
        self._update(run, "rescheduled", delay_until=delay_until)
        self._enter(run)
        self._ack_after_commit(fut, run.snapshot())

    def _stored_status(self, run_id: str) -> str:
        rows = self.store.query("SELECT status FROM runs WHERE id = ?", [run_id])
        if not rows:
            raise UnknownRunError(run_id)
        return str(rows[0][0])

    # -- versions and deploys -----------------------------------------------------------

    def register_version(self, fut: cf.Future[Any], *args: Any) -> None:
        fut.set_result(self.version_for(*args))

    def version_for(self, task_id: str, code_hash: str, source: str, fn_bytes: bytes,
                    options: str) -> str:  # fmt: skip
        """The version of this definition of a task, created (and staged) if new."""
        key = (task_id, code_hash)
        if key in self.versions:
            return self.versions[key]
        rows = self.store.query(
            "SELECT version, code_hash FROM task_versions WHERE task_id = ?", [task_id]
        )
        known: dict[str, str] = {h: v for v, h in rows}
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
        return version

    def deploy(self, fut: cf.Future[Any], tv: TaskVersion) -> None:
        """A task was defined: start its runs that were waiting for it."""
        self.waiting_tasks.discard(tv.task_id)
        started = 0
        for run in list(self.runs.values()):
            if run.task_id != tv.task_id:
                continue
            if run.status is S.WAITING_FOR_DEPLOY:
                self._apply_task_defaults(run, tv, None)
                self._transition(run, S.QUEUED, "deployed", version=tv.version,
                                 queued_at=utcnow())  # fmt: skip
                self._enter(run)
                started += 1
            elif run.status is S.DELAYED and run.task is None:
                self._apply_task_defaults(run, tv, None)
                self._update(run, "deployed", version=tv.version)
        self._top_up()
        self._pump()
        fut.set_result(started)

    def _adopt(self, rows: list[RunState]) -> None:
        """Take over DELAYED and WAITING_FOR_DEPLOY runs left by an earlier kernel."""
        for run in rows:
            run.owner = self.owner
            self.runs[run.id] = run
            self._update(run, "adopted")
            self._enter(run)

    # -- dispatch --------------------------------------------------------------------------

    def _top_up(self) -> None:
        """Keep one worker process for every slot not taken by an executing attempt.

        Workers start at the first trigger (opening a store costs no processes); a FROZEN
        attempt keeps its process but gives up its slot, so a spare process is started."""
        starting = sum(1 for w in self.pool.workers if not w.ready and not w.dying)
        missing = self.size - self._active - len(self._idle) - starting
        if missing <= 0 or self.closed or self._spawn_failures >= MAX_SPAWN_FAILURES:
            return  # after workers failed to start, try again at the next trigger
        try:
            for _ in range(missing):
                self.pool.spawn()
        except OSError as exc:
            self._spawn_failures = MAX_SPAWN_FAILURES
            self._fail_queued(f"{type(exc).__name__}: {exc}")

    def _pump(self) -> None:
        """Resume thawed runs, start queued runs while slots and workers allow, then send
        each busy worker its next run ahead (runs of queues with a limit are never sent
        ahead: they take their slot only when they start)."""
        self._resume_ready()
        while self._idle and self._active < self.size:
            run = self.scheduler.pop() or self._reclaim()
            if run is None:
                return
            self._start_attempt(run, self._idle.pop())
        if self._idle or self.closed:
            return
        for worker in self.pool.workers:
            current = worker.attempt
            if (worker.next is None and current is not None and not worker.dying
                    and current.holds_slot and current.kill_reason is None):  # fmt: skip
                run = self.scheduler.pop(unlimited_only=True)
                if run is None:
                    return
                self._send_ahead(run, worker)

    def _reclaim(self) -> RunState | None:
        """A run sent ahead to a busy worker, taken back for a worker that is idle now."""
        for worker in self.pool.workers:
            if worker.next is not None:
                run: RunState = worker.next[0]
                self._take_back(run)
                return run
        return None

    def _retire_extra(self) -> None:
        """After a thawed run finished: stop idle workers beyond the pool size."""
        while self._idle and self._active + len(self._idle) > self.size:
            worker = self._idle.pop(0)
            worker.dying = True
            self.pool.send(worker, ("exit",))

    # -- cancel, wait, read ----------------------------------------------------------------

    def cancel(self, fut: cf.Future[Any], run_id: str) -> None:
        """Cancel a live run and its descendants; resolve ``fut`` with its final snapshot."""
        run = self.runs.get(run_id)
        if run is None:
            fut.set_result(None)  # not live here: the caller reads the store
            return
        self._cancel(run)
        self._wait_all(fut, [run], single=True)

    def _cancel(self, run: RunState) -> None:
        for child in [r for r in self.runs.values() if r.parent_id == run.id]:
            self._cancel(child)
        if run.status in FINAL:
            return
        text = error_json(S.CANCELED, "Canceled", "the run was canceled")
        attempt = run.attempt
        if attempt is not None:
            attempt.kill_reason = "cancel"
            self._end_attempt(run, attempt, AttemptStatus.CANCELED, text)
            self._release_slot(run, attempt)
            self.pool.kill(attempt.worker)
        self._transition(run, S.CANCELED, error=text)
        self._pump()

    def wait(self, fut: cf.Future[Any], run_id: str) -> None:
        """Resolve ``fut`` with the final snapshot of a live run (None if not live)."""
        run = self.runs.get(run_id)
        if run is None:
            fut.set_result(None)
        else:
            self._wait_all(fut, [run], single=True)

    def _wait_all(self, fut: cf.Future[Any], runs: list[RunState | str],
                  single: bool = False) -> None:  # fmt: skip
        """Resolve ``fut`` with the final snapshots of ``runs`` in order. Entries that are
        run ids (runs no longer live) resolve to None: the caller reads the store."""
        results: list[Run | None] = [None] * len(runs)
        pending = [sum(1 for r in runs if isinstance(r, RunState))]

        def waiter(i: int) -> Waiter:
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
            self._portal_cm.__exit__(None, None, None)

    def _shutdown(self, fut: cf.Future[Any]) -> None:
        self.closed = True
        text = error_json(S.INTERRUPTED, "Interrupted", "the kernel that owned the run stopped")
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
        self._idle.clear()
        self.pool.stop_all()
        self._when_durable(lambda _e: fut.set_result(None))


from ._nesting import NestingMixin  # noqa: E402
from ._outcomes import OutcomesMixin  # noqa: E402


class Engine(OutcomesMixin, NestingMixin, EngineBase):
    """One engine per process and store: see the module docstring."""
