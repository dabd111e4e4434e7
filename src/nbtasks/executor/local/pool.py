"""The warm pool of worker processes, driven from the engine's event loop thread.

Workers are spawned (never forked from the kernel) as ``python -c ...`` in a new session, so
each is the leader of a process group; killing the group kills what its task started. Two
pipes per worker carry framed messages (``_protocol``); the loop watches the event pipe with
``add_reader``, and end of file on it means the worker is gone.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from nbtasks.executor.local import protocol as _protocol

if TYPE_CHECKING:
    import asyncio

MAX_SPAWN_FAILURES = 3  # workers in a row dying before ready: the queued runs fail
KILL_GRACE_S = 1.0  # between SIGTERM and SIGKILL when killing a worker's process group
_BOOT = "import sys; from nbtasks.executor.local.worker import main; main(sys.argv)"
_PACKAGE_ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "..", ".."))


class WorkerProc:
    """The kernel's side of one worker process."""

    def __init__(self, popen: subprocess.Popen[bytes], cmd_fd: int, event_fd: int,
                 boot_log: Any) -> None:  # fmt: skip
        self.popen = popen
        self.pid = popen.pid
        self.cmd_fd = cmd_fd
        self.event_fd = event_fd
        self.boot_log = boot_log
        self.reader = _protocol.FrameReader()
        self.ready = False
        self.dying = False
        self.attempt: Any = None  # the engine's AttemptState while one runs here
        # (run, attempt) pairs sent ahead, in the order the worker starts them
        self.ahead: deque[tuple[Any, Any]] = deque()
        self.dropping: set[str] = set()  # attempts taken back, until it says it skipped them
        self.loaded: set[str] = set()  # function keys this worker already holds
        self.outbox: list[bytes] = []  # frames written at the end of the loop's step
        self.closed = False  # its pipes are closed

    def __repr__(self) -> str:
        return f"<worker pid={self.pid}{' dying' if self.dying else ''}>"


def boot_slots() -> int:
    """How many workers boot at once: one per core the kernel leaves free. A boot is about
    0.1 s of imports on one core; booting more at once than there are cores for them only
    slows each of them, and the kernel, down."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cores = os.cpu_count() or 2
    return max(1, cores - 1)


def launch() -> WorkerProc:
    """Start a worker process. Callable from any long-lived thread, before an engine exists
    (the first trigger starts workers first, so they boot while the engine loads); the
    worker dies with the thread that started it, so not from a short-lived one."""
    cmd_r, cmd_w = os.pipe()
    event_r, event_w = os.pipe()
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (_PACKAGE_ROOT, env.get("PYTHONPATH")) if p)
    env.pop("NBTASKS_STORE", None)
    boot_log = tempfile.TemporaryFile()
    try:
        popen = subprocess.Popen(
            [sys.executable, "-c", _BOOT, str(cmd_r), str(event_w), str(os.getpid())],
            pass_fds=(cmd_r, event_w),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=boot_log,
            start_new_session=True,
            env=env,
        )
    except BaseException:
        for fd in (cmd_r, cmd_w, event_r, event_w):
            os.close(fd)
        boot_log.close()
        raise
    os.close(cmd_r)
    os.close(event_w)
    worker = WorkerProc(popen, cmd_w, event_r, boot_log)
    _protocol.write_all(cmd_w, _protocol.encode(("init", list(sys.path), os.getcwd())))
    return worker


def discard(worker: WorkerProc) -> None:
    """Kill a launched worker that no pool took charge of, and let go of its pipes."""
    try:
        os.killpg(worker.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    worker.popen.wait()
    os.close(worker.cmd_fd)
    os.close(worker.event_fd)
    worker.boot_log.close()


class Pool:
    """Spawns, feeds and reaps workers; reports their messages and deaths to the engine."""

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        on_message: Callable[[WorkerProc, tuple[Any, ...]], None],
        on_exit: Callable[[WorkerProc, int | None, int | None, str], None],
    ) -> None:
        self.loop = loop
        self.on_message = on_message
        self.on_exit = on_exit
        self.workers: list[WorkerProc] = []

    def spawn(self) -> WorkerProc:
        return self.adopt(launch())

    def adopt(self, worker: WorkerProc) -> WorkerProc:
        """Take charge of a launched worker: watch its events from the loop."""
        self.workers.append(worker)
        self.loop.add_reader(worker.event_fd, self._readable, worker)
        return worker

    def send(self, worker: WorkerProc, message: tuple[Any, ...], now: bool = False) -> None:
        """Queue a message; a worker's messages of one loop step go out in one write, once
        the step is over, or at once with ``now`` (a worker waiting for it). A dead worker
        shows up as end of file on its event pipe."""
        if worker.closed:
            return
        if not worker.outbox and not now:
            self.loop.call_soon(self._flush, worker)
        worker.outbox.append(_protocol.encode(message))
        if now:
            self._flush(worker)

    def _flush(self, worker: WorkerProc) -> None:
        data = b"".join(worker.outbox)
        worker.outbox.clear()
        if worker.closed or not data:
            return
        try:
            _protocol.write_all(worker.cmd_fd, data)
        except OSError:  # the worker died; its end of file is on the way
            pass

    def _readable(self, worker: WorkerProc) -> None:
        try:
            data = os.read(worker.event_fd, _protocol.READ_BYTES)
        except OSError:
            data = b""
        if not data:
            self._closed(worker)
            return
        for message in worker.reader.feed(data):
            self.on_message(worker, message)

    def _closed(self, worker: WorkerProc) -> None:
        worker.closed = True
        worker.outbox.clear()
        self.loop.remove_reader(worker.event_fd)
        os.close(worker.event_fd)
        os.close(worker.cmd_fd)
        self._reap(worker, 0)

    def _reap(self, worker: WorkerProc, tries: int) -> None:
        code = worker.popen.poll()
        if code is None and tries < 200:  # exit status follows end of file within ms
            self.loop.call_later(0.005 if tries < 20 else 0.05, self._reap, worker, tries + 1)
            return
        if code is None:  # still alive after ~10 s without its pipe: make sure
            self._signal(worker, signal.SIGKILL)
            code = worker.popen.wait()
        self.workers.remove(worker)
        self._signal(worker, signal.SIGKILL)  # no process of this worker's group outlives it
        exit_code, sig = (None, -code) if code < 0 else (code, None)
        log = ""
        try:
            worker.boot_log.seek(0)
            log = worker.boot_log.read()[-4000:].decode("utf-8", "replace")
        finally:
            worker.boot_log.close()
        self.on_exit(worker, exit_code, sig, log)

    def _signal(self, worker: WorkerProc, sig: int) -> None:
        try:
            os.killpg(worker.pid, sig)
        except (ProcessLookupError, PermissionError):
            pass

    def kill(self, worker: WorkerProc, grace: float = KILL_GRACE_S) -> None:
        """SIGTERM the worker's process group, then SIGKILL it after ``grace`` seconds."""
        if worker.dying:
            return
        worker.dying = True
        self._signal(worker, signal.SIGTERM)
        self.loop.call_later(grace, self._kill_hard, worker)

    def _kill_hard(self, worker: WorkerProc) -> None:
        self._signal(worker, signal.SIGKILL)  # also children that outlived their worker

    def stop_all(self) -> None:
        """Kill every worker group at once (shutdown); the kernel does not wait on grace."""
        for worker in list(self.workers):
            worker.dying = True
            self._signal(worker, signal.SIGKILL)
