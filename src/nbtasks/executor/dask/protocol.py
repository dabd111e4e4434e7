"""The kernel's side of the runner protocol: what the kernel knows of each runner
(``Runner``), starting runners as Dask futures, the engine's requests sent to a runner as
one numbered message per loop step on its topic (big payloads scattered to its worker as
Dask data first), the runners' events taken back in order (big outputs fetched as Dask
data), and a runner lost when its Dask future ends. The runner's side is ``runner.py``.

A mixin of ``DaskPool`` (``pool.py``).
"""

from __future__ import annotations

import pickle
import threading
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from nbtasks.executor import base as E
from nbtasks.executor.dask.runner import encode, request_topic, serve

if TYPE_CHECKING:
    from nbtasks.executor.dask.pool import PoolBase as _Base
else:
    _Base = object

BIG = 1 << 20  # a payload or output this big travels as Dask data, not in an event


@dataclass(eq=False)
class Runner:
    """What the kernel knows of one runner."""

    id: E.WorkerId
    topic: str
    resources: dict[str, float] | None = None
    future: Any = None  # its distributed.Future, once submitted (Dask is not typed)
    where: str | None = None  # its Dask worker's address, once it says
    loaded: set[str] = field(default_factory=set)  # function keys it holds
    outbox: list[Any] = field(default_factory=list)  # requests of this loop step
    killing: set[str] = field(default_factory=set)  # kills not answered yet
    big: dict[str, bytes] = field(default_factory=dict)  # payloads to scatter, by key
    backlog: list[bytes] | None = None  # events that wait while a big output is fetched
    sent: int = 0  # messages sent to it, numbered; the last heard from it, and early ones
    heard: int = 0
    early: dict[int, list[Any]] = field(default_factory=dict)
    lost: bool = False


class ProtocolMixin(_Base):
    # -- requests ------------------------------------------------------------------------------

    def spawn(self, resources: dict[str, float] | None = None) -> E.WorkerId:
        wid = next(self._ids)
        runner = self.runners[wid] = Runner(wid, request_topic(self.session, wid), resources)
        if self._connected():
            self._submit(runner)
        else:
            self._watch()  # submitted once the scheduler is back
        return wid

    def _submit(self, runner: Runner) -> None:
        wid = runner.id
        runner.future = future = self.client.submit(
            serve, self.session, wid, self.preload, self.path, self.cwd,
            key=f"nbtasks-runner-{self.session}-{wid}", pure=False, resources=runner.resources,
            workers=None if runner.resources else self._plain_workers(),
        )  # fmt: skip
        future.add_done_callback(lambda f: self._future_done(wid, f))

    def start(self, worker: E.WorkerId, attempt: E.AttemptSpec, ahead: bool = False) -> None:
        runner = self.runners[worker]
        if attempt.fn_key in runner.loaded:
            attempt = attempt._replace(fn_bytes=b"")  # it holds the function: not again
        runner.loaded.add(attempt.fn_key)
        if len(attempt.payload) < BIG:
            self._send(runner, ("start", attempt, ahead, None))
            return
        # A big payload goes to the runner's Dask worker as Dask data (straight to it when
        # the client can reach it), not through the scheduler's event log: sent before
        # the request that names it, held until the runner says it has read it.
        key = f"nbtasks-payload-{attempt.attempt_id}"
        runner.big[key] = attempt.payload
        self._send(runner, ("start", attempt._replace(payload=b""), ahead, key))

    def take_back(self, worker: E.WorkerId, attempt_id: str) -> None:
        self._send(self.runners[worker], ("take_back", attempt_id))

    def kill(self, worker: E.WorkerId, attempt_id: str) -> None:
        runner = self.runners.get(worker)
        if runner is None or runner.lost:
            self.sink(E.KillDone(worker, attempt_id, killed=True))  # WorkerLost came
            return
        runner.killing.add(attempt_id)
        self._send(runner, ("kill", attempt_id))

    def reply(self, worker: E.WorkerId, request_id: int, ok: bool, value: Any) -> None:
        try:
            data = pickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL)
        except Exception as exc:
            ok, data = False, pickle.dumps(RuntimeError(f"{type(value).__name__}: {exc}"))
        runner = self.runners.get(worker)
        if runner is not None:
            self._send(runner, ("reply", request_id, ok, data))

    def frozen(self, worker: E.WorkerId, frozen: bool) -> None:
        runner = self.runners.get(worker)
        if runner is not None:
            self._send(runner, ("frozen", frozen))

    def retire(self, worker: E.WorkerId) -> None:
        self._send(self.runners[worker], ("retire",))

    # -- the wire ------------------------------------------------------------------------------

    def _send(self, runner: Runner, request: tuple[Any, ...]) -> None:
        """Requests of one loop step go to a runner as one message, once the step is over."""
        if runner.lost:
            return
        runner.outbox.append(request)
        if not self._flushing:
            self._flushing = True
            self.loop.call_soon(self._flush)

    def _flush(self) -> None:
        self._flushing = False
        batches = []
        for runner in self.runners.values():
            if runner.outbox:
                runner.sent += 1
                batches.append((runner.id, runner.topic, encode([runner.sent, runner.outbox]),
                                runner.big, runner.where))  # fmt: skip
                runner.outbox, runner.big = [], {}
        if batches and not self._closed:
            self.client.loop.add_callback(self._post, batches)

    async def _post(self, batches: list[tuple[E.WorkerId, str, bytes, dict[str, bytes],
                                              str | None]]) -> None:  # fmt: skip
        """On the Dask client's loop: publish each runner's messages in order, the big
        payloads they name scattered to its worker first."""
        for wid, topic, blob, big, where in batches:
            self._wire.setdefault(wid, []).append((blob, big, where))
            if wid in self._sending:
                continue
            self._sending.add(wid)
            try:
                while self._wire.get(wid):
                    queued, self._wire[wid] = self._wire[wid], []
                    for b, data, at in queued:
                        if data:
                            futures = await self.client.scatter(
                                data, workers=[at] if at else None, hash=False,
                                asynchronous=True,
                            )  # fmt: skip
                            self._scattered.update(futures)
                        await self.client.scheduler.log_event(topic=topic, msg=b)
            except Exception:
                self._wire.pop(wid, None)
            finally:
                self._sending.discard(wid)

    # -- what comes back -----------------------------------------------------------------------

    def _deliver(self, wid: E.WorkerId, blob: bytes) -> None:
        runner = self.runners.get(wid)
        if runner is None or runner.lost:
            return
        if runner.backlog is not None:  # a big output is on its way: in order, after it
            runner.backlog.append(blob)
            return
        seq, events = pickle.loads(blob)
        if seq != runner.heard + 1:  # Dask does not keep them in order: put them back in it
            runner.early[seq] = events
            return
        runner.heard = seq
        self._take(runner, events)
        self._drain(runner)

    def _drain(self, runner: Runner) -> None:
        """Take the messages that came early, now in order (unless a fetch is on)."""
        while runner.heard + 1 in runner.early and runner.backlog is None and not runner.lost:
            runner.heard += 1
            self._take(runner, runner.early.pop(runner.heard))

    def _take(self, runner: Runner, events: list[Any]) -> None:
        refs = [e[1] for e in events if isinstance(e, tuple) and e and e[0] == "output"]
        if refs:
            runner.backlog = []
            threading.Thread(target=self._fetch, args=(runner, events, refs), daemon=True,
                             name="nbtasks-dask-output").start()  # fmt: skip
            return
        self._events(runner, events)

    def _fetch(self, runner: Runner, events: list[Any], keys: list[str]) -> None:
        """In a thread of its own: get the big outputs a runner holds as Dask data, then
        hand its events (and what came meanwhile) to the engine's loop."""
        from distributed import Future

        outputs: dict[str, Any] = {}
        for key in keys:
            try:
                # as distributed's own queues hand a future to another client: "memory"
                held: Any = Future(key, self.client, state="memory")  # type: ignore[arg-type]
                outputs[key] = held.result(timeout=300)
            except Exception as exc:
                outputs[key] = exc
        self.loop.call_soon_threadsafe(self._fetched, runner, events, outputs)

    def _fetched(self, runner: Runner, events: list[Any], outputs: dict[str, Any]) -> None:
        backlog, runner.backlog = runner.backlog or [], None
        filled = []
        for event in events:
            key = f"nbtasks-output-{getattr(event, 'attempt_id', '')}"
            if isinstance(event, E.Finished) and key in outputs:
                got = outputs[key]
                if isinstance(got, bytes):
                    event = event._replace(output=got)
                else:
                    event = event._replace(outcome="system_failure", error={
                        "type": "OutputLost", "traceback": "",
                        "message": f"the output could not be fetched from Dask: {got!r}",
                    })  # fmt: skip
            filled.append(event)
        if runner.lost:
            return
        self._events(runner, filled)
        self._send(runner, ("release", sorted(outputs)))
        for blob in backlog:
            self._deliver(runner.id, blob)
        self._drain(runner)

    def _events(self, runner: Runner, events: list[Any]) -> None:
        sink, wid = self.sink, runner.id
        for event in events:
            if isinstance(event, tuple) and event and event[0] in ("read", "output"):
                if event[0] == "read":  # the runner has read a big payload: let it go
                    self.client.loop.add_callback(self._unscatter, event[1])
                continue
            if isinstance(event, tuple) and event and event[0] == "at":
                if runner.where is not None:  # run a second time: its first life is over
                    self._lose(runner, f"the runner on Dask worker {runner.where} was lost")
                    return
                runner.where = event[1]
                continue
            if isinstance(event, E.Call):
                event = event._replace(args=tuple(pickle.loads(event.args)))  # type: ignore[arg-type]
            elif isinstance(event, E.KillDone):
                runner.killing.discard(event.attempt_id)
            elif isinstance(event, E.WorkerLost):
                runner.lost = True
                del self.runners[wid]
                for attempt_id in sorted(runner.killing):  # every kill is answered
                    sink(E.KillDone(wid, attempt_id, killed=True))
            sink(event)

    def _future_done(self, wid: E.WorkerId, future: Any) -> None:
        """In a callback thread of the Dask client: why the runner's task ended."""
        status = future.status
        if status == "error":
            try:
                exc = future.exception(timeout=5)
                cause = f"{type(exc).__name__}: {exc}"
            except Exception as exc:
                cause = f"{type(exc).__name__}: {exc}"
        elif status == "cancelled" and self.client.status != "running":
            cause = f"the connection to the Dask scheduler at {self.address} was lost"
        elif status == "cancelled":
            cause = "Dask canceled its task"
        else:
            cause = "the runner ended"
        if not self._closed:
            try:
                self.loop.call_soon_threadsafe(self._future_ended, wid, cause)
            except RuntimeError:  # the engine's loop closed meanwhile: nothing to tell
                pass

    def _future_ended(self, wid: E.WorkerId, cause: str) -> None:
        runner = self.runners.get(wid)
        if runner is not None and not runner.lost:
            where = f" on Dask worker {runner.where}" if runner.where else ""
            self._lose(runner, f"the nbtasks worker{where} was lost: {cause}")
        if not self._connected():
            self._watch()

    async def _unscatter(self, key: str) -> None:
        future = self._scattered.pop(key, None)
        if future is not None:
            future.release()

    def _lose(self, runner: Runner, cause: str) -> None:
        runner.outbox = [("stop",)]
        self._flush_one(runner)
        runner.lost = True
        self.runners.pop(runner.id, None)
        try:
            if runner.future is not None:
                self.client.cancel([runner.future])
        except Exception:
            pass
        for attempt_id in sorted(runner.killing):  # every kill is answered
            self.sink(E.KillDone(runner.id, attempt_id, killed=True))
        self.sink(E.WorkerLost(runner.id, None, None, cause))

    def _flush_one(self, runner: Runner) -> None:
        if runner.outbox and not self._closed:
            runner.sent += 1
            batch = [(runner.id, runner.topic, encode([runner.sent, runner.outbox]), runner.big,
                      runner.where)]  # fmt: skip
            runner.outbox, runner.big = [], {}
            self.client.loop.add_callback(self._post, batch)
