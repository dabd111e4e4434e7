"""Model tests of the engine's dispatch: a real ``Engine`` on a real store, with a fake
executor (``fake_executor.py``) whose workers answer nothing until the test says so.

A hypothesis state machine triggers runs (queues with limits, retries, ttl, delays, time
limits, idempotency keys, tasks not defined yet), cancels them, and plays the workers'
side in random interleavings: workers boot, take up attempts, finish them, call the engine
from task code (nested triggers and waits that freeze the run, reads, cancels), die, run
out of memory; take-backs and kills are answered late (or, like the local pool often does,
at once inside ``kill``). After every step (``Harness.check``):

- I1: no attempt starts twice, and a run never has two bodies running at once; an attempt
  reaches a worker only once the store holds, committed, that its run counts it (so an
  engine that takes the store over after a crash never starts that run again);
- I2: bodies running (not blocked in a wait that froze their run) <= the pool size, and
  per queue <= its concurrency limit; so do the engine's own counts, and its queue
  counters match the attempts holding slots;
- I3: every kill targets the latest attempt of its run, one the engine means to end
  (``kill_reason`` set), on the worker it sent it to, and never tears down another
  attempt's body; a body the engine knows of runs where it thinks, and once its run is
  final it has been asked to die;
- no exception escaped on the engine's loop (nor a future's callback), and the executor
  saw no protocol breach (``FakeExecutor.violations``).

At the end of most examples everything is drained (every answer delivered, every body
finished, every backoff and delay over, the late task defined): then (I4) every run is
final in the store and the engine holds nothing. The other examples end with the engine
shut down mid-flight: nothing is left EXECUTING, FROZEN or REATTEMPTING in the store.

Timers never fire on their own (their delays are an hour): steps call ``_time_out``,
``_requeue``, ``_due`` and ``_expire`` directly, and wait for every commit, so examples
replay. Each example weighs the kinds of steps its own way (swarm testing).

The plain tests at the end replay specific races step by step.
"""

from __future__ import annotations

import concurrent.futures as cf
import logging
import os
import shutil
import tempfile
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import timedelta
from typing import Any, TypeVar

import pytest
from hypothesis import HealthCheck, event, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

from fake_executor import FakeExecutor, FakeWorker
from nbtasks.core.durations import utcnow
from nbtasks.core.ids import new_id
from nbtasks.core.options import Retry
from nbtasks.core.status import FINAL, RunStatus
from nbtasks.engine.engine import Engine
from nbtasks.engine.state import RunSpec, RunState, TaskVersion
from nbtasks.executor.base import AttemptSpec
from nbtasks.store.schema import RUN_COLUMNS
from nbtasks.store.store import Store

S = RunStatus
T = TypeVar("T")
HOUR = 3600.0
WAIT_S = 20.0  # a bound for waiting on the engine; never reached unless it hangs
QUEUES: dict[str | None, int | None] = {None: None, "q1": 1, "q2": 2}
NO_RETRY_DELAY = Retry(max_attempts=1, min_delay=HOUR, max_delay=HOUR, randomize=False)
TASK = TaskVersion(
    task_id="model-task", version="20250101.1", fn_key="model-fn", fn_bytes=b"not run",
    retry=NO_RETRY_DELAY, memory_limit=None,
)  # fmt: skip
CHILD = TaskVersion(
    task_id="model-child", version="", fn_key="model-child-fn", fn_bytes=b"not run either",
    retry=NO_RETRY_DELAY, memory_limit=None,
)  # fmt: skip
LATE = TaskVersion(  # runs of this task are triggered by id before it is defined
    task_id="model-late", version="20250101.2", fn_key="model-late-fn", fn_bytes=b"late",
    retry=NO_RETRY_DELAY, memory_limit=None,
)  # fmt: skip
PAYLOAD = b"\x80\x04N."  # pickled None
COUNT = RUN_COLUMNS.index("attempt_count")


class _Records(logging.Handler):
    """Errors logged by concurrent.futures (an exception in a future's done-callback)."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.seen: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.seen.append(self.format(record))


class Harness:
    """One engine on a fresh store with a fake executor; every step runs on the engine's
    loop and waits until what it staged is committed (and the commit's callbacks ran)."""

    def __init__(self, size: int, boot_slots: int = 2, sync_kill: bool = False) -> None:
        self.size = size
        self.dir = tempfile.mkdtemp(prefix="nbtasks-model-")
        self.fake = FakeExecutor(boot_slots, sync_kill)
        self.loop_errors: list[str] = []
        self.records = _Records()
        logging.getLogger("concurrent.futures").addHandler(self.records)
        self.queue_of: dict[str, str | None] = {}  # every run id made, and its queue
        self.triggered: list[str] = []  # runs triggered from outside, in order
        self.children: list[str] = []  # runs asked for by task code (made if heard)
        try:
            self.engine = Engine(os.path.join(self.dir, "runs.duckdb"), size, self.fake)
        except BaseException:
            self._clean_up()
            raise
        self.engine._thread.call(self.engine.loop.set_exception_handler, self._loop_error)
        self.engine.take_back_s = 0.0  # fake workers answer take-backs only when told
        self.fake.on_kill = self._check_kill
        self.fake.on_start = self._check_claimed

    # -- plumbing ---------------------------------------------------------------------

    def _loop_error(self, loop: Any, context: dict[str, Any]) -> None:
        exc = context.get("exception")
        self.loop_errors.append(f"{context.get('message')}: {exc!r}")

    def on_loop(self, fn: Callable[..., T], *args: Any) -> T:
        """Run ``fn`` on the engine's loop (errors raise here), then settle."""
        result = self.engine._thread.call(fn, *args)
        self.quiesce()
        return result

    def read(self, fn: Callable[[], T]) -> T:
        return self.engine._thread.call(fn)

    def quiesce(self) -> None:
        """Wait until everything staged is committed and its callbacks ran."""
        engine = self.engine

        def committed(fut: cf.Future[bool], error: BaseException | None) -> None:
            if error is not None:
                self.loop_errors.append(f"a commit failed: {error!r}")
            fut.set_result(False)

        for _ in range(100):
            fut: cf.Future[bool] = cf.Future()

            def probe(fut: cf.Future[bool] = fut) -> None:
                ticket = engine.store.barrier()
                if ticket is None:
                    fut.set_result(True)
                else:
                    engine._after_commit(ticket, lambda error: committed(fut, error))

            engine._thread.call(probe)
            settled = fut.result(WAIT_S)
            engine._thread.call(lambda: None)  # the commit's callback is over
            if settled:
                return
        raise AssertionError("the store never settled")

    def close(self) -> None:
        try:
            if not self.engine.closed:
                self.engine.close()
        finally:
            self._clean_up()

    def _clean_up(self) -> None:
        logging.getLogger("concurrent.futures").removeHandler(self.records)
        shutil.rmtree(self.dir, ignore_errors=True)

    # -- the outside world's requests -----------------------------------------------------

    def spec(self, task: TaskVersion | None = TASK, queue: str | None = None,
             max_attempts: int | None = None, ttl: bool = False, delay: bool = False,
             timeout: bool = False, key: str | None = None) -> RunSpec:  # fmt: skip
        """A run of ``task`` (None: of LATE, not defined yet)."""
        now = utcnow()
        spec = RunSpec(
            id=new_id("run"), task_id=(task or LATE).task_id, task=task, payload=PAYLOAD,
            payload_preview="None", created_at=now, queue=queue,
            concurrency_limit=QUEUES[queue], max_attempts=max_attempts,
            max_duration_s=HOUR if timeout else None, ttl_s=HOUR if ttl else None,
            delay_until=now + timedelta(hours=1) if delay else None, idempotency_key=key,
        )  # fmt: skip
        self.queue_of[spec.id] = queue
        return spec

    def trigger(self, *specs: RunSpec) -> list[str]:
        fut = self.engine.call(self.engine.submit, list(specs))
        created = fut.result(WAIT_S)
        self.quiesce()
        ids = [run_id for run_id, _ in created]
        self.triggered.extend(ids)
        return ids

    def cancel(self, run_id: str) -> None:
        self.engine.call(self.engine.cancel, run_id).result(WAIT_S)
        self.quiesce()

    def deploy(self) -> None:
        """The task LATE gets defined: its waiting runs are queued."""
        self.engine.call(self.engine.deploy, LATE).result(WAIT_S)
        self.quiesce()

    def reschedule(self, run_id: str, past: bool) -> None:
        when = utcnow() + (timedelta(seconds=-1) if past else timedelta(hours=2))
        self.engine.call(self.engine.reschedule, run_id, when).result(WAIT_S)
        self.quiesce()

    # -- timers, fired by the test ------------------------------------------------------------

    def runs_where(self, pred: Callable[[RunState], bool]) -> list[str]:
        return self.read(lambda: sorted(r.id for r in self.engine.runs.values() if pred(r)))

    def fire(self, run_id: str, which: str) -> None:
        """Let the time pass for one timer of a live run: its callback runs now."""
        e = self.engine

        def step() -> None:
            run = e.runs.get(run_id)
            if run is None:
                return
            if which == "timeout":
                attempt = run.attempt
                if attempt is not None and attempt.timer is not None:
                    attempt.timer.cancel()
                    e._time_out(run, attempt)
            elif which == "ttl":
                if run.ttl_timer is not None:
                    run.ttl_timer.cancel()
                    e._expire(run)
            elif run.timer is not None:  # "backoff" or "delay"
                run.timer.cancel()
                (e._requeue if run.status is S.REATTEMPTING else e._due)(run)

        self.on_loop(step)

    # -- the workers' side (fake executor) -----------------------------------------------------

    def boot(self, wid: int) -> None:
        self.on_loop(self.fake.boot, wid)

    def deliver(self, wid: int) -> Any:
        return self.on_loop(self.fake.deliver, wid)

    def deliver_all(self, wid: int) -> None:
        while self.fake.fleet[wid].pipe:
            self.deliver(wid)

    def take_up(self, wid: int) -> str | None:
        return self.on_loop(self.fake.take_up, wid)

    def finish(self, wid: int, outcome: str = "completed") -> str:
        return self.on_loop(self.fake.finish, wid, outcome)

    def read_drop(self, wid: int) -> bool:
        return self.on_loop(self.fake.read_drop, wid)

    def answer_kill(self, index: int = 0) -> Any:
        return self.on_loop(self.fake.answer_kill, index)

    def die(self, wid: int) -> None:
        self.on_loop(self.fake.die, wid)

    def reap(self, wid: int) -> None:
        self.on_loop(self.fake.reap, wid)

    def ready_worker(self, wid: int) -> None:
        self.boot(wid)
        self.deliver_all(wid)

    # -- invariants -----------------------------------------------------------------------------

    def _check_claimed(self, spec: AttemptSpec) -> None:
        """I1 across a crash, as an attempt is handed to a worker (on the engine's loop):
        the store holds, committed, that the run counts it, so a next engine on the store
        would never start the run again (what a store reader sees: the tables and the
        journal's committed frames, not what is only staged). Or no commit holds the run
        at all yet, and its creation is staged in the open batch, with its claim: nothing
        could start it again."""
        store = self.engine.store
        rows = store.list_runs("id = ?", [spec.run_id], lambda row: row[0] == spec.run_id, 1)
        counted = rows[0][COUNT] if rows else None
        if counted is None and store.created_in_open_batch(spec.run_id):
            return
        if counted is None or counted < spec.number:
            self.fake.violations.append(
                f"I1: attempt {spec.number} of {spec.run_id} handed to a worker while the "
                f"store's committed attempt_count is {counted}"
            )

    def _check_kill(self, worker: int, attempt_id: str) -> None:
        """I3, on the engine's side, as it asks for a kill (on its loop)."""
        fake = self.fake
        spec = fake.specs.get(attempt_id)
        if spec is None:
            fake.violations.append(f"I3: kill({worker}, {attempt_id}): never sent")
            return
        latest = fake.by_run[spec.run_id][-1]
        if latest != attempt_id:
            fake.violations.append(
                f"I3: kill of {attempt_id}, not the latest attempt ({latest}) of {spec.run_id}"
            )
        view = self.engine.dispatch.workers.get(worker)
        attempt = view.attempt if view is not None else None
        if attempt is None or attempt.id != attempt_id:
            fake.violations.append(
                f"I3: kill({worker}, {attempt_id}): the engine's worker view executes "
                f"{attempt and attempt.id}"
            )
        elif attempt.kill_reason is None:
            fake.violations.append(f"I3: kill of {attempt_id} without a kill_reason")

    def check(self) -> None:
        """The invariants that hold after every step (read on the loop)."""
        assert not self.loop_errors, self.loop_errors
        assert not self.records.seen, self.records.seen
        self.read(self._check_on_loop)

    def _check_on_loop(self) -> None:
        fake, e = self.fake, self.engine
        assert not fake.violations, fake.violations
        running = [b for b in fake.bodies() if b.running]
        assert len(running) <= self.size, (
            f"I2: {len(running)} bodies run at once with workers={self.size}: "
            f"{[(b.worker, b.run_id) for b in running]}"
        )
        per_queue = Counter(self.queue_of.get(b.run_id) for b in running)
        for queue, n in per_queue.items():
            limit = QUEUES[queue]
            assert limit is None or n <= limit, (
                f"I2: {n} bodies of queue {queue} run at once (its limit is {limit})"
            )
        for body in fake.bodies():  # the engine knows what runs where, and ends it
            if body.attempt_id not in fake.heard or fake.fleet[body.worker].doomed:
                continue
            view = e.dispatch.workers.get(body.worker)
            seen = view.attempt.id if view is not None and view.attempt is not None else None
            assert seen == body.attempt_id, (
                f"the body of {body.attempt_id} runs on worker {body.worker}, where the "
                f"engine sees {seen}"
            )
            run = e.runs.get(body.run_id)
            if (run is None or run.status in FINAL) and body.attempt_id not in fake.kill_asked:
                raise AssertionError(
                    f"I3: run {body.run_id} is {run.status.value if run else 'settled'} but "
                    f"the body of its attempt {body.attempt_id} runs on, not killed"
                )
        assert e.dispatch.executing <= self.size, (
            f"I2: the engine counts {e.dispatch.executing} workers executing, workers={self.size}"
        )
        for queue, n in e.scheduler.executing.items():
            limit = QUEUES[queue]
            assert limit is None or 0 <= n <= limit, f"I2: queue {queue} counts {n} executing"
        holding = Counter(
            v.attempt.queue
            for v in e.dispatch.workers.values()
            if v.attempt is not None and v.attempt.holds_slot
        )
        counted = {q: n for q, n in e.scheduler.executing.items() if n}
        assert counted == dict(holding), (
            f"queue slots counted {counted}, held by attempts {dict(holding)}"
        )

    # -- the end: drain everything, then I4 ---------------------------------------------------

    def _drain_step(self) -> bool:
        """Take one step towards the end; False once there is nothing left to do."""
        fake = self.fake
        if fake.kills:
            self.answer_kill(0)
            return True
        for wid, w in sorted(fake.fleet.items()):
            if w.pipe:
                self.deliver(wid)
                return True
        for wid, w in sorted(fake.fleet.items()):
            if w.drops and w.alive:
                self.read_drop(wid)
                return True
        for wid, w in sorted(fake.fleet.items()):
            if w.doomed and not w.exited:
                self.reap(wid)
                return True
            if not w.booted and w.alive:
                self.boot(wid)
                return True
            if w.booted and w.alive and w.body is None and w.inbox:
                self.take_up(wid)
                return True
        for wid, w in sorted(fake.fleet.items()):
            if w.alive and w.body is not None and w.body.request is None:
                self.finish(wid)
                return True
        waiting = self.runs_where(lambda r: r.status in (S.REATTEMPTING, S.DELAYED))
        if waiting:
            self.fire(waiting[0], "backoff")
            return True
        if self.runs_where(lambda r: r.status is S.WAITING_FOR_DEPLOY):
            self.deploy()
            return True
        stuck = self.runs_where(lambda r: r.status is S.QUEUED)
        if stuck and not fake.workers_where(lambda w: not w.exited):
            self.trigger()  # workers failed to start: the next trigger tries again
            return True
        return False

    def drain_and_check(self) -> None:
        for _ in range(5000):
            self.check()
            if not self._drain_step():
                break
        else:
            raise AssertionError("draining never ended")
        self.quiesce()
        left = self.read(lambda: {r.id: r.status.value for r in self.engine.runs.values()})
        assert not left, f"I4: runs still live after draining: {left}; {self.describe()}"
        rows = dict(self.engine.store.query("SELECT id, status FROM runs"))
        missing = [i for i in self.triggered if i not in rows]
        assert not missing, f"I4: triggered runs not in the store: {missing}"
        unknown = [i for i in rows if i not in self.queue_of]
        assert not unknown, f"runs nobody asked for: {unknown}"
        not_final = {i: s for i, s in rows.items() if RunStatus(s) not in FINAL}
        assert not not_final, f"I4: runs not final after draining: {not_final}"
        assert not self.fake.bodies()
        assert self.read(lambda: self.engine.dispatch.executing) == 0
        self.check()

    def shut_down_and_check(self) -> dict[str, str]:
        """Shut the engine down mid-flight: what executed ends INTERRUPTED, in the store
        (read from the file once the engine let go of it). The runs and their statuses."""
        self.engine.close()
        assert self.fake.closed
        assert not self.loop_errors, self.loop_errors
        assert not self.records.seen, self.records.seen
        assert not self.fake.violations, self.fake.violations
        store = Store(self.engine.store_path, lambda ticket, error: None)
        try:
            runs: dict[str, str] = dict(store.query("SELECT id, status FROM runs"))
            attempts = store.query("SELECT id FROM attempts WHERE status = 'EXECUTING'")
        finally:
            store.close()
        left = {i: s for i, s in runs.items() if s in ("EXECUTING", "FROZEN", "REATTEMPTING")}
        assert not left, f"runs left running by a shutdown: {left}"
        assert not attempts, f"attempts left EXECUTING by a shutdown: {attempts}"
        # I1 across engines: no run whose body began is left to run again by the next one
        # (sent ahead, say, its Started not heard before the shutdown).
        begun = {self.fake.specs[a].run_id for a in self.fake.taken_up}
        after = reopened_statuses(self.engine.store_path)
        again = {i: after[i] for i in begun if after[i] in ("QUEUED", "WAITING_FOR_DEPLOY")}
        assert not again, f"I1: runs whose body began, to run again on the next engine: {again}"
        return runs

    def describe(self) -> str:
        def dump() -> str:
            lines = []
            for r in self.engine.runs.values():
                attempts = [(a.id, a.status.value) for a in r.attempts]
                lines.append(f"{r.id} {r.status.value} prefetched={r.prefetched} {attempts}")
            for v in self.engine.dispatch.workers.values():
                lines.append(
                    f"view {v.id} ready={v.ready} dying={v.dying} frozen={v.frozen} "
                    f"attempt={v.attempt and v.attempt.id} "
                    f"ahead={[a.id for _, a in v.ahead]} taking_back={list(v.taking_back)}"
                )
            return "\n".join(lines)

        return "\n" + self.read(dump) + "\nrequests: " + repr(self.fake.requests[-40:])


def reopened_statuses(store_path: str) -> dict[str, str]:
    """Every run's status once a next engine took the store over (and settled it)."""
    engine = Engine(store_path, 1, FakeExecutor())
    try:
        return dict(engine.store.query("SELECT id, status FROM runs"))
    finally:
        engine.close()


@contextmanager
def harness(size: int, **kwargs: Any) -> Iterator[Harness]:
    h = Harness(size, **kwargs)
    try:
        yield h
    finally:
        h.close()


# -- the state machine ----------------------------------------------------------------------


def _free_body(w: FakeWorker) -> bool:
    """A body that can go on: return, write, call the engine."""
    return w.alive and w.body is not None and w.body.request is None


WORKER_ACTIONS: dict[str, Callable[[FakeWorker], bool]] = {  # and which workers they fit
    "deliver": lambda w: bool(w.pipe),
    "take_up": lambda w: w.booted and w.alive and w.body is None and bool(w.inbox),
    "finish": _free_body,
    "boot": lambda w: not w.booted and w.alive,
    "read_drop": lambda w: w.alive and bool(w.drops),
    "reap": lambda w: w.doomed and not w.exited,
    "call": _free_body,
    "chatter": _free_body,
    "die": lambda w: not w.exited,
    "oom": lambda w: w.alive and w.body is not None,
}
RUN_ACTIONS: dict[str, Callable[[RunState], bool]] = {  # and which live runs they fit
    "timeout": lambda r: r.attempt is not None and r.attempt.timer is not None,
    "ttl": lambda r: r.ttl_timer is not None,
    "backoff": lambda r: r.status is S.REATTEMPTING and r.timer is not None,
    "delay": lambda r: r.status is S.DELAYED and r.timer is not None,
    "reschedule": lambda r: r.status is S.DELAYED,
    "cancel": lambda r: r.status not in FINAL,
    "cancel_sent_ahead": lambda r: r.prefetched is not None,
    "cancel_executing": lambda r: r.status in (S.EXECUTING, S.FROZEN),
    "deploy": lambda r: r.status is S.WAITING_FOR_DEPLOY,
}
ACTIONS: dict[str, int] = {  # the base weight of every action
    "trigger": 2, "deliver": 8, "take_up": 4, "finish": 4, "boot": 2, "read_drop": 3,
    "reap": 2, "call": 2, "chatter": 1, "die": 1, "oom": 1, "answer_kill": 3, "timeout": 1,
    "ttl": 1, "backoff": 2, "delay": 1, "reschedule": 1, "cancel": 1, "cancel_sent_ahead": 2,
    "cancel_started": 2, "cancel_executing": 1, "deploy": 1,
}  # fmt: skip
OUTCOMES = ["completed", "completed", "completed", "failed", "aborted", "oom", "system_failure"]


class EngineModel(RuleBasedStateMachine):
    """Each step draws one of the things that can happen now (weighted), then its target."""

    h: Harness

    @initialize(
        size=st.integers(1, 3),
        boot_slots=st.integers(1, 2),
        sync_kill=st.booleans(),
        drain=st.sampled_from([True, True, True, False]),
        swarm=st.fixed_dictionaries({name: st.integers(0, 3) for name in ACTIONS}),
        pace=st.lists(st.integers(0, 3), min_size=4, max_size=4),
    )
    def open_engine(self, size: int, boot_slots: int, sync_kill: bool, drain: bool,
                    swarm: dict[str, int], pace: list[int]) -> None:  # fmt: skip
        self.h = Harness(size, boot_slots=boot_slots, sync_kill=sync_kill)
        self.drain = drain  # at the end: drain everything (I4), or shut the engine down
        # Swarm testing: each example weighs the actions its own way (some never happen),
        # so that races needing one kind of step to lag behind (say, events left
        # undelivered while workers go on) come up often enough.
        self.weights = {name: ACTIONS[name] * factor for name, factor in swarm.items()}
        self.weights["trigger"] = max(self.weights["trigger"], 1)
        # and how promptly the events of its first workers are read (0: last of all)
        self.pace = dict(enumerate(pace, start=1))

    def teardown(self) -> None:
        h = getattr(self, "h", None)
        if h is None:
            return
        try:
            if h.fake.violations or h.loop_errors or h.records.seen:
                return  # the failure is reported already
            if self.drain:
                h.drain_and_check()
                for (status,) in h.engine.store.query("SELECT status FROM runs"):
                    event(f"a run ends {status}")
            else:
                for status in h.shut_down_and_check().values():
                    event(f"a run is left {status} by a shutdown")
        finally:
            h.close()

    @invariant()
    def invariants(self) -> None:
        if getattr(self, "h", None) is not None:
            self.h.check()

    @rule(data=st.data())
    def step(self, data: st.DataObject) -> None:
        h, fake = self.h, self.h.fake
        w = self.weights
        choices: list[tuple[str, list[Any]]] = [("trigger", [None])] * w["trigger"]
        for name, pred in WORKER_ACTIONS.items():
            wids = fake.workers_where(pred)
            if wids:
                choices += [(name, wids)] * w[name]
        if fake.kills:
            choices += [("answer_kill", list(range(len(fake.kills))))] * w["answer_kill"]
        # runs whose attempt sent ahead started, but the engine has not heard yet
        unheard = sorted({b.run_id for b in fake.bodies() if b.attempt_id not in fake.heard})
        if unheard:
            choices += [("cancel_started", unheard)] * w["cancel_started"]

        def runs_by_action() -> dict[str, list[str]]:
            live = sorted(h.engine.runs.values(), key=lambda r: r.id)
            return {name: [r.id for r in live if pred(r)] for name, pred in RUN_ACTIONS.items()}

        for name, ids in h.read(runs_by_action).items():
            if ids:
                choices += [(name, ids)] * w[name]
        if not choices:
            choices = [("trigger", [None])]
        name, targets = data.draw(st.sampled_from(choices), label="action")
        event(f"action {name}")
        if name == "deliver":
            paced = [wid for wid in targets for _ in range(self.pace.get(wid, 2))]
            targets = paced or targets
        target = data.draw(st.sampled_from(targets), label="target")
        getattr(self, f"do_{name}")(data, target)

    # -- the outside world ------------------------------------------------------------------

    def do_trigger(self, data: st.DataObject, _: None) -> None:
        h = self.h
        n = data.draw(st.integers(1, 3), label="runs")
        queue = data.draw(st.sampled_from(list(QUEUES)), label="queue")
        max_attempts = data.draw(st.sampled_from([None, 1, 3]), label="max_attempts")
        ttl, timeout = data.draw(st.booleans(), label="ttl"), data.draw(st.booleans())
        delay = data.draw(st.sampled_from([False, False, False, True]), label="delay")
        task = data.draw(st.sampled_from([TASK, TASK, TASK, TASK, None]), label="task")
        key = data.draw(st.sampled_from([None, None, None, "k1", "k2"]), label="key")
        h.trigger(*(h.spec(task, queue, max_attempts, ttl, delay, timeout, key) for _ in range(n)))

    def do_cancel(self, data: st.DataObject, run_id: str) -> None:
        self.h.cancel(run_id)

    do_cancel_sent_ahead = do_cancel_started = do_cancel_executing = do_cancel

    def do_timeout(self, data: st.DataObject, run_id: str) -> None:
        self.h.fire(run_id, "timeout")

    def do_ttl(self, data: st.DataObject, run_id: str) -> None:
        self.h.fire(run_id, "ttl")

    def do_backoff(self, data: st.DataObject, run_id: str) -> None:
        self.h.fire(run_id, "backoff")

    def do_delay(self, data: st.DataObject, run_id: str) -> None:
        self.h.fire(run_id, "delay")

    def do_deploy(self, data: st.DataObject, run_id: str) -> None:
        self.h.deploy()

    def do_reschedule(self, data: st.DataObject, run_id: str) -> None:
        self.h.reschedule(run_id, data.draw(st.booleans(), label="to the past"))

    # -- the workers and the pool -----------------------------------------------------------

    def do_deliver(self, data: st.DataObject, wid: int) -> None:
        self.h.deliver(wid)

    def do_take_up(self, data: st.DataObject, wid: int) -> None:
        self.h.take_up(wid)

    def do_finish(self, data: st.DataObject, wid: int) -> None:
        self.h.finish(wid, data.draw(st.sampled_from(OUTCOMES), label="outcome"))
        w = self.h.fake.fleet[wid]
        if w.inbox and w.alive and data.draw(st.booleans(), label="and takes up the next"):
            self.h.take_up(wid)  # as a worker does when the next is there already

    def do_boot(self, data: st.DataObject, wid: int) -> None:
        self.h.boot(wid)

    def do_read_drop(self, data: st.DataObject, wid: int) -> None:
        self.h.read_drop(wid)

    def do_reap(self, data: st.DataObject, wid: int) -> None:
        self.h.reap(wid)

    def do_die(self, data: st.DataObject, wid: int) -> None:
        self.h.on_loop(self.h.fake.die, wid, data.draw(st.sampled_from([9, None])))

    def do_oom(self, data: st.DataObject, wid: int) -> None:
        self.h.on_loop(self.h.fake.out_of_memory, wid)

    def do_chatter(self, data: st.DataObject, wid: int) -> None:
        self.h.on_loop(self.h.fake.chatter, wid, data.draw(st.integers(0, 2), label="kind"))

    def do_answer_kill(self, data: st.DataObject, index: int) -> None:
        self.h.answer_kill(index)

    def do_call(self, data: st.DataObject, wid: int) -> None:
        """Task code calls the engine: triggers children (and waits on them), waits on
        later runs (or on one that does not exist), reads or cancels a run (its own,
        say)."""
        h = self.h
        body = h.fake.fleet[wid].body
        assert body is not None
        ops = ["submit-wait", "submit-wait", "submit", "wait", "retrieve", "cancel"]
        op = data.draw(st.sampled_from(ops), label="op")
        known = h.triggered + h.children
        later = [i for i in known if i > body.run_id]  # no cycle of waits: never deadlocks
        if not later or data.draw(st.integers(0, 3), label="a run that does not exist") == 0:
            later.append("run_unknown")
        if op == "wait":
            ids = data.draw(st.lists(st.sampled_from(later), min_size=1, max_size=2))
            h.on_loop(h.fake.call, wid, "wait", (tuple(ids),), True)
        elif op in ("retrieve", "cancel"):
            target = data.draw(st.sampled_from([body.run_id, *known, "run_unknown"]))
            h.on_loop(h.fake.call, wid, op, (target,), False)
        else:
            queue = data.draw(st.sampled_from(list(QUEUES)), label="queue")
            task = data.draw(st.sampled_from([CHILD, CHILD, CHILD, None]), label="task")
            specs = [h.spec(task, queue) for _ in range(data.draw(st.integers(1, 2)))]
            h.children.extend(s.id for s in specs)
            wait = op == "submit-wait"
            h.on_loop(h.fake.call, wid, "submit", (specs, wait), wait)


# A failing example takes minutes to shrink (each replay opens an engine): more than the
# suite's 120 s per test, which would cut the report off.
TestEngineModel = pytest.mark.timeout(600)(EngineModel.TestCase)
TestEngineModel.settings = settings(
    max_examples=int(os.environ.get("NBTASKS_MODEL_EXAMPLES", "100")),
    stateful_step_count=30,
    deadline=None,
    database=None,
    suppress_health_check=[
        HealthCheck.too_slow,
        HealthCheck.filter_too_much,
        HealthCheck.data_too_large,
        HealthCheck.large_base_example,
    ],
)


# -- specific races, step by step ---------------------------------------------------------------


def _two_runs_one_ahead(h: Harness) -> tuple[int, str, str]:
    """One worker: the first run starts on it, the second is sent ahead to it."""
    r1, r2 = h.trigger(h.spec(), h.spec())
    (w1,) = h.fake.fleet
    h.ready_worker(w1)
    assert [r[0] for r in h.fake.requests if r[0] == "start"] == ["start", "start"]
    assert h.fake.sent_to[h.fake.by_run[r1][0]] == (w1, False)
    assert h.fake.sent_to[h.fake.by_run[r2][0]] == (w1, True)
    return w1, r1, r2


def _statuses(h: Harness) -> dict[str, str]:
    h.quiesce()
    return dict(h.engine.store.query("SELECT id, status FROM runs"))


def test_canceled_while_sent_ahead_and_already_started() -> None:
    """(a) A run sent ahead is canceled while its worker had started it already: the
    engine kills that attempt, and never starts the run anywhere else."""
    with harness(1) as h:
        w1, r1, r2 = _two_runs_one_ahead(h)
        (a2,) = h.fake.by_run[r2]
        assert h.take_up(w1) == h.fake.by_run[r1][0]
        h.finish(w1)
        assert h.take_up(w1) == a2  # Finished(r1), Started(r2) are on their way
        h.cancel(r2)  # the engine still thinks r2 is QUEUED, sent ahead
        assert ("take_back", w1, a2) in h.fake.requests
        h.deliver_all(w1)  # Finished(r1), then Started(r2): r2 is canceled, kill it
        assert [k.attempt_id for k in h.fake.kills] == [a2]
        assert h.read_drop(w1) is False  # it had started: no Dropped
        h.answer_kill()
        assert h.fake.kill_log == [(w1, a2, True)]
        h.reap(w1)
        h.deliver_all(w1)
        h.check()
        h.drain_and_check()
        assert h.fake.by_run[r2] == [a2]  # never sent anywhere else
        assert _statuses(h) == {r1: "COMPLETED", r2: "CANCELED"}


def test_reclaimed_run_answered_started_is_not_started_twice() -> None:
    """(b) An idle worker reclaims a run sent ahead to a busy one, but the busy worker
    had taken it up already (answered Started): it runs there, once."""
    with harness(2, boot_slots=1) as h:
        r1, r2 = h.trigger(h.spec(), h.spec())
        (w1,) = h.fake.fleet  # one boots at a time
        h.ready_worker(w1)
        (a2,) = h.fake.by_run[r2]
        assert h.fake.sent_to[a2] == (w1, True)
        (w2,) = [w for w in h.fake.fleet if w != w1]
        h.take_up(w1)
        h.finish(w1)
        assert h.take_up(w1) == a2
        h.ready_worker(w2)  # idle, nothing queued: take r2 back from w1
        assert ("take_back", w1, a2) in h.fake.requests
        assert h.read_drop(w1) is False
        h.deliver_all(w1)  # Finished(r1), Started(r2)
        h.check()
        h.drain_and_check()
        assert h.fake.by_run[r2] == [a2]
        assert h.fake.taken_up.count(a2) == 1
        assert not h.fake.kill_log
        assert _statuses(h) == {r1: "COMPLETED", r2: "COMPLETED"}


def test_kill_of_an_ended_attempt_spares_the_next_one() -> None:
    """(c) A kill answered killed=False (the attempt had ended) leaves the worker going on:
    the attempt it took up next is not killed, and its run completes there."""
    with harness(1) as h:
        w1, r1, r2 = _two_runs_one_ahead(h)
        (a1,), (a2,) = h.fake.by_run[r1], h.fake.by_run[r2]
        h.take_up(w1)
        h.finish(w1)  # r1's body ended, its Finished is on the way
        assert h.take_up(w1) == a2  # and r2's started
        h.cancel(r1)  # the engine still thinks r1 executes: kill it
        assert [k.attempt_id for k in h.fake.kills] == [a1]
        h.answer_kill()
        assert h.fake.kill_log == [(w1, a1, False)]
        assert not h.fake.fleet[w1].doomed
        h.deliver_all(w1)  # Finished(r1) after r1 was canceled, then Started(r2)
        h.check()
        h.drain_and_check()
        assert [k[1] for k in h.fake.kill_log] == [a1]
        assert _statuses(h) == {r1: "CANCELED", r2: "COMPLETED"}


def test_worker_lost_with_runs_sent_ahead() -> None:
    """(d) A worker dies with runs sent ahead: they never started; each is requeued once,
    and runs once, elsewhere."""
    with harness(2) as h:
        r1, r2, r3, r4 = h.trigger(*(h.spec(max_attempts=1) for _ in range(4)))
        w1, w2 = sorted(h.fake.fleet)
        h.ready_worker(w1)
        h.ready_worker(w2)
        ahead = {h.fake.specs[a].run_id: h.fake.sent_to[a] for a in h.fake.specs}
        assert sorted(w for w, is_ahead in ahead.values() if is_ahead) == [w1, w2]
        on_w1 = [r for r, (w, is_ahead) in ahead.items() if w == w1 and is_ahead]
        (lost_ahead,) = on_w1
        h.take_up(w1)
        h.die(w1)
        h.deliver_all(w1)
        h.check()
        h.drain_and_check()
        statuses = _statuses(h)
        crashed = [r for r in (r1, r2, r3, r4) if statuses[r] == "CRASHED"]
        assert len(crashed) == 1 and crashed[0] != lost_ahead
        assert statuses[lost_ahead] == "COMPLETED"
        attempts = h.fake.by_run[lost_ahead]
        assert len(attempts) == 2  # sent ahead to w1, then sent once more
        assert h.fake.sent_to[attempts[1]][0] != w1
        assert [a for a in h.fake.taken_up if a in attempts] == [attempts[1]]


@pytest.mark.parametrize("sync_kill", [False, True])
def test_timeout_of_a_frozen_parent(sync_kill: bool) -> None:
    """A parent frozen on its child times out: the child is canceled, the parent's worker
    torn down; the spare worker runs on."""
    with harness(1, sync_kill=sync_kill) as h:
        (parent,) = h.trigger(h.spec(timeout=True))
        (w1,) = h.fake.fleet
        h.ready_worker(w1)
        h.take_up(w1)
        child = h.spec(CHILD)
        h.children.append(child.id)
        h.on_loop(h.fake.call, w1, "submit", ([child], True), True)
        h.deliver_all(w1)
        assert h.read(lambda: h.engine.runs[parent].status) is S.FROZEN
        h.fire(parent, "timeout")
        h.check()
        h.drain_and_check()
        assert _statuses(h) == {parent: "TIMED_OUT", child.id: "CANCELED"}


def test_capacity_held_between_finished_and_started() -> None:
    """(e) A worker's attempt ended (Finished read) and it took up the run sent ahead, whose
    Started is not read yet: that worker still holds its capacity, so a new trigger starts
    no spare worker, and no other body runs meanwhile."""
    with harness(1) as h:
        w1, _, r2 = _two_runs_one_ahead(h)
        h.take_up(w1)
        h.finish(w1)
        assert h.take_up(w1) == h.fake.by_run[r2][0]
        h.deliver(w1)  # Finished(r1); Started(r2) is on its way
        (r3,) = h.trigger(h.spec())
        for wid in [w for w in h.fake.fleet if w != w1]:
            h.ready_worker(wid)
            if h.fake.fleet[wid].inbox:
                h.take_up(wid)
        h.check()
        h.drain_and_check()
        assert _statuses(h) == {h.triggered[0]: "COMPLETED", r2: "COMPLETED", r3: "COMPLETED"}


def test_thawed_parent_waits_for_capacity() -> None:
    """(f) A parent frozen on its child gives its capacity up to a spare worker; once the
    child is done, the parent resumes only when capacity is free again (not while the
    spare worker runs another run)."""
    with harness(1) as h:
        h.trigger(h.spec())
        (w1,) = h.fake.fleet
        h.ready_worker(w1)
        h.take_up(w1)
        child = h.spec(CHILD)
        h.children.append(child.id)
        request = h.on_loop(h.fake.call, w1, "submit", ([child], True), True)
        h.deliver_all(w1)  # the parent is FROZEN, a spare worker boots
        if h.fake.fleet[w1].drops:  # the child was sent ahead to w1: it comes back
            assert h.read_drop(w1)
            h.deliver_all(w1)
        (other,) = h.trigger(h.spec())
        (w2,) = [w for w in h.fake.fleet if w != w1]
        h.ready_worker(w2)  # the child starts there, the other run is sent ahead
        assert h.take_up(w2) == h.fake.by_run[child.id][-1]
        h.finish(w2)
        assert h.take_up(w2) == h.fake.by_run[other][0]
        h.deliver(w2)  # Finished(child): the parent may resume, but w2 holds capacity
        h.check()
        assert (w1, request) not in h.fake.replied
        h.deliver(w2)  # Started(other)
        h.check()
        assert (w1, request) not in h.fake.replied
        h.finish(w2)
        h.deliver_all(w2)  # the other run is done: now the parent resumes
        assert (w1, request) in h.fake.replied
        h.check()
        h.drain_and_check()
        assert set(_statuses(h).values()) == {"COMPLETED"}


def test_out_of_memory_reported_before_started() -> None:
    """The pool's memory sampling can catch an attempt sent ahead before the kernel read
    its Started (pool events do not wait for the worker's pipe): the run still ends
    CRASHED for its memory, and is not retried."""
    with harness(1) as h:
        _, r2 = h.trigger(h.spec(max_attempts=3), h.spec(max_attempts=3))
        (w1,) = h.fake.fleet
        h.ready_worker(w1)
        h.take_up(w1)
        h.finish(w1)
        assert h.take_up(w1) == h.fake.by_run[r2][0]  # Started(r2) is on its way
        h.on_loop(h.fake.out_of_memory, w1)  # sampled past its limit: torn down
        h.reap(w1)
        h.deliver_all(w1)  # Finished(r1), Started(r2), WorkerLost
        h.check()
        h.drain_and_check()
        assert _statuses(h)[r2] == "CRASHED"
        assert len(h.fake.by_run[r2]) == 1


def test_a_run_created_with_a_worker_idle_is_handed_over_before_any_commit() -> None:
    """A trigger finding a worker idle hands its run over in the same step, before the
    commit of its creation (which holds its start too): no commit can hold the run without
    its start. One created earlier waits for its claim's commit."""
    with harness(1) as h:
        handed: dict[str, bool] = {}
        check = h.fake.on_start

        def on_start(spec: AttemptSpec) -> None:
            check(spec)
            handed[spec.run_id] = h.engine.store.created_in_open_batch(spec.run_id)

        h.fake.on_start = on_start
        (r0,) = h.trigger(h.spec())  # no worker yet: it waits, committed, for one
        (w1,) = h.fake.fleet
        h.ready_worker(w1)
        h.take_up(w1)
        h.finish(w1)
        h.deliver(w1)  # Finished(r0): the worker is idle
        (r1,) = h.trigger(h.spec())
        assert handed == {r0: False, r1: True}
        h.engine.close()
        assert reopened_statuses(h.engine.store_path)[r1] == "INTERRUPTED"


def test_a_run_sent_ahead_never_runs_again_on_the_next_engine() -> None:
    """A run handed ahead to a busy worker may begin without the engine hearing it before
    it stops: the next engine ends it INTERRUPTED, with its attempt, rather than start it
    again."""
    with harness(1) as h:
        r1, r2 = h.trigger(h.spec(), h.spec())
        (w1,) = h.fake.fleet
        h.ready_worker(w1)
        h.take_up(w1)  # r1 executes; r2 is sent ahead
        assert h.fake.sent_to[h.fake.by_run[r2][0]] == (w1, True)
        h.finish(w1)
        h.deliver(w1)  # Finished(r1)
        assert h.take_up(w1) == h.fake.by_run[r2][0]  # r2 begins; its Started is not heard
        path = h.engine.store_path
        h.engine.close()
        assert reopened_statuses(path) == {r1: "COMPLETED", r2: "INTERRUPTED"}
        store = Store(path, lambda ticket, error: None)
        try:
            events = store.query(
                'SELECT status, attempt_number FROM run_events WHERE run_id = ? ORDER BY "at"',
                [r2],
            )
            attempts = store.query("SELECT number, status FROM attempts WHERE run_id = ?", [r2])
        finally:
            store.close()
        assert events[-2:] == [("EXECUTING", 1), ("INTERRUPTED", 1)]
        assert attempts == [(1, "INTERRUPTED")]
