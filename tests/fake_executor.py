"""An in-process executor for model tests of the engine: workers without processes.

It implements the ``Executor`` protocol (``nbtasks/executor/base.py``) and models what a
real worker and the local pool do, step by step, with nothing delivered on its own: every
request is recorded, and every answer waits until the test delivers it, so a test (or
hypothesis) picks the interleaving.

Per worker, as in ``executor/local``:

- a pipe of events the worker wrote (``WorkerReady``, ``Started``, ``Dropped``,
  ``Finished``, ``Call``, ``Log``...), delivered in order; ``WorkerLost`` comes last, once
  the worker's processes are gone;
- an inbox of the attempts sent to it (directly, or ahead), taken up in order, one body at
  a time; ``Started`` is written for an attempt sent ahead when it is taken up;
- the ``Drop`` commands of take-backs, read later: one still waiting is answered
  ``Dropped``, one already taken up was answered ``Started`` already;
- the pool's record of what was sent (``sent``, until ``Finished`` or ``Dropped`` is read)
  and the worker's control block (``running``/``started`` sequence numbers), which decide a
  kill as the pool does: torn down (``KillDone(killed=True)``, ``WorkerLost`` later) if the
  attempt executes or was not taken up yet, else ``KillDone(killed=False)``.

Protocol breaches by the engine are recorded in ``violations`` (never raised into engine
code, which might swallow them); the test asserts there are none after each step.
"""

from __future__ import annotations

import asyncio
import itertools
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from nbtasks.executor import base as E
from nbtasks.executor.base import AttemptSpec, WorkerId

PICKLED_NONE = b"\x80\x04N."


@dataclass(eq=False)
class Sent:
    spec: AttemptSpec
    ahead: bool
    seq: int


@dataclass(eq=False)
class Body:
    """An attempt's body, from its take-up until it returns or its worker is gone."""

    attempt_id: str
    run_id: str
    worker: WorkerId
    request: int | None = None  # a call from task code waiting for its reply
    freezing: bool = False  # that call waits on runs: the engine freezes the run meanwhile

    @property
    def running(self) -> bool:
        """Counts against capacity: not blocked in a call that freezes its run."""
        return not (self.request is not None and self.freezing)


@dataclass(eq=False)
class FakeWorker:
    id: WorkerId
    booted: bool = False  # WorkerReady written
    doomed: bool = False  # torn down (a kill, out of memory): stopped, its processes die
    exited: bool = False  # its processes are gone: WorkerLost is in its pipe
    lost: bool = False  # WorkerLost was delivered: the pool forgot the worker
    retiring: bool = False
    told_killed: bool = False  # KillDone(killed=True) was delivered: the engine knows
    seq: int = 0
    sent: dict[str, int] = field(default_factory=dict)  # the pool's: until Finished/Dropped read
    inbox: deque[Sent | None] = field(default_factory=deque)  # None: Exit
    waiting: set[str] = field(default_factory=set)  # sent ahead, not taken up nor dropped
    dropped: set[str] = field(default_factory=set)
    drops: deque[str] = field(default_factory=deque)  # Drop commands not read yet
    running: int = 0  # control block: seq of the body executing (0: none)
    started: int = 0  # control block: seq of the last attempt taken up
    body: Body | None = None
    pipe: deque[E.Event] = field(default_factory=deque)
    requests: int = 0

    @property
    def alive(self) -> bool:
        """Runs and reads commands: not torn down, processes not gone."""
        return not self.doomed and not self.exited

    @property
    def dying(self) -> bool:
        """The pool's ``worker.dying``: retiring, or torn down."""
        return self.retiring or self.doomed

    def next_real(self) -> Sent | None:
        """The next attempt it would take up (skipping those dropped)."""
        for sent in self.inbox:
            if sent is not None and sent.spec.attempt_id not in self.dropped:
                return sent
        return None


@dataclass(eq=False)
class PendingKill:
    worker: WorkerId
    attempt_id: str
    killed: bool | None  # decided already (by the pool at once), or when answered


class FakeExecutor:
    capabilities = frozenset({"pid"})

    def __init__(self, boot_slots: int = 2, sync_kill: bool = False) -> None:
        self.slots = boot_slots
        self.sync_kill = sync_kill  # decide and answer kills inside kill(), as the pool can
        self.fleet: dict[WorkerId, FakeWorker] = {}
        self.kills: list[PendingKill] = []
        self.requests: list[tuple[Any, ...]] = []  # every request, in order
        self.violations: list[str] = []
        self.specs: dict[str, AttemptSpec] = {}  # every attempt sent
        self.sent_to: dict[str, tuple[WorkerId, bool]] = {}  # attempt -> (worker, ahead)
        self.by_run: dict[str, list[str]] = {}  # run -> its attempts, in the order sent
        self.taken_back: set[str] = set()
        self.taken_up: list[str] = []  # attempts whose body started, in order
        self.heard: set[str] = set()  # attempts the engine knows started (or sent direct)
        self.kill_asked: set[str] = set()
        self.replied: set[tuple[WorkerId, int]] = set()
        self.kill_log: list[tuple[WorkerId, str, bool]] = []  # kills answered
        self.closed = False
        self.on_kill: Callable[[WorkerId, str], None] | None = None  # the test's I3 check
        self.on_start: Callable[[AttemptSpec], None] | None = None  # and its I1 check
        self.loop: asyncio.AbstractEventLoop | None = None
        self.sink: E.Sink | None = None
        self._ids = itertools.count(1)

    # -- the Executor protocol (called on the engine's loop thread) --------------------------

    def open(self, loop: asyncio.AbstractEventLoop, sink: E.Sink) -> None:
        self.loop, self.sink = loop, sink

    def note_starts(self, path: str) -> bool:
        return False  # every run handed over counts as begun after a shutdown

    def boot_slots(self) -> int:
        return self.slots

    def spawn(self, resources: dict[str, float] | None = None) -> WorkerId:
        self._check_open("spawn")
        wid = next(self._ids)
        self.fleet[wid] = FakeWorker(wid)
        self.requests.append(("spawn", wid))
        return wid

    def start(self, worker: WorkerId, attempt: AttemptSpec, ahead: bool = False) -> None:
        aid = attempt.attempt_id
        self.requests.append(("start", worker, aid, ahead))
        self._check_open("start")
        if self.on_start is not None:
            self.on_start(attempt)
        w = self.fleet.get(worker)
        if w is None or w.lost:
            self._violate(f"start({worker}, {aid}): the worker is unknown or was lost")
            return
        if aid in self.specs:
            self._violate(f"start({worker}, {aid}): attempt id sent twice")
            return
        if not ahead and (w.body is not None or w.next_real() is not None or not w.booted):
            self._violate(
                f"start({worker}, {aid}, ahead=False) on a worker that is not idle "
                f"(body={w.body and w.body.attempt_id}, inbox={self._inbox(w)}, "
                f"booted={w.booted})"
            )
        if w.retiring or w.told_killed:
            self._violate(f"start({worker}, {aid}) to a worker retiring or being killed")
        self.specs[aid] = attempt
        self.sent_to[aid] = (worker, ahead)
        if not ahead:
            self.heard.add(aid)
        self.by_run.setdefault(attempt.run_id, []).append(aid)
        w.seq += 1
        w.sent[aid] = w.seq
        if w.alive:  # a torn-down worker is stopped: it never reads this
            w.inbox.append(Sent(attempt, ahead, w.seq))
            if ahead:
                w.waiting.add(aid)

    def take_back(self, worker: WorkerId, attempt_id: str) -> None:
        self.requests.append(("take_back", worker, attempt_id))
        self._check_open("take_back")
        w = self.fleet.get(worker)
        if w is None or w.lost:
            self._violate(f"take_back({worker}, {attempt_id}): the worker is unknown or lost")
            return
        if self.sent_to.get(attempt_id) != (worker, True):
            self._violate(f"take_back({worker}, {attempt_id}): not sent ahead to that worker")
        if attempt_id in self.taken_back:
            self._violate(f"take_back({worker}, {attempt_id}): taken back twice")
        self.taken_back.add(attempt_id)
        if w.alive:
            w.drops.append(attempt_id)

    def kill(self, worker: WorkerId, attempt_id: str) -> None:
        self.requests.append(("kill", worker, attempt_id))
        self.kill_asked.add(attempt_id)
        self._check_open("kill")
        if self.on_kill is not None:
            self.on_kill(worker, attempt_id)
        if self.sent_to.get(attempt_id, (None,))[0] != worker:
            self._violate(f"kill({worker}, {attempt_id}): that attempt was not sent there")
        w = self.fleet.get(worker)
        # What the pool decides at once (local/pool.py: kill)
        if w is None or w.lost or attempt_id not in w.sent:
            pending = PendingKill(worker, attempt_id, False)
        elif w.dying:
            pending = PendingKill(worker, attempt_id, True)
        else:  # the worker is being stopped: decided once it is
            pending = PendingKill(worker, attempt_id, None)
        if self.sync_kill:
            self._answer_kill(pending)
        else:
            self.kills.append(pending)

    def reply(self, worker: WorkerId, request_id: int, ok: bool, value: Any) -> None:
        self.requests.append(("reply", worker, request_id, ok))
        self._check_open("reply")
        if (worker, request_id) in self.replied:
            self._violate(f"reply({worker}, {request_id}): replied twice")
        self.replied.add((worker, request_id))
        w = self.fleet.get(worker)
        if w is None or not w.alive:
            return  # a dead worker's pipe: the reply is lost
        if w.body is None or w.body.request != request_id:
            self._violate(f"reply({worker}, {request_id}): no body waits for that request")
            return
        w.body.request, w.body.freezing = None, False

    accepts_resources = False
    round_trip_s = 0.0

    def room_for(self, resources: dict[str, float]) -> int:
        return 1 << 30

    def check(self) -> None:
        self._check_open("check")

    def frozen(self, worker: WorkerId, frozen: bool) -> None:
        self.requests.append(("frozen", worker, frozen))
        self._check_open("frozen")

    def retire(self, worker: WorkerId) -> None:
        self.requests.append(("retire", worker))
        self._check_open("retire")
        w = self.fleet.get(worker)
        if w is None or w.lost:
            self._violate(f"retire({worker}): the worker is unknown or lost")
            return
        if w.body is not None or w.next_real() is not None:
            self._violate(f"retire({worker}): the worker is not idle ({self._inbox(w)})")
        w.retiring = True
        if w.alive:
            w.inbox.append(None)

    def close(self) -> None:
        self.requests.append(("close",))
        self.closed = True

    # -- what the test drives (on the loop thread) --------------------------------------

    def boot(self, wid: WorkerId) -> None:
        w = self.fleet[wid]
        assert not w.booted and w.alive
        w.booted = True
        w.pipe.append(E.WorkerReady(wid, 1000 + wid))

    def deliver(self, wid: WorkerId) -> E.Event:
        """The kernel reads the next event the worker wrote."""
        w = self.fleet[wid]
        event = w.pipe.popleft()
        if isinstance(event, (E.Finished, E.Dropped)):
            w.sent.pop(event.attempt_id, None)
        elif isinstance(event, E.WorkerLost):
            w.lost = True
        elif isinstance(event, E.Started):
            self.heard.add(event.attempt_id)
        self._sink(event)
        return event

    def take_up(self, wid: WorkerId) -> str | None:
        """The worker's main loop handles the next message of its inbox: the attempt id
        whose body starts, or None (an attempt dropped, skipped; or Exit)."""
        w = self.fleet[wid]
        assert w.booted and w.alive and w.body is None and w.inbox
        sent = w.inbox.popleft()
        if sent is None:  # Exit: a retired worker ends
            self._exit(w, E.WorkerLost(wid, 0, None, ""))
            return None
        aid = sent.spec.attempt_id
        if aid in w.dropped:
            w.dropped.discard(aid)
            return None
        w.waiting.discard(aid)
        w.started = w.running = sent.seq
        run_id = sent.spec.run_id
        for other in self.bodies():
            if other.run_id == run_id:
                self._violate(
                    f"I1: run {run_id}: attempt {aid} starts on worker {wid} while attempt "
                    f"{other.attempt_id} runs on worker {other.worker}"
                )
        if aid in self.taken_up:
            self._violate(f"I1: attempt {aid} started twice")
        self.taken_up.append(aid)
        w.body = Body(aid, run_id, wid)
        if sent.ahead:
            w.pipe.append(E.Started(wid, aid))
        return aid

    def read_drop(self, wid: WorkerId) -> bool:
        """The worker reads the next Drop command; True if it answered Dropped."""
        w = self.fleet[wid]
        aid = w.drops.popleft()
        if aid not in w.waiting:
            return False  # taken up already: its Started was written
        w.waiting.discard(aid)
        w.dropped.add(aid)
        w.pipe.append(E.Dropped(wid, aid))
        return True

    def finish(self, wid: WorkerId, outcome: str = "completed") -> str:
        w = self.fleet[wid]
        body = w.body
        assert body is not None and body.request is None and w.alive
        w.body, w.running = None, 0
        error = None
        if outcome != "completed":
            error = {"type": "ValueError", "message": outcome, "traceback": ""}
        completed = outcome == "completed"
        finished = E.Finished(
            worker=wid,
            attempt_id=body.attempt_id,
            outcome=outcome,
            output=PICKLED_NONE if completed else None,
            output_preview="None",
            error=error,
            exc=None,
            stdout="",
            stderr="",
            took=0.001,
            rss=123 if outcome == "oom" else None,
        )
        w.pipe.append(finished)
        return body.attempt_id

    def call(self, wid: WorkerId, op: str, args: tuple[Any, ...], freezing: bool) -> int:
        w = self.fleet[wid]
        body = w.body
        assert body is not None and body.request is None and w.alive
        w.requests += 1
        body.request, body.freezing = w.requests, freezing
        w.pipe.append(E.Call(wid, body.attempt_id, w.requests, op, args))
        return w.requests

    def chatter(self, wid: WorkerId, kind: int) -> None:
        """Task code writes: a log line, metadata or a display."""
        w = self.fleet[wid]
        body = w.body
        assert body is not None and w.alive
        if kind == 0:
            w.pipe.append(E.Log(wid, body.attempt_id, "stdout", "hello\n"))
        elif kind == 1:
            w.pipe.append(E.Metadata(wid, body.attempt_id, "set", "k", kind))
        else:
            w.pipe.append(E.Display(wid, body.attempt_id, {"text/plain": "x"}))

    def out_of_memory(self, wid: WorkerId) -> None:
        """The pool's memory sampling caught the body past its limit: torn down, and
        ``OutOfMemory`` sent at once (from the pool, not the worker's pipe)."""
        w = self.fleet[wid]
        body = w.body
        assert body is not None and w.alive
        self._tear_down(w, body.attempt_id)
        self._sink(E.OutOfMemory(wid, body.attempt_id, 1 << 30))

    def die(self, wid: WorkerId, signal: int | None = 9) -> None:
        """The worker dies on its own: what it wrote is still read, then WorkerLost."""
        w = self.fleet[wid]
        assert not w.exited
        self._exit(w, E.WorkerLost(wid, None if signal else 1, signal, "boom"))

    def reap(self, wid: WorkerId) -> None:
        """A torn-down worker's processes are gone."""
        w = self.fleet[wid]
        assert w.doomed and not w.exited
        self._exit(w, E.WorkerLost(wid, None, 9, ""))

    def answer_kill(self, index: int) -> PendingKill:
        pending = self.kills.pop(index)
        self._answer_kill(pending)
        return pending

    # -- views for tests ---------------------------------------------------------------------

    def bodies(self) -> list[Body]:
        return [w.body for w in self.fleet.values() if w.body is not None]

    def workers_where(self, pred: Callable[[FakeWorker], bool]) -> list[WorkerId]:
        return [wid for wid, w in sorted(self.fleet.items()) if pred(w)]

    def quiet(self) -> bool:
        """Nothing left to deliver or decide."""
        return not self.kills and not any(w.pipe or w.drops for w in self.fleet.values())

    # -- internals -----------------------------------------------------------------------------

    def _answer_kill(self, pending: PendingKill) -> None:
        killed = pending.killed
        w = self.fleet.get(pending.worker)
        if killed is None:  # local/pool.py: _decide_kill, with the worker stopped
            assert w is not None
            seq = w.sent.get(pending.attempt_id, 0)
            if w.exited:
                killed = True
            elif seq and (w.running == seq or w.started < seq):
                self._tear_down(w, pending.attempt_id)
                killed = True
            else:
                killed = False
        self.kill_log.append((pending.worker, pending.attempt_id, killed))
        if killed and w is not None:
            w.told_killed = True
        self._sink(E.KillDone(pending.worker, pending.attempt_id, killed))

    def _tear_down(self, w: FakeWorker, attempt_id: str) -> None:
        if w.body is not None and w.body.attempt_id != attempt_id:
            self._violate(
                f"I3: killing {attempt_id} on worker {w.id} tears down the body of "
                f"{w.body.attempt_id} (run {w.body.run_id})"
            )
        w.doomed = True
        w.drops.clear()

    def _exit(self, w: FakeWorker, lost: E.WorkerLost) -> None:
        w.exited = True
        w.body = None
        w.running = 0
        w.drops.clear()
        w.pipe.append(lost)

    def _sink(self, event: E.Event) -> None:
        assert self.sink is not None
        self.sink(event)

    def _check_open(self, what: str) -> None:
        if self.closed:
            self._violate(f"{what} after close()")

    def _violate(self, message: str) -> None:
        self.violations.append(message)

    @staticmethod
    def _inbox(w: FakeWorker) -> list[str]:
        return [s.spec.attempt_id if s else "EXIT" for s in w.inbox]
