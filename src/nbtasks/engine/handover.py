"""Handing attempts over to workers, each at most once: a mixin of ``Dispatch``.

An attempt reaches a worker in one of two ways: ``start`` on an idle worker, or sent
*ahead* to a busy one, which starts it once what it has ends, without a round trip through
the engine. Either way the worker is handed the attempt only once the store holds,
committed, that it may begin: the run counts the attempt (``begin`` for a start,
``Engine.claim`` for a run sent ahead, which stays QUEUED). Until that commit the attempt is
*unsent* (``Dispatch.unsent``): a take-back or a kill of it is settled here, as the executor
would have answered, without reaching the executor. So a crash never leaves a body that
began behind a store that would start its run again (``recovery.py``): I1 of
``dispatch.py`` holds across engines.

A run sent ahead stays bound to its worker (``run.prefetched``) until the worker says
``Started`` or ``Dropped`` (or is lost without saying ``Started``); only then can it go
anywhere else.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from nbtasks.core.durations import utcnow
from nbtasks.core.ids import new_id
from nbtasks.core.status import AttemptStatus, RunStatus
from nbtasks.engine.state import AttemptState, RunState
from nbtasks.executor.base import AttemptSpec, WorkerId

if TYPE_CHECKING:
    from nbtasks.engine.dispatch import DispatchBase as _Base
    from nbtasks.engine.dispatch import WorkerView
else:
    _Base = object

S = RunStatus
TAKEN_BACK = "taken back"  # the kill reason of an attempt that started after its run ended


class HandoverMixin(_Base):
    def new_attempt(self, run: RunState, view: WorkerView) -> AttemptState:
        return AttemptState(
            id=new_id("attempt"),
            run_id=run.id,
            number=run.attempt_count + 1,
            status=AttemptStatus.EXECUTING,
            started_at=utcnow(),
            pid=view.pid,
            worker=view.id,
        )

    def start(self, run: RunState, view: WorkerView) -> None:
        """Start the next attempt of ``run`` on an idle worker, once its start is durable."""
        attempt = self.new_attempt(run, view)
        view.attempt = attempt
        self.engine.begin(run, attempt)  # the run counts the attempt: its claim
        self._send_when_claimed(run, attempt, view)

    def _send_ahead(self, run: RunState, view: WorkerView) -> None:
        """Give a busy worker a run to start once what it has ends, without a round trip
        through the kernel. The run stays QUEUED, bound to that worker, until it says."""
        attempt = self.new_attempt(run, view)
        view.ahead.append((run, attempt))
        run.prefetched = view.id
        self.engine.claim(run, attempt)
        self._send_when_claimed(run, attempt, view)

    def _send_when_claimed(self, run: RunState, attempt: AttemptState, view: WorkerView) -> None:
        """Hand the attempt to the worker once its claim is committed (now, if the store
        had nothing staged). Sends to one worker keep their order: commits end in order.

        A run created in the very batch its claim joins is handed over at once: no commit
        can hold the run without its claim, so there is nothing a crash could start again
        (the store then holds no trace of the run: its trigger was never acknowledged)."""
        engine = self.engine
        if (
            engine.store.created_in_open_batch(run.id)
            and not engine.closed
            and view not in self.unsent.values()  # else it would overtake those
        ):
            self.executor.start(
                view.id, self._spec(run, attempt), ahead=view.attempt is not attempt
            )
            return
        self.unsent[attempt.id] = view
        self.engine.when_durable(lambda error: self._claimed(run, attempt, error))

    def _claimed(self, run: RunState, attempt: AttemptState, error: BaseException | None) -> None:
        view = self.unsent.get(attempt.id)
        if view is None:
            return
        if error is not None and not self.engine.closed:  # the store keeps the rows and
            self.engine.when_durable(  # tries again: the body waits for that commit
                lambda again: self._claimed(run, attempt, again), hurry=False
            )
            return
        del self.unsent[attempt.id]
        closed = self.engine.closed  # shutting down: nothing more is sent
        if self.workers.get(view.id) is not view:
            return  # the worker was lost: ``lost`` settled what it held
        if view.attempt is attempt:
            if attempt.kill_reason is None and not closed:
                self.executor.start(view.id, self._spec(run, attempt), ahead=False)
            else:  # canceled, timed out, shut down...: its body never began
                self._never_began(view, attempt)
        elif attempt.id in view.taking_back:  # taken back before it was sent: dropped
            self.on_dropped(view.id, attempt.id)
        elif not closed:
            self.executor.start(view.id, self._spec(run, attempt), ahead=True)

    def _never_began(self, view: WorkerView, attempt: AttemptState) -> None:
        """An attempt killed before it was sent: its worker is free again, as after a
        ``Finished``; the engine recorded its end when it decided the kill."""
        view.attempt = None
        self.engine.release_slot(attempt)
        self.make_idle(view)
        self.pump()

    def _spec(self, run: RunState, attempt: AttemptState) -> AttemptSpec:
        tv = run.task
        assert tv is not None
        return AttemptSpec(
            attempt_id=attempt.id, run_id=run.id, task_id=run.task_id, number=attempt.number,
            version=run.version, fn_key=tv.fn_key, fn_bytes=tv.fn_bytes, payload=run.payload,
            tags=run.tags, metadata=run.metadata, memory_limit=tv.memory_limit,
            memory_limit_text=tv.memory_limit_text,
        )  # fmt: skip

    def take_back(self, run: RunState) -> None:
        """Ask for the attempt sent ahead for ``run`` back. The run stays bound to the
        worker until it answers (``dropped`` / ``started``)."""
        view = self.workers.get(run.prefetched) if run.prefetched is not None else None
        if view is None:
            return
        for i, (ahead, attempt) in enumerate(view.ahead):
            if ahead is run:
                del view.ahead[i]
                view.taking_back[attempt.id] = (run, attempt)
                if attempt.id not in self.unsent:  # else dropped once its claim commits
                    self.executor.take_back(view.id, attempt.id)
                return

    def take_back_all(self, view: WorkerView) -> None:
        for run, _ in reversed(list(view.ahead)):
            self.take_back(run)

    def on_started(self, worker_id: WorkerId, attempt_id: str) -> None:
        """A worker started an attempt sent ahead (perhaps one being taken back)."""
        view = self.workers[worker_id]
        if view.ahead and view.ahead[0][1].id == attempt_id:
            run, attempt = view.ahead.popleft()
        else:
            run, attempt = view.taking_back.pop(attempt_id)
        run.prefetched = None
        view.attempt = attempt
        if run.status is S.QUEUED:
            self.engine.begin(run, attempt)
        else:  # canceled or expired meanwhile: it must not go on
            attempt.kill_reason = TAKEN_BACK
            self.kill(attempt)
        self.pump()

    def on_dropped(self, worker_id: WorkerId, attempt_id: str) -> None:
        view = self.workers[worker_id]
        run, _ = view.taking_back.pop(attempt_id)
        self._unbind(run)
        self.make_idle(view)
        self.pump()

    def _unbind(self, run: RunState) -> None:
        """A run sent ahead that never started: first in line again if still QUEUED."""
        run.prefetched = None
        if run.status is S.QUEUED:
            self.engine.unclaim(run)
            self.engine.scheduler.push_front(run)
