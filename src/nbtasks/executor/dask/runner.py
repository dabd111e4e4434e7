"""The Dask side: a runner, one long-lived Dask task per nbtasks worker, that hosts a local
worker process on the Dask worker's machine and relays between it and the kernel.

The runner is the local executor (``executor.local.pool``) with one worker, on a loop of
its own: every guarantee of a local worker holds on the cluster as written there (kills
that hit only their attempt, the whole process tree gone on a kill or timeout, memory
limits measured from outside the attempt, exit codes and signals), because it is the
same code. What differs is only how requests and events travel:

- kernel -> runner: ``log_event`` on the runner's own topic, which the Dask worker's client
  is subscribed to (``request_topic``); each message is a pickled list of requests.
- runner -> kernel: ``Worker.log_event`` on the kernel's topic (``event_topic``), a pickled
  list of the executor events of one step of the runner's loop.

The Dask task's own thread only watches: the runner ends when its local worker is gone,
when the kernel lets its Dask future go (a closed or killed kernel, a canceled future:
Dask cannot stop a running task, so the runner stops itself), or when the Dask worker's
client loses the scheduler. While its attempt is FROZEN the task secedes from the Dask
worker's thread pool, so that the spare runner started for the children finds a slot
(deep nesting never deadlocks the cluster), and rejoins once it thaws.
"""

from __future__ import annotations

import asyncio
import pickle
import threading
from typing import Any

from nbtasks.executor import base as E
from nbtasks.executor.local.pool import LocalExecutor

PROBE = "probe"  # a message that only proves a subscription is in place
BIG = 1 << 20  # an output this big goes to the kernel as Dask data, not in an event
WATCH_EVERY_S = 0.05  # how often the task's thread checks that it is still wanted


def request_topic(session: str, worker: int) -> str:
    return f"nbtasks-{session}-w{worker}"


def event_topic(session: str) -> str:
    return f"nbtasks-{session}-events"


def encode(items: list[Any]) -> bytes:
    return pickle.dumps(items, protocol=pickle.HIGHEST_PROTOCOL)


class Host:
    """A local executor with one worker, on its own loop thread, relaying to the kernel.

    The worker process is started from the loop thread, which lives as long as the runner:
    a worker dies with the thread that started it."""

    def __init__(self, dask_worker: Any, client: Any, session: str, wid: int,
                 preload: tuple[str, ...], path: list[str], cwd: str) -> None:  # fmt: skip
        self.dask_worker = dask_worker
        self.client = client  # the Dask worker's own client
        self.held: dict[str, Any] = {}  # big outputs as Dask data, until the kernel has them
        self.topic = event_topic(session)
        self.wid = wid
        self.pool = LocalExecutor(preload=preload, path=path, cwd=cwd)
        self.local: int | None = None  # the local worker's id (its pid)
        self.outbox: list[Any] = []
        self.sent = 0  # messages sent to the kernel, numbered
        self.heard = 0  # the last message from the kernel taken, and those come early
        self.early: dict[int, list[Any]] = {}
        self.done = threading.Event()
        self.freeze_wanted: bool | None = None  # what the task's thread should do next
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self._run, name="nbtasks-runner", daemon=True)

    def start(self) -> None:
        self.thread.start()
        self.loop.call_soon_threadsafe(self._spawn)

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        try:
            self.loop.run_forever()
        finally:
            self.pool.close()  # nothing it started outlives the runner
            self.loop.close()
            self.done.set()

    def _spawn(self) -> None:
        self.outbox.append(("at", self.dask_worker.address))  # where it runs, first
        self.loop.call_soon(self._flush)
        self.pool.open(self.loop, self._event)
        try:
            self.local = self.pool.spawn()
        except OSError as exc:
            self._event(E.WorkerLost(0, None, None, f"the worker could not start: {exc}"))

    # -- kernel -> runner ------------------------------------------------------------------

    def requests(self, blob: bytes) -> None:
        """Called on the Dask worker's loop (where its data may be read): big payloads the
        kernel scattered here are put back in their requests; then onto the runner's loop."""
        seq, requests = pickle.loads(blob)
        if seq != self.heard + 1:  # Dask does not keep them in order: put them back in it
            self.early[seq] = requests
            return
        self.heard = seq
        self._take(requests)
        while self.heard + 1 in self.early:
            self.heard += 1
            self._take(self.early.pop(self.heard))

    def _take(self, requests: list[Any]) -> None:
        read = []
        for i, request in enumerate(requests):
            if request[0] == "start" and request[3] is not None:
                key = request[3]
                payload = self.dask_worker.data[key]
                requests[i] = ("start", request[1]._replace(payload=payload), request[2], None)
                read.append(("read", key))
        try:
            self.loop.call_soon_threadsafe(self._apply, requests, read)
        except RuntimeError:  # the runner's loop is closed: it is ending anyway
            pass

    def _apply(self, requests: list[Any], read: list[Any]) -> None:
        pool, local = self.pool, self.local
        for item in read:
            self._event(item)
        for request in requests:
            op = request[0]
            if op == "stop":
                self.stop()
                return
            if local is None or local not in pool.workers:
                continue  # the worker is gone: its WorkerLost is on the way
            if op == "start":
                # its function came with the first attempt of its version (the pool's
                # worker holds it since): later ones leave it out
                pool.start(local, request[1], ahead=request[2])
            elif op == "take_back":
                pool.take_back(local, request[1])
            elif op == "kill":
                pool.kill(local, request[1])
            elif op == "reply":
                pool.reply(local, request[1], request[2], pickle.loads(request[3]))
            elif op == "retire":
                pool.retire(local)
            elif op == "frozen":
                self.freeze_wanted = request[1]
            elif op == "release":  # the kernel has these outputs
                for key in request[1]:
                    future = self.held.pop(key, None)
                    if future is not None:
                        future.release()

    # -- runner -> kernel ------------------------------------------------------------------

    def _event(self, event: Any) -> None:
        if not self.outbox:
            self.loop.call_soon(self._flush)
        if not hasattr(event, "_fields"):  # not an executor event: the runner's own word
            self.outbox.append(event)  # ("read", key) of a big payload
            return
        if isinstance(event, E.Call):  # its arguments were unpickled by the pool
            event = event._replace(args=encode(list(event.args)))  # type: ignore[arg-type]
        elif isinstance(event, E.Finished) and event.output and len(event.output) >= BIG:
            # a big output stays here as Dask data for the kernel to fetch (straight from
            # this worker when it can reach it), not in the scheduler's event log
            key = f"nbtasks-output-{event.attempt_id}"
            futures = self.client.scatter({key: event.output}, hash=False,
                                          workers=[self.dask_worker.address])  # fmt: skip
            self.held.update(futures)
            self.outbox.append(("output", key))
            event = event._replace(output=None)
        self.outbox.append(event._replace(worker=self.wid))
        if isinstance(event, E.WorkerLost):
            self.loop.call_soon(self.stop)

    def _flush(self) -> None:
        events, self.outbox = self.outbox, []
        if events:
            self.sent += 1
            self.send(encode([self.sent, events]))

    def send(self, blob: bytes) -> None:
        w = self.dask_worker
        w.loop.add_callback(w.log_event, self.topic, [self.wid, blob])

    def stop(self) -> None:
        """End the runner: its worker's tree is killed as the loop closes."""
        self._flush()
        self.loop.stop()

    def stop_threadsafe(self) -> None:
        try:
            self.loop.call_soon_threadsafe(self.stop)
        except RuntimeError:
            pass


def serve(session: str, wid: int, preload: tuple[str, ...], path: list[str],
          cwd: str) -> str:  # fmt: skip
    """The Dask task of one nbtasks worker: runs until that worker is gone or the kernel lets
    it go. Returns why it ended."""
    from distributed import get_client, get_worker, rejoin, secede

    dask_worker = get_worker()
    key = dask_worker.get_current_task()
    client = get_client()
    host = Host(dask_worker, client, session, wid, preload, path, cwd)
    subscribed = threading.Event()

    def on_request(event: tuple[float, Any]) -> None:
        msg = event[1]
        if msg == PROBE:
            subscribed.set()
        elif isinstance(msg, bytes):
            host.requests(msg)

    topic = request_topic(session, wid)
    client.subscribe_topic(topic, on_request)
    try:
        # the subscription travels on the client's stream and a probe on the worker's: probe
        # until one comes back, so that nothing the kernel sends after "ready" is missed
        while not subscribed.wait(0.02):
            dask_worker.loop.add_callback(dask_worker.log_event, topic, PROBE)
        host.start()
        seceded = False
        while not host.done.wait(WATCH_EVERY_S):
            state = dask_worker.state.tasks.get(key)
            if state is None or state.state not in ("executing", "long-running"):
                host.stop_threadsafe()  # the kernel let it go: canceled, closed or killed
            elif client.status != "running":
                host.stop_threadsafe()  # the scheduler is away: its runs are CRASHED
            wanted = host.freeze_wanted
            if wanted is not None and wanted != seceded:
                if wanted:
                    secede()  # the spare runner for its children can take this slot
                else:
                    rejoin()  # waits for a free slot; the relay goes on meanwhile
                seceded = wanted
        return "ended"
    finally:
        host.stop_threadsafe()
        host.done.wait(5.0)
        try:
            client.unsubscribe_topic(topic)
        except (ValueError, RuntimeError):
            pass
