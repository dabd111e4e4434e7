"""Dispatch: which attempt runs on which worker, and when. The one owner of worker state.

It knows workers only as the executor reports them (ready, lost) and drives them only
through the executor seam (``executor/base.py``). What it holds, per worker: the attempt
it executes (which holds capacity until ``Finished`` or ``WorkerLost``: an attempt being
killed still counts), the attempts sent ahead to it, and those being taken back. Every
take-back and kill is answered by the executor; nothing here assumes the answer.

Invariants (checked by ``tests/test_engine_model.py`` after every step of random
interleavings, and by the real pool's stress test):

- I1: an attempt's body starts at most once, and a run never has two bodies running, across
  engines too: how attempts are handed over to workers is ``handover.py``'s.
- I2: never more attempts executing than ``size``, nor than a queue's limit: capacity and
  queue slots are released only once the executor reports the body gone.
- I3: a kill only ever hits the attempt it was meant for (the executor checks which one
  executes before it kills).

Runs that need ``resources`` (a Dask cluster's GPUs, say) run only on workers started for
exactly those resources, their worker's *kind*. A queued run finding no idle worker of its
kind waits in ``wanted`` (still QUEUED) while one is started: at full capacity, an idle
worker of a kind nobody waits for is retired to make room. Runs are never sent ahead to a
worker of another kind.
"""

from __future__ import annotations

from collections import Counter, deque
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from nbtasks.core.status import RunStatus
from nbtasks.engine.handover import HandoverMixin
from nbtasks.engine.state import AttemptState, RunState
from nbtasks.executor.base import Executor, WorkerId

if TYPE_CHECKING:
    from nbtasks.engine.engine import Engine

S = RunStatus
AHEAD_BUDGET_S = 0.005  # the work a busy worker is sent ahead, in seconds of recent attempts
AHEAD_MAX = 48  # and at most this many runs
ROOM_EVERY_S = 1.0  # how often runs that wait for a kind of worker no machine has look again
MAX_SPAWN_FAILURES = 3  # workers in a row dying before ready: the queued runs fail


Kind = tuple[tuple[str, float], ...] | None


@dataclass(eq=False)
class WorkerView:
    """What dispatch knows of one worker."""

    id: WorkerId
    pid: int | None = None
    ready: bool = False
    dying: bool = False  # retiring, or a kill was asked: nothing more is sent to it
    attempt: AttemptState | None = None  # holds capacity until Finished / WorkerLost
    frozen: bool = False  # its attempt is FROZEN: it gives its capacity up
    kind: Kind = None  # the resources it was started for (RunState.kind)
    ahead: deque[tuple[RunState, AttemptState]] = field(default_factory=deque)
    taking_back: dict[str, tuple[RunState, AttemptState]] = field(default_factory=dict)

    @property
    def free(self) -> bool:
        """Idle: nothing executing, nothing sent ahead or awaiting an answer."""
        return self.attempt is None and not self.ahead and not self.taking_back


class DispatchBase:
    """Capacity, workers' kinds, pumping, kills and what the executor reports; the
    hand-over of attempts is ``HandoverMixin``'s (``handover.py``)."""

    if TYPE_CHECKING:  # provided by the mixin

        def start(self, run: RunState, view: WorkerView) -> None: ...
        def _send_ahead(self, run: RunState, view: WorkerView) -> None: ...
        def take_back(self, run: RunState) -> None: ...
        def take_back_all(self, view: WorkerView) -> None: ...
        def _unbind(self, run: RunState) -> None: ...

    def __init__(self, engine: Engine, executor: Executor, size: int) -> None:
        self.engine = engine
        self.executor = executor
        self.size = size
        self.workers: dict[WorkerId, WorkerView] = {}
        self.idle: list[WorkerView] = []
        self.attempt_s = AHEAD_BUDGET_S  # moving average of how long attempts take
        self.spawn_failures = 0
        self.boot_slots = executor.boot_slots()
        self.wanted: dict[Kind, deque[RunState]] = {}  # runs waiting for a worker of their kind
        self.unsent: dict[str, WorkerView] = {}  # attempts waiting for their claim's commit
        self._asking = False  # a look again at the executor's room is due

    # -- capacity ----------------------------------------------------------------------

    @property
    def executing(self) -> int:
        """Workers that hold capacity: executing an attempt that is not FROZEN (or being
        killed), or holding attempts sent ahead that may start any moment (between one
        attempt's ``Finished`` and the next one's ``Started``, say)."""
        return sum(
            1
            for w in self.workers.values()
            if (w.attempt is not None and not w.frozen)
            or (w.attempt is None and (w.ahead or w.taking_back))
        )  # inline rather than a property of the view: counted several times per run

    def add(self, worker_id: WorkerId, kind: Kind = None) -> WorkerView:
        view = self.workers[worker_id] = WorkerView(worker_id, kind=kind)
        return view

    def _spawn(self, kind: Kind) -> None:
        if kind is None:
            self.add(self.executor.spawn())
        else:
            self.add(self.executor.spawn(dict(kind)), kind)

    def top_up(self) -> None:
        """Keep one worker for every unit of capacity not taken by an executing attempt.

        At most ``boot_slots`` boot at a time, the next as one is ready; a FROZEN attempt
        keeps its worker but gives up its capacity, so a spare worker is started."""
        e = self.engine
        starting = sum(1 for w in self.workers.values() if not w.ready and not w.dying)
        # a frozen attempt's worker holds ahead nothing (it gave it back): not counted
        missing = self.size - self.executing - len(self.idle) - starting
        if missing <= 0 or e.closed or self.spawn_failures >= MAX_SPAWN_FAILURES:
            return  # after workers failed to start, try again at the next trigger
        try:
            for _ in range(min(missing, self.boot_slots - starting)):
                self._spawn(self._kind_to_start())
        except OSError as exc:
            self.spawn_failures = MAX_SPAWN_FAILURES
            e.fail_queued(f"{type(exc).__name__}: {exc}")

    def _kind_to_start(self) -> Kind:
        """The kind of the next worker: that of the oldest run waiting for a kind with
        fewer workers starting than runs waiting; else any (None)."""
        starting = Counter(w.kind for w in self.workers.values() if not w.ready and not w.dying)
        alive = Counter(w.kind for w in self.workers.values() if not w.dying)
        best: RunState | None = None
        for kind, runs in self.wanted.items():
            live = [r for r in runs if r.status is S.QUEUED]
            if kind is not None and alive[kind] >= self.executor.room_for(dict(kind)):
                self._ask_again()  # no machine has room for one more of this kind now
                continue
            if len(live) > starting[kind] and (best is None or live[0].id < best.id):
                best = live[0]
        return best.kind if best is not None else None

    def _ask_again(self) -> None:
        """Runs wait for a kind of worker the executor has no room for: look again in a
        while (a cluster may grow), even if nothing else happens."""
        if not self._asking and not self.engine.closed:
            self._asking = True
            self.engine.loop.call_later(ROOM_EVERY_S, self._asked)

    def _asked(self) -> None:
        self._asking = False
        if self.wanted and not self.engine.closed:
            self.top_up()
            self.pump()

    def _make_room(self) -> None:
        """At full capacity with runs waiting for a kind that has no worker idle or
        starting: retire idle workers of kinds nobody waits for (one per such kind)."""
        for kind in list(self.wanted):
            runs = self.wanted[kind]
            while runs and runs[0].status is not S.QUEUED:
                runs.popleft()
            if not runs:
                del self.wanted[kind]
        if not self.wanted:
            return
        starting = sum(1 for w in self.workers.values() if not w.ready and not w.dying)
        if self.size - self.executing - len(self.idle) - starting > 0:
            self.top_up()
            return
        covered = {w.kind for w in self.workers.values() if not w.dying and (not w.ready or w.free)}
        alive = Counter(w.kind for w in self.workers.values() if not w.dying)
        needed = [
            k for k in self.wanted
            if k not in covered and (k is None or alive[k] < self.executor.room_for(dict(k)))
        ]  # fmt: skip
        for view in list(self.idle):
            if not needed:
                return
            if view.kind not in self.wanted:
                needed.pop()
                self.idle.remove(view)
                view.dying = True
                self.executor.retire(view.id)  # its WorkerLost tops up with a needed kind

    def parked(self) -> list[RunState]:
        """Queued runs waiting for a worker of their kind."""
        return [r for runs in self.wanted.values() for r in runs if r.status is S.QUEUED]

    def _idle_for(self, kind: Kind) -> WorkerView | None:
        """The idle worker of that kind used last, taken out of ``idle``."""
        for i in range(len(self.idle) - 1, -1, -1):
            if self.idle[i].kind == kind:
                return self.idle.pop(i)
        return None

    def _start_wanted(self) -> None:
        """Start runs waiting for a kind on idle workers of that kind, oldest first."""
        for kind, runs in list(self.wanted.items()):
            while runs and self.executing < self.size:
                run = runs[0]
                if run.status is not S.QUEUED:
                    runs.popleft()
                    continue
                if not self.engine.scheduler.has_room(run.queue):
                    break
                view = self._idle_for(kind)
                if view is None:
                    break
                runs.popleft()
                self.start(run, view)
            if not runs:
                del self.wanted[kind]

    def retire_extra(self) -> None:
        """After a thawed run finished: stop idle workers beyond the pool size."""
        while self.idle and self.executing + len(self.idle) > self.size:
            view = self.idle.pop(0)
            view.dying = True
            self.executor.retire(view.id)

    def make_idle(self, view: WorkerView) -> None:
        usable = view.free and view.ready and not view.dying and not self.engine.closed
        if usable and view not in self.idle:
            self.idle.append(view)

    # -- starting ------------------------------------------------------------------------

    def pump(self) -> None:
        """Resume thawed runs, start queued runs while capacity and workers allow, then send
        busy workers runs ahead (runs of queues with a limit are never sent ahead: they
        take their slot only when they start)."""
        e = self.engine
        e.resume_ready()
        if self.wanted:
            self._start_wanted()
        parked = 0
        while self.idle and self.executing < self.size:
            run = e.scheduler.pop()
            if run is None:
                self._reclaim()
                break
            view = self._idle_for(run.kind)
            if view is None:  # it waits for a worker of its kind
                self.wanted.setdefault(run.kind, deque()).append(run)
                parked += 1
                if parked > self.size:
                    break
                continue
            self.start(run, view)
        if self.wanted:
            self._make_room()
        if self.idle or e.closed:
            return
        depth = self._ahead_depth()
        for view in sorted(self.workers.values(), key=lambda w: len(w.ahead)):  # evenly
            current = view.attempt
            if (len(view.ahead) > depth // 2 or current is None or view.dying or view.frozen
                    or current.kill_reason is not None):  # fmt: skip
                continue
            while len(view.ahead) < depth:
                run = e.scheduler.pop(unlimited_only=True)
                if run is None:
                    return
                if run.kind != view.kind:  # never to a worker of another kind
                    self.wanted.setdefault(run.kind, deque()).append(run)
                    self._make_room()
                    return
                self._send_ahead(run, view)

    def _ahead_depth(self) -> int:
        """How many runs to send a busy worker ahead: about AHEAD_BUDGET_S of work, plus
        the executor's round trip (a worker on a cluster hears of its next run later), so
        quick runs follow each other without waiting on the kernel, while slow ones stay
        in the queue for whichever worker frees up first. Topped up at half."""
        budget = AHEAD_BUDGET_S + self.executor.round_trip_s
        return max(1, min(AHEAD_MAX, int(budget / max(self.attempt_s, 1e-6))))

    def _reclaim(self) -> None:
        """Idle workers and nothing queued: take back runs sent ahead to busy workers (the
        last of whoever holds most), to start them on the idle ones once the executor
        says they were dropped."""
        if not any(w.ahead for w in self.workers.values()):
            return
        idle_any = sum(1 for w in self.idle if w.kind is None)  # what is sent ahead is of no kind
        wanted = idle_any - sum(len(w.taking_back) for w in self.workers.values())
        for _ in range(wanted):
            view = max(self.workers.values(), key=lambda w: len(w.ahead), default=None)
            if view is None or not view.ahead:
                return
            self.take_back(view.ahead[-1][0])

    # -- taking back and killing ---------------------------------------------------------

    def kill(self, attempt: AttemptState) -> None:
        """Kill an executing attempt (its run already moved on); capacity stays held
        until the executor reports the body gone."""
        view = self.workers.get(attempt.worker)
        if view is None or attempt.id in self.unsent:  # unsent: it never begins
            return
        if view.attempt is attempt:
            view.dying = True  # nothing more goes to it unless the kill finds it ended
            self.take_back_all(view)
        self.executor.kill(view.id, attempt.id)

    # -- what the executor reports -------------------------------------------------------

    def on_ready(self, worker_id: WorkerId, pid: int | None) -> None:
        view = self.workers.get(worker_id) or self.add(worker_id)
        view.ready, view.pid = True, pid
        self.spawn_failures = 0
        self.make_idle(view)
        self.retire_extra()
        self.top_up()  # the next worker boots
        self.pump()

    def on_killed(self, worker_id: WorkerId, attempt_id: str, killed: bool) -> None:
        view = self.workers.get(worker_id)
        if view is not None and not killed and view.attempt is None:
            view.dying = False  # the attempt had ended: the worker goes on
            self.make_idle(view)
            self.pump()
        elif view is not None and not killed:
            view.dying = False

    def finished(self, worker_id: WorkerId, attempt_id: str, took: float) -> AttemptState | None:
        """The body ended: free the worker's capacity; the attempt, if it is the one."""
        view = self.workers[worker_id]
        attempt = view.attempt
        if attempt is None or attempt.id != attempt_id:
            return None
        view.attempt = None
        if view.frozen:
            view.frozen = False
            self.executor.frozen(view.id, False)
        self.attempt_s += (took - self.attempt_s) * 0.2  # sizes what workers get sent ahead
        self.engine.release_slot(attempt)
        self.make_idle(view)
        return attempt

    def lost(self, worker_id: WorkerId) -> tuple[WorkerView, AttemptState | None]:
        """The worker and its processes are gone: what it held ahead never started."""
        view = self.workers.pop(worker_id)
        if view in self.idle:
            self.idle.remove(view)
        for run, _ in reversed(list(view.taking_back.values())):
            self._unbind(run)
        for run, _ in reversed(list(view.ahead)):
            self._unbind(run)
        view.taking_back.clear()
        view.ahead.clear()
        attempt, view.attempt = view.attempt, None
        if attempt is not None:
            self.engine.release_slot(attempt)
        if not view.ready and not view.dying:
            self.spawn_failures += 1
        return view, attempt

    def attempt_on(self, worker_id: WorkerId, attempt_id: str) -> AttemptState | None:
        """The live attempt a message from a worker is about, unless it ended meanwhile."""
        view = self.workers.get(worker_id)
        attempt = view.attempt if view is not None else None
        if attempt is None or attempt.id != attempt_id or attempt.kill_reason:
            return None
        return attempt

    def sent(self, worker_id: WorkerId, attempt_id: str) -> AttemptState | None:
        """An attempt sent to this worker: executing, or sent ahead (its ``Started`` may
        still be on the way), unless it ended meanwhile."""
        view = self.workers.get(worker_id)
        if view is None:
            return None
        candidates = [view.attempt] if view.attempt is not None else []
        candidates += [a for _, a in view.ahead] + [a for _, a in view.taking_back.values()]
        for attempt in candidates:
            if attempt.id == attempt_id and attempt.kill_reason is None:
                return attempt
        return None

    def freeze(self, attempt: AttemptState) -> None:
        """Its attempt waits on children: the worker gives its capacity up (a spare one is
        started) and what it was sent ahead goes back."""
        view = self.workers.get(attempt.worker)
        if view is not None:
            view.frozen = True
            self.take_back_all(view)
            self.executor.frozen(view.id, True)

    def thaw(self, attempt: AttemptState) -> None:
        view = self.workers.get(attempt.worker)
        if view is not None and view.frozen:
            view.frozen = False
            self.executor.frozen(view.id, False)

    def has_capacity(self) -> bool:
        return self.executing < self.size


class Dispatch(HandoverMixin, DispatchBase):
    """The one owner of worker state: see the module docstring."""
