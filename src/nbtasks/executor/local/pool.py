"""The local executor: a warm pool of worker processes on this machine.

Workers are spawned (never forked from the kernel) as ``python -c ...`` in a new session,
each a child subreaper leading its own process group (see ``worker.py``). Two pipes per
worker carry framed messages (``protocol.py``); the loop watches the event pipe with
``add_reader``, and end of file on it means the worker is gone.

How a kill hits only its attempt (I3): the kernel stops the worker (SIGSTOP), waits until
it is stopped, and reads its control block (``control.py``): the attempt executing and the
last one taken up. If the attempt to kill is executing, or not yet taken up, the worker is
marked doomed (it will take nothing more up) and its whole tree is killed; if it had ended
already, the worker is let go on (SIGCONT) and the kill is answered ``killed=False``.

How nothing escapes a kill (I5): the worker is a subreaper, so every descendant, in its own
session or double-forked, is its descendant; the kernel asks the whole tree to exit
(SIGTERM) and after ``KILL_GRACE_S`` freezes and kills what is left with SIGKILL. Every
process a worker starts carries a token in its environment, and a worker that is gone is
followed by a sweep for processes with its token: what it orphaned when it died (of a
crash, or of that SIGTERM) was re-parented away from it.

Memory (the attempt's ``memory_limit``, for its whole tree): the kernel samples each tree
running a limited attempt every ``MEMORY_EVERY_S`` from outside the worker, so an
allocation holding the worker's GIL cannot hide from it; over the limit, the worker is
stopped, the attempt and the measure checked again, and the tree killed at once
(``OutOfMemory``).
Inside the worker a soft ``RLIMIT_DATA`` fails one huge allocation at once.
"""

from __future__ import annotations

import os
import pickle
import signal
import subprocess
from typing import TYPE_CHECKING, Any

from nbtasks.executor import base as E
from nbtasks.executor.local import proctree, treekill
from nbtasks.executor.local import protocol as P
from nbtasks.executor.local.launch import TOKEN_ENV, WorkerProc, launch

if TYPE_CHECKING:
    import asyncio

KILL_GRACE_S = 1.0  # between SIGTERM to an attempt's descendants and SIGKILL of its tree
MEMORY_EVERY_S = 0.02  # how often trees running a limited attempt are measured
STOP_WAIT_S = 0.002  # how long a kill waits on the loop for a worker to stop, per try


def boot_slots() -> int:
    """How many workers boot at once: one per core the kernel leaves free. A boot is about
    0.1 s of imports on one core; booting more at once than there are cores for them only
    slows each of them, and the kernel, down."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cores = os.cpu_count() or 2
    return max(1, cores - 1)


def sweep(token: str) -> int:
    """Kill every process of this user whose environment carries ``token``: what a worker
    that died on its own left behind, re-parented away from it. Returns how many."""
    return sweep_marked(f"{TOKEN_ENV}={token}")


def sweep_marked(mark: str) -> int:
    """Kill the process tree of every process of this user (but this one) whose
    environment holds ``mark`` (``NAME=value``). Returns how many."""
    needle = mark.encode()
    me, mine = os.getuid(), os.getpid()
    found = 0
    for name in os.listdir("/proc") if os.path.isdir("/proc") else ():
        if not name.isdigit() or int(name) == mine:
            continue
        try:
            if os.stat(f"/proc/{name}").st_uid != me:
                continue
            with open(f"/proc/{name}/environ", "rb") as f:
                if needle not in f.read().split(b"\0"):
                    continue
            treekill.kill_tree(int(name))
            found += 1
        except OSError:
            continue
    return found


class LocalExecutor:
    """Runs attempts in worker processes on this machine (the default executor)."""

    capabilities = frozenset({"pid", "exit_code", "signal"})
    accepts_resources = False  # every worker is on this machine
    round_trip_s = 0.0  # a pipe: next to nothing

    def __init__(self, launched: list[WorkerProc] | None = None,
                 preload: tuple[str, ...] = (), path: list[str] | None = None,
                 cwd: str | None = None) -> None:  # fmt: skip
        self.preload = preload
        self.path, self.cwd = path, cwd  # the workers' sys.path and folder (launch)
        self.workers: dict[E.WorkerId, WorkerProc] = {}
        self._launched = list(launched or ())
        self.loop: asyncio.AbstractEventLoop
        self.sink: E.Sink
        self._sampling = False
        self.started_log: str | None = None

    def open(self, loop: asyncio.AbstractEventLoop, sink: E.Sink) -> list[E.WorkerId]:
        self.loop = loop
        self.sink = sink
        launched, self._launched = self._launched, []
        return [self._adopt(worker).id for worker in launched]

    def boot_slots(self) -> int:
        return boot_slots()

    def note_starts(self, path: str) -> bool:
        """Workers launched from now on note in ``path`` (those launched before the engine
        were given it by the server, which knows the store)."""
        self.started_log = path
        return all(worker.started_log == path for worker in self._launched)

    def room_for(self, resources: dict[str, float]) -> int:
        """Resources mean nothing here (runs that need them are refused at trigger time;
        one recorded with them and taken over by a local engine runs as any other)."""
        return 1 << 30

    # -- requests ----------------------------------------------------------------------

    def spawn(self, resources: dict[str, float] | None = None) -> E.WorkerId:
        return self._adopt(launch(self.preload, self.path, self.cwd, self.started_log)).id

    def _adopt(self, worker: WorkerProc) -> WorkerProc:
        self.workers[worker.id] = worker
        self.loop.add_reader(worker.event_fd, self._readable, worker)
        return worker

    def start(self, worker_id: E.WorkerId, attempt: E.AttemptSpec, ahead: bool = False) -> None:
        worker = self.workers[worker_id]
        fn_bytes = None if attempt.fn_key in worker.loaded else attempt.fn_bytes
        worker.loaded.add(attempt.fn_key)
        worker.seq += 1
        worker.sent[attempt.attempt_id] = (worker.seq, attempt.memory_limit)
        message = P.Run(attempt.attempt_id, worker.seq, attempt.fn_key, fn_bytes,
                        attempt.payload, attempt.run_id, attempt.task_id, attempt.number,
                        attempt.version, list(attempt.tags), attempt.metadata or {},
                        attempt.memory_limit, ahead)  # fmt: skip
        self._send(worker, message, now=not ahead)
        if attempt.memory_limit is not None and not self._sampling:
            self._sampling = True
            self.loop.call_later(MEMORY_EVERY_S, self._sample)

    def take_back(self, worker_id: E.WorkerId, attempt_id: str) -> None:
        self._send(self.workers[worker_id], P.Drop(attempt_id))

    def check(self) -> None:
        """Nothing to check: local workers are started on demand."""

    def frozen(self, worker_id: E.WorkerId, frozen: bool) -> None:
        """A frozen attempt's worker process simply waits: nothing to do here."""

    def reply(self, worker_id: E.WorkerId, request_id: int, ok: bool, value: Any) -> None:
        try:
            data = pickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL)
        except Exception as exc:  # an exception that cannot travel: its text does
            ok, data = False, pickle.dumps(RuntimeError(f"{type(value).__name__}: {exc}"))
        worker = self.workers.get(worker_id)
        if worker is not None:
            self._send(worker, P.Reply(request_id, ok, data))

    def retire(self, worker_id: E.WorkerId) -> None:
        worker = self.workers[worker_id]
        worker.dying = True
        self._send(worker, P.Exit())

    def kill(self, worker_id: E.WorkerId, attempt_id: str) -> None:
        worker = self.workers.get(worker_id)
        if worker is None or attempt_id not in worker.sent:
            self.sink(E.KillDone(worker_id, attempt_id, killed=False))
            return
        if worker.dying:  # already being killed (for this attempt or one before it)
            self.sink(E.KillDone(worker_id, attempt_id, killed=True))
            return
        treekill.stop(worker.pid)
        self._decide_kill(worker, attempt_id, 0)

    def _decide_kill(self, worker: WorkerProc, attempt_id: str, tries: int) -> None:
        """With the worker stopped: kill it if ``attempt_id`` is executing or not yet taken
        up; else let it go on."""
        if worker.closed:
            self.sink(E.KillDone(worker.id, attempt_id, killed=True))  # WorkerLost came
            return
        if not treekill.wait_stopped(worker.pid, STOP_WAIT_S):
            treekill.stop(worker.pid)  # not scheduled yet (or in an uninterruptible sleep)
            self.loop.call_later(0.005 if tries < 20 else 0.05, self._decide_kill, worker,
                                 attempt_id, tries + 1)  # fmt: skip
            return
        seq = worker.sent.get(attempt_id, (0, None))[0]
        running, started = worker.control.read()
        if seq and (running == seq or started < seq):
            self._tear_down(worker)
            self.sink(E.KillDone(worker.id, attempt_id, killed=True))
        else:
            treekill.resume(worker.pid)
            self.sink(E.KillDone(worker.id, attempt_id, killed=False))

    def _tear_down(self, worker: WorkerProc, graceful: bool = True) -> None:
        """Kill a stopped worker's tree. The worker is doomed first (it takes nothing more
        up), so it can be let go on: gracefully, the whole tree gets SIGTERM (and SIGCONT)
        and, after ``KILL_GRACE_S``, the frozen tree SIGKILL; else SIGKILL at once (out of
        memory: the tree must not grow any more). Descendants a worker dying of SIGTERM
        orphans are found by its token when it is reaped (``sweep``)."""
        worker.dying = True
        worker.control.doom()
        if graceful:
            treekill.terminate_tree(worker.pid)
            self.loop.call_later(KILL_GRACE_S, self._kill_hard, worker)
        else:
            self._kill_hard(worker)

    def _kill_hard(self, worker: WorkerProc) -> None:
        if not worker.closed or worker.popen.poll() is None:
            treekill.kill_tree(worker.pid)

    def close(self) -> None:
        """Kill every worker's tree at once (shutdown; the kernel does not wait on grace),
        reap the workers and let go of their pipes: an engine that failed to open (its
        store held by another process, say) leaves nothing behind."""
        for worker in list(self.workers.values()):
            worker.dying = True
            treekill.kill_tree(worker.pid, timeout=1.0)
            if not worker.closed:
                worker.closed = True
                self.loop.remove_reader(worker.event_fd)
                os.close(worker.event_fd)
                os.close(worker.cmd_fd)
            try:
                worker.popen.wait(timeout=1.0)
            except subprocess.TimeoutExpired:
                pass  # unkillable (in the kernel's D state): init reaps it once it goes
            worker.control.close()
            worker.boot_log.close()
            if worker.meter is not None:
                worker.meter.close()
        self.workers.clear()

    # -- memory ------------------------------------------------------------------------

    def _sample(self) -> None:
        """Measure each tree running an attempt with a memory limit; kill it past it."""
        limited = False
        for worker in list(self.workers.values()):
            if worker.dying or worker.closed:
                continue
            running, _ = worker.control.read()  # a hint: checked again once stopped
            for attempt_id, (seq, limit) in worker.sent.items():
                if limit is None:
                    continue
                limited = True
                if seq == running and self._tree_rss(worker) > limit:
                    self._check_memory(worker, attempt_id, seq, limit)
                    break
        self._sampling = limited
        if limited:
            self.loop.call_later(MEMORY_EVERY_S, self._sample)

    def _tree_rss(self, worker: WorkerProc) -> int:
        """The worker tree's resident bytes, through a meter that keeps the worker's /proc
        files open between samples (cheaper, and 0 once the worker is gone, whoever gets
        its pid next)."""
        if worker.meter is None:
            worker.meter = proctree.TreeMeter(worker.pid)
        return worker.meter.rss()

    def _check_memory(self, worker: WorkerProc, attempt_id: str, seq: int, limit: int) -> None:
        treekill.stop(worker.pid)
        if not treekill.wait_stopped(worker.pid, 0.05):
            treekill.resume(worker.pid)  # measured again at the next sample
            return
        running, _ = worker.control.read()
        rss = self._tree_rss(worker)
        if running == seq and rss > limit:
            self._tear_down(worker, graceful=False)
            self.sink(E.OutOfMemory(worker.id, attempt_id, rss))
        else:
            treekill.resume(worker.pid)

    # -- messages and ends -------------------------------------------------------------

    def _send(self, worker: WorkerProc, message: P.ToWorker, now: bool = False) -> None:
        """Queue a message; a worker's messages of one loop step go out in one write, once
        the step is over, or at once with ``now`` (a worker waiting for it). A dead worker
        shows up as end of file on its event pipe."""
        if worker.closed:
            return
        if not worker.outbox and not now:
            self.loop.call_soon(self._flush, worker)
        worker.outbox.append(P.encode(message))
        if now:
            self._flush(worker)

    def _flush(self, worker: WorkerProc) -> None:
        data = b"".join(worker.outbox)
        worker.outbox.clear()
        if worker.closed or not data:
            return
        try:
            P.write_all(worker.cmd_fd, data)
        except OSError:  # the worker died; its end of file is on the way
            pass

    def _readable(self, worker: WorkerProc) -> None:
        try:
            data = os.read(worker.event_fd, P.READ_BYTES)
        except OSError:
            data = b""
        if not data:
            self._closed(worker)
            return
        sink, wid = self.sink, worker.id
        for m in worker.reader.feed(data):
            if isinstance(m, P.Done):
                worker.sent.pop(m.attempt_id, None)
                sink(E.Finished(wid, m.attempt_id, m.outcome, m.output, m.output_preview,
                                m.error, m.exc, m.stdout, m.stderr, m.took, m.rss))  # fmt: skip
            elif isinstance(m, P.Started):
                sink(E.Started(wid, m.attempt_id))
            elif isinstance(m, P.Log):
                sink(E.Log(wid, m.attempt_id, m.stream, m.text))
            elif isinstance(m, P.Dropped):
                worker.sent.pop(m.attempt_id, None)
                sink(E.Dropped(wid, m.attempt_id))
            elif isinstance(m, P.Meta):
                sink(E.Metadata(wid, m.attempt_id, m.op, m.key, m.value))
            elif isinstance(m, P.Show):
                sink(E.Display(wid, m.attempt_id, m.bundle))
            elif isinstance(m, P.Ask):
                sink(E.Call(wid, m.attempt_id, m.request_id, m.op, pickle.loads(m.args)))
            elif isinstance(m, P.Ready):
                worker.ready = True
                sink(E.WorkerReady(wid, m.pid))

    def _closed(self, worker: WorkerProc) -> None:
        worker.closed = True
        worker.outbox.clear()
        self.loop.remove_reader(worker.event_fd)
        os.close(worker.event_fd)
        os.close(worker.cmd_fd)
        self._reap(worker, 0)

    def _reap(self, worker: WorkerProc, tries: int) -> None:
        if self.workers.get(worker.id) is not worker:
            return  # released by close() meanwhile
        code = worker.popen.poll()
        if code is None and tries < 200:  # exit status follows end of file within ms
            self.loop.call_later(0.005 if tries < 20 else 0.05, self._reap, worker, tries + 1)
            return
        if code is None:  # still alive after ~10 s without its pipe: make sure
            treekill.kill_tree(worker.pid)
            code = worker.popen.wait()
        del self.workers[worker.id]
        try:  # no process of this worker's group outlives it, nor one it left elsewhere
            os.killpg(worker.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        sweep(worker.token)
        worker.control.close()
        if worker.meter is not None:
            worker.meter.close()
        exit_code, sig = (None, -code) if code < 0 else (code, None)
        log = ""
        try:
            worker.boot_log.seek(0)
            log = worker.boot_log.read()[-4000:].decode("utf-8", "replace")
        finally:
            worker.boot_log.close()
        self.sink(E.WorkerLost(worker.id, exit_code, sig, log))
