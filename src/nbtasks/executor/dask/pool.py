"""The kernel's side of the Dask executor: each nbtasks worker is a runner (``runner.py``),
a long-lived Dask task that hosts a local worker process on a Dask worker's machine.

The engine decides everything (what runs, where, when, queues and concurrency limits across
the whole cluster, retries, idempotency, delays, TTL); Dask only places runners on its
workers. Requests go to a runner as one message per step of the engine's loop, sent in
order from the Dask client's loop; events come back on one topic, and are handed to the
engine's loop.

A runner is lost when its Dask future ends without the runner saying so itself: its Dask
worker died (``KilledWorker``: the scheduler's ``allowed-failures`` is set to 0 so that Dask
never runs a runner again behind the engine's back), or the scheduler went away. Either way
the engine hears ``WorkerLost`` with the cause, and the attempt ends CRASHED by the usual
rules. A runner that shows up a second time (a scheduler that re-ran it anyway) is lost
too, and told to stop.
"""

from __future__ import annotations

import itertools
import os
import pickle
import sys
import threading
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from nbtasks.core.errors import NbtasksError
from nbtasks.executor import base as E
from nbtasks.executor.dask.runner import PROBE, encode, event_topic, request_topic, serve

if TYPE_CHECKING:
    import asyncio

SUBSCRIBE_TIMEOUT_S = 10.0
BIG = 1 << 20  # a payload or output this big travels as Dask data, not in an event
WATCH_EVERY_S = 0.25  # how often a pool whose scheduler went away tries it again
WORKERS_EVERY_S = 1.0  # how often the cluster's workers (and their resources) are read


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


class DaskPool:
    """Runs attempts in runners on a Dask cluster (one per engine)."""

    # reported by the local worker on the Dask worker's machine (the pid is of that machine)
    capabilities = frozenset({"pid", "exit_code", "signal"})
    accepts_resources = True  # Dask places a runner on a worker with its resources
    # Through the scheduler both ways: a few ms, but stalls of 35-180 ms on a loaded machine
    # left runners idle with 20 ms of runs ahead of them (W3: a gap of 0.03-0.1 s per
    # worker); with 50 ms, their gaps between attempts add up as a local worker's do.
    round_trip_s = 0.05

    def __init__(self, client: Any, owned: bool, preload: tuple[str, ...] = (),
                 size_hint: int = 1) -> None:  # fmt: skip
        self.client = client
        self.owned = owned  # made from an address: closed with the pool
        self.address = str(client.scheduler.address)
        self.preload = preload
        self.path, self.cwd = list(sys.path), os.getcwd()
        self.size_hint = size_hint
        self.session = os.urandom(6).hex()
        self.runners: dict[E.WorkerId, Runner] = {}
        self._ids = itertools.count(1)
        self._flushing = False
        self._closed = False
        self._watching = False  # connecting again in a thread
        self.connection: Any = None  # the scheduler comm the subscription is on
        # the cluster's workers as last read (address -> info), refreshed on the client's loop
        self.cluster: dict[str, Any] = dict(client.scheduler_info()["workers"])
        # the client loop's: messages to send, and the big payloads held until read
        self._wire: dict[E.WorkerId, list[tuple[bytes, dict[str, bytes], str | None]]] = {}
        self._scattered: dict[str, Any] = {}
        self._sending: set[E.WorkerId] = set()
        self.loop: asyncio.AbstractEventLoop
        self.sink: E.Sink

    # -- the connection ------------------------------------------------------------------------

    def open(self, loop: asyncio.AbstractEventLoop, sink: E.Sink) -> list[E.WorkerId]:
        self.loop, self.sink = loop, sink
        if self.client.status != "running":
            raise self._unreachable()
        self._subscribe()
        self.client.loop.add_callback(self._read_workers)
        return []

    async def _read_workers(self) -> None:
        """On the Dask client's loop, while the pool is open: the cluster's workers, for
        placing runners (``room_for``, ``_plain_workers``) without a call on the engine's
        loop."""
        import asyncio

        while not self._closed:
            try:
                info = await self.client.scheduler.identity(n_workers=-1)
                self.cluster = dict(info["workers"])
            except Exception:  # away for now: the last known stays
                pass
            await asyncio.sleep(WORKERS_EVERY_S)

    def _subscribe(self) -> None:
        """Subscribe to the runners' events on the client's present connection, and wait
        until a probe comes back: from then on, nothing a runner says is missed."""
        client, loop = self.client, self.loop
        comm = client.scheduler_comm
        got = threading.Event()

        def on_event(event: tuple[float, Any]) -> None:  # on the Dask client's loop
            msg = event[1]
            if msg == PROBE:
                got.set()
            elif not self._closed:
                loop.call_soon_threadsafe(self._deliver, msg[0], msg[1])

        topic = event_topic(self.session)
        client.subscribe_topic(topic, on_event)
        waited = 0.0
        while not got.wait(0.02):
            waited += 0.02
            if waited > SUBSCRIBE_TIMEOUT_S:
                raise self._unreachable("it does not answer")
            client.log_event(topic, PROBE)
        try:  # Dask must never run a runner again by itself (it would run its attempt twice)
            client.run_on_scheduler(_no_silent_retries)
        except Exception:  # a scheduler that refuses: lost runners are seen anyway
            pass
        self.connection = comm

    def _connected(self) -> bool:
        client = self.client
        comm = client.scheduler_comm
        inner = getattr(comm, "comm", None)
        return (client.status == "running" and comm is self.connection and inner is not None
                and not inner.closed())  # fmt: skip

    def _unreachable(self, why: str = "") -> NbtasksError:
        why = why or f"the client is {self.client.status}"
        return NbtasksError(f"the Dask scheduler at {self.address} cannot be reached ({why})")

    def check(self) -> None:
        if not self._connected():
            self._watch()
            raise NbtasksError(f"{self._unreachable()}: no run was made")

    def _watch(self) -> None:
        """While the scheduler is away: connect again (a client of the pool's own is made
        anew once Dask gave up on it), subscribe again, then submit the runners the engine
        asked for meanwhile. Runs wait QUEUED until then."""
        if self._closed or self._watching:
            return
        if self._connected():
            for runner in list(self.runners.values()):
                if runner.future is None and not runner.lost:
                    self._submit(runner)
            return
        self._watching = True

        def reconnect() -> None:
            try:
                if self.owned and self.client.status in ("closing", "closed", "failed"):
                    from distributed import Client

                    client = Client(self.address, timeout=2, set_as_default=False)
                    if self._closed:  # the engine closed meanwhile: nobody would close it
                        client.close()
                        return
                    self.client = client
                    self.client.loop.add_callback(self._read_workers)
                if self.client.status == "running":
                    self._subscribe()
            except Exception:  # still away: try again in a while
                pass
            finally:
                self._watching = False
                try:
                    if not self._closed:
                        self.loop.call_soon_threadsafe(self.loop.call_later, WATCH_EVERY_S,
                                                       self._watch)  # fmt: skip
                except RuntimeError:  # the engine's loop closed meanwhile
                    pass

        threading.Thread(target=reconnect, name="nbtasks-dask-reconnect", daemon=True).start()

    def boot_slots(self) -> int:
        return max(1, self.size_hint)  # runners boot on the cluster's machines, in parallel

    def _plain_workers(self) -> list[str] | None:
        """Where a runner that needs no resources goes: to Dask workers that declare none,
        while there are any, so that it never holds the thread of a worker a run that
        needs its resources waits for; else anywhere."""
        workers = self.cluster
        plain = [address for address, w in workers.items() if not w.get("resources")]
        return plain if plain and len(plain) < len(workers) else None

    def room_for(self, resources: dict[str, float]) -> int:
        """How many runners needing ``resources`` the cluster's workers hold at once, as
        the client last heard (a runner holds its resources while it lives)."""
        room = 0
        for w in self.cluster.values():
            has = w.get("resources") or {}
            room += min(int(has.get(name, 0) // amount) for name, amount in resources.items())
        return room

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

    def close(self) -> None:
        """Stop every runner (each kills its worker's tree) and let go of their futures."""
        runners = list(self.runners.values())
        for runner in runners:
            runner.outbox = [("stop",)]
            self._flush_one(runner)
        self._closed = True
        self.runners.clear()
        try:
            self.client.cancel([r.future for r in runners if r.future is not None])
        except Exception:
            pass
        if self.owned:
            try:
                self.client.close(timeout=2)
            except Exception:
                pass

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


def _no_silent_retries(dask_scheduler: Any) -> None:
    dask_scheduler.allowed_failures = 0
